"""The stream hold-back: nothing matched is released, redactions rewrite held events, and text
that cannot be part of a match goes out as soon as it arrives."""

from __future__ import annotations

import asyncio
import base64
import random
import re
from collections.abc import Sequence

import orjson
import pytest

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails import stream as stream_module
from sluicegate.guardrails.base import Guard, GuardContext, GuardSettings
from sluicegate.guardrails.engine import Blocked, CallGuards, GuardSet, build_guard
from sluicegate.guardrails.stream import StreamGuard
from sluicegate.vault import Vault
from tests.guardrails.test_corpus import block_samples, pass_samples


async def _no_model(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
    raise AssertionError("no model call expected")


CONTEXT = GuardContext(http=lambda: None, vault=Vault(), complete=_no_model)
CODENAME = GuardConfig(name="code", kind="regex", action="block", settings={"deny": [r"project\s+nightingale"]})


def chunk(text: str) -> bytes:
    data = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + orjson.dumps(data) + b"\n\n"


def content(events: list[bytes]) -> str:
    return "".join(orjson.loads(e[6:])["choices"][0]["delta"]["content"] for e in events)


def make(*configs: GuardConfig | Guard) -> tuple[CallGuards, StreamGuard]:
    guards = tuple(c if isinstance(c, Guard) else build_guard(c, CONTEXT) for c in configs)
    reaches = [g.reach for g in guards]
    window = None if None in reaches else max(r for r in reaches if r is not None)
    state = CallGuards(GuardSet((), guards, window))
    return state, StreamGuard(state, guards, window)


def run(stream: StreamGuard, pieces: Sequence[str]) -> list[list[bytes]]:
    """What the stream released after each piece, then at the end."""

    async def go() -> list[list[bytes]]:
        released = [await stream.feed(chunk(p)) for p in pieces]
        released.append(await stream.finish())
        return released

    return asyncio.run(go())


def run_until_blocked(stream: StreamGuard, pieces: Sequence[str]) -> str:
    """Feed pieces until the stream blocks; what went out before (fails if it never blocks)."""
    sent: list[bytes] = []

    async def go() -> None:
        for piece in pieces:
            sent.extend(await stream.feed(chunk(piece)))
        sent.extend(await stream.finish())

    with pytest.raises(Blocked):
        asyncio.run(go())
    return content(sent)


def test_text_without_a_partial_match_goes_out_at_once() -> None:
    _, stream = make(CODENAME, GuardConfig(name="pii", kind="pii", action="redact"))
    pieces = ["Sure, ", "here is ", "the plan: ", "first, ", "we ship; ", "then, ", "we rest. "]
    released = run(stream, pieces)
    assert [content(r) for r in released] == [*pieces, ""]


def test_an_unbounded_pattern_does_not_delay_the_first_token() -> None:
    # `\s+` makes the regex's reach 256 characters; only a growing "project ..." is held.
    _, stream = make(CODENAME)
    released = run(stream, ["Hello, ", "the ", "project ", "  is ", "late. "])
    assert [content(r) for r in released] == ["Hello, ", "the ", "", "project   is ", "late. ", ""]


def test_redaction_across_chunk_boundaries() -> None:
    state, stream = make(GuardConfig(name="mail", kind="pii", action="redact", settings={"entities": ["EMAIL"]}))
    filler = ["word " * 60]
    released = run(stream, [*filler, "mail ops.te", "am@cor", "p.io now", " and later", *filler])
    assert content(released[0]) == filler[0]  # nothing in it can be part of an address
    assert released[1] == [] and released[2] == []  # held: the next chunks might still complete it
    everything = [e for batch in released for e in batch]
    assert content(everything) == filler[0] + "mail <EMAIL_1> now and later" + filler[0]
    assert [r.label for r in state.records] == ["EMAIL"]


def test_block_releases_nothing_of_the_match() -> None:
    guard = GuardConfig(name="code", kind="regex", action="block", settings={"deny": ["nightingale"]})
    state, stream = make(guard)
    sent = run_until_blocked(stream, ["the long preamble of this answer ", "is about nigh", "tingale and more"])
    assert sent == "the long preamble of this answer "
    assert state.records[0].part == "0.content" and state.records[0].action == "block"


def test_invisible_padding_cannot_walk_a_phrase_out_of_view() -> None:
    # 40 invisible characters after each letter: 19 normalised characters, 779 as sent, far more
    # than the regex's 256-character reach.
    disguised = "".join(c + "\u2060" * 40 for c in "project nightingale")
    _, stream = make(CODENAME)
    filler = [f"w{i} " for i in range(100)]
    pieces = [*filler, *[disguised[i : i + 50] for i in range(0, len(disguised), 50)], " and more"]
    sent = run_until_blocked(stream, pieces)
    assert sent == "".join(filler)


def test_a_phrase_inside_escapes_is_held_while_it_grows() -> None:
    guard = GuardConfig(name="code", kind="regex", action="block", settings={"deny": ["project nightingale"]})
    _, stream = make(guard)
    sent = run_until_blocked(stream, ["Read ", "proj%65ct n", "ighti", "n&#103;ale ", "today."])
    assert sent == "Read "


def test_a_base64_run_is_held_while_it_is_open() -> None:
    encoded = base64.b64encode(b"the project nightingale roadmap").decode()
    _, stream = make(CODENAME)
    pieces = ["Decode ", *[encoded[i : i + 7] for i in range(0, len(encoded), 7)], " please."]
    assert run_until_blocked(stream, pieces) == "Decode "


def test_a_finding_waits_for_what_its_checks_read_after_it() -> None:
    # A number followed by a unit is a quantity, not a phone: the validator reads past the match.
    phone = GuardConfig(name="pii", kind="pii", action="redact", settings={"entities": ["PHONE"]})
    state, stream = make(phone)
    pieces = ["It took ", "06 12 34 56 78", " ", "ms in all. ", "Call 06 12 34 56 78 ", "today, ", "thanks!"]
    released = run(stream, pieces)
    expected = "It took 06 12 34 56 78 ms in all. Call <PHONE_1> today, thanks!"
    assert content([e for batch in released for e in batch]) == expected
    assert [r.label for r in state.records] == ["PHONE"]


def test_a_finding_at_the_very_end_is_acted_on() -> None:
    _, stream = make(GuardConfig(name="pii", kind="pii", action="redact", settings={"entities": ["EMAIL"]}))
    released = run(stream, ["write to ", "ops@corp.io"])
    assert content([e for batch in released for e in batch]) == "write to <EMAIL_1>"


class _Window(Guard):
    """A kind that cannot tell where a match begins: it finds `secret` and declares a reach."""

    Settings = GuardSettings

    @property
    def reach(self) -> int | None:
        return 11

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        return [(m.start(), m.end(), "secret") for m in re.finditer("secret", text)]


class _RemoteWindow(_Window):
    """The same, as a remote service: it reads the text as sent, and reports offsets in it."""

    remote = True


def _window(cls: type[_Window] = _Window) -> Guard:
    return cls(GuardConfig(name="w", kind="test_window", action="block"), GuardSettings(), CONTEXT)


def test_a_kind_that_cannot_tell_holds_back_its_reach_in_normalised_characters() -> None:
    _, stream = make(_window())
    assert stream.window == 11
    released = run(stream, ["a " * 3, "b " * 10, "c " * 10])
    # once 11 more characters are in, the first chunk goes out
    assert released[0] == [] and content(released[1]) == "a " * 3
    _, stream = make(_window())
    padded = "".join(c + "\u200b" * 30 for c in "secret")  # 186 characters as sent, 6 read
    assert run_until_blocked(stream, ["x " * 10, padded[:90], padded[90:], "y" * 5]) == "x " * 10


def test_a_remote_kind_is_held_back_by_its_reach_and_its_findings_map_back() -> None:
    _, stream = make(_window(_RemoteWindow))
    filler = "a\u200b" * 40 + " "  # 81 characters as sent, 41 read
    sent = run_until_blocked(stream, [filler, "b " * 10, "c " * 10, "the sec", "ret", " rest"])
    assert sent.startswith(filler) and "sec" not in sent


def test_what_a_stream_holds_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "MAX_HELD_CHARS", 200)
    state, stream = make(CODENAME)
    # "project" followed by whitespace forever: the match stays open, and the stream stops.
    run_until_blocked(stream, ["project", *([" " * 50] * 5)])
    assert state.records[-1].label == "held_limit"


