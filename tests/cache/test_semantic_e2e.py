"""The semantic cache over HTTP with the local model: a reworded question is a hit, a near miss
(another number, name, negation) or another context is not, and a model that cannot answer in
time makes misses, never failures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import RunningGateway, run_gateway

pytest.importorskip("onnxruntime", reason="the semantic extra is not installed")

SEMANTIC = """\
cache:
  enabled: true
  default: {semantic: true}
"""


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("semantic"), upstream_url, SEMANTIC) as running:
        yield running


def ask(
    gw: RunningGateway, text: str, who: str = "alice", system: str | None = None, **extra: object
) -> tuple[str, str, str | None]:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys[who], max_retries=0)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    resp = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, **extra)  # type: ignore[call-overload]
    content = resp.parse().choices[0].message.content or ""
    return resp.headers["x-cache"], content, resp.headers.get("x-cache-similarity")


def settled(gw: RunningGateway) -> None:
    """Wait for the model to load and the cache's writes to land."""
    deadline = time.monotonic() + 30
    while gw.app.services.cache.pending and time.monotonic() < deadline:
        time.sleep(0.01)


def stored(gw: RunningGateway, upstream: FakeUpstream, text: str, answer: str) -> None:
    settled(gw)
    upstream.enqueue(Reply(content=answer))
    assert ask(gw, text)[0] == "miss"
    settled(gw)


def test_a_reworded_question_is_a_hit(gw: RunningGateway, upstream: FakeUpstream) -> None:
    stored(gw, upstream, "What is the capital of France?", "Paris.")
    status, content, similarity = ask(gw, "Which city is the capital of France?")
    assert (status, content) == ("hit", "Paris.")
    assert similarity is not None and float(similarity) >= gw.app.snapshot.config.cache.semantic.threshold
    assert gw.last_audit()["cache"] == "semantic_hit"
    # Anthropic's dialect requires `max_tokens`: that is another context (another entry) ...
    upstream.enqueue(Reply(content="Paris, France."))
    claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)
    message = claude.messages.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=1024, messages=[{"role": "user", "content": "Which city is France's capital?"}]
    )
    assert message.headers["x-cache"] == "miss"
    settled(gw)
    # ... which a reworded question in OpenAI's dialect with the same `max_tokens` finds.
    assert ask(gw, "What is the capital city of France?", max_tokens=1024)[:2] == ("hit", "Paris, France.")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Convert 10 miles to kilometres", "Convert 20 miles to kilometres"),
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"),
        ("Write a short biography of Marie Curie", "Write a short biography of Pierre Curie"),
        ("What is the population of Spain?", "What is the population of Portugal?"),
        ("Sort the list in ascending order", "Sort the list in descending order"),
    ],
)
def test_near_misses_never_hit(gw: RunningGateway, upstream: FakeUpstream, first: str, second: str) -> None:
    stored(gw, upstream, first, "first answer")
    upstream.enqueue(Reply(content="second answer"))
    status, content, _ = ask(gw, second)
    assert (status, content) == ("miss", "second answer")


def test_another_context_or_consumer_is_a_miss(gw: RunningGateway, upstream: FakeUpstream) -> None:
    stored(gw, upstream, "How do I reset my VPN password?", "Use the portal.")
    upstream.enqueue(Reply(content="for pirates"), Reply(content="for bob"))
    assert ask(gw, "How can I reset my VPN password?", system="Answer like a pirate.")[0] == "miss"
    assert ask(gw, "How can I reset my VPN password?", who="bob")[0] == "miss"
    assert ask(gw, "How can I reset my VPN password?")[:2] == ("hit", "Use the portal.")


def test_a_model_too_slow_makes_misses(upstream: FakeUpstream, upstream_url: str, tmp_path: Path) -> None:
    extra = "cache: {enabled: true, default: {semantic: true}, semantic: {timeout_ms: 0.001}}\n"
    with run_gateway(tmp_path, upstream_url, extra) as running:
        stored(running, upstream, "Tell me a joke about databases", "A joke.")
        upstream.enqueue(Reply(content="Another joke."))
        assert ask(running, "Tell me a joke about a database")[:2] == ("miss", "Another joke.")
        # The exact cache still answers.
        assert ask(running, "Tell me a joke about databases")[:2] == ("hit", "A joke.")


def test_a_routed_embeddings_model_embeds_the_turns(upstream: FakeUpstream, upstream_url: str, tmp_path: Path) -> None:
    extra = "cache: {enabled: true, default: {semantic: true}, semantic: {embedder: text-embedding-3-small}}\n"
    with run_gateway(tmp_path, upstream_url, extra) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key=running.keys["alice"], max_retries=0)
        upstream.enqueue(Reply(), Reply(content="Two parts, answered."))
        # Two text parts: another exact key than the same text as one string, the same turn.
        parts = [{"type": "text", "text": "Summarise the memo"}, {"type": "text", "text": "in plain words"}]
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": parts}])  # type: ignore[list-item]
        settled(running)
        embedded = [r for r in upstream.requests if r.path.endswith("/embeddings")]
        assert len(embedded) == 1
        assert embedded[0].json()["input"] == "Summarise the memo\nin plain words"
        upstream.enqueue(Reply())
        resp = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Summarise the memo\nin plain words"}]
        )
        assert resp.headers["x-cache"] == "hit"
        assert resp.parse().choices[0].message.content == "Two parts, answered."
        assert running.last_audit()["cache"] == "semantic_hit"
        assert len([r for r in upstream.requests if r.path.endswith("/chat/completions")]) == 1