def _pieces(text: str, rng: random.Random) -> list[str]:
    """A text cut as streams cut it: words with their leading space, or at random."""
    if rng.random() < 0.5:
        return re.findall(r"\s*\S+|\s+", text) or [text]
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, len(text) // 4))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def test_streamed_corpus_passes_and_is_caught_as_when_not_streamed() -> None:
    """Every text of the corpus that must pass streams through whole; every one that must be
    caught stops the stream with nothing of the match released."""
    kinds = {
        "pii": {},
        "secrets": {},
        "regex": {"deny": [r"project\s+nightingale"]},
        "words": {"words": ["operation bluebird"]},
    }
    configs = [GuardConfig(name=k, kind=k, action="block", settings=s) for k, s in kinds.items()]
    rng = random.Random(7)
    for sample in pass_samples():
        _, stream = make(*configs)
        pieces = _pieces(sample.text, rng)
        released = run(stream, pieces)
        assert content([e for batch in released for e in batch]) == sample.text, sample.id
    blocks = block_samples()
    for sample in rng.sample(blocks, 200):
        _, stream = make(*configs)
        state = stream.state
        sent = run_until_blocked(stream, _pieces(sample.text, rng))
        assert sample.text.startswith(sent), sample.id
        assert any(r.action == "block" for r in state.records), sample.id


def test_a_long_open_run_is_not_rescanned_for_every_small_event(monkeypatch: pytest.MonkeyPatch) -> None:
    # 8,000 characters of base64, eight at a time: the run stays open (held) until it ends, and
    # the phrase at its end is still found; but the held text is not scanned 1,000 times over.
    encoded = base64.b64encode(b"filler text, " * 460 + b"the project nightingale plan").decode()
    scans = 0
    real = stream_module.scan_texts

    async def counting(*args: object, **kwargs: object) -> object:
        nonlocal scans
        scans += 1
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(stream_module, "scan_texts", counting)
    _, stream = make(CODENAME)
    pieces = ["Here: ", *[encoded[i : i + 8] for i in range(0, len(encoded), 8)], " done."]
    assert run_until_blocked(stream, pieces) == "Here: "
    assert scans < len(pieces) // 4
