"""The stream hold-back window: nothing matched is released, redactions rewrite held events."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import GuardContext
from sluicegate.guardrails.engine import Blocked, CallGuards, GuardSet, build_guard
from sluicegate.guardrails.stream import StreamGuard
from sluicegate.vault import Vault


async def _no_model(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
    raise AssertionError("no model call expected")


CONTEXT = GuardContext(http=lambda: None, vault=Vault(), complete=_no_model)


def chunk(text: str) -> bytes:
    data = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + orjson.dumps(data) + b"\n\n"


def content(events: list[bytes]) -> str:
    return "".join(orjson.loads(e[6:])["choices"][0]["delta"]["content"] for e in events)


def run(guard_config: GuardConfig, pieces: list[str]) -> tuple[list[list[bytes]], CallGuards, StreamGuard]:
    guard = build_guard(guard_config, CONTEXT)
    state = CallGuards(GuardSet((), (guard,), guard.reach))
    stream = StreamGuard(state, (guard,), guard.reach)

    async def go() -> list[list[bytes]]:
        released = [await stream.feed(chunk(p)) for p in pieces]
        released.append(await stream.finish())
        return released

    return asyncio.run(go()), state, stream


def test_redaction_across_chunk_boundaries() -> None:
    config = GuardConfig(name="mail", kind="pii", action="redact", settings={"entities": ["EMAIL"]})
    filler = ["word " * 60]  # 300 characters: more than the pii reach, so it is released early
    released, state, _ = run(config, [*filler, "mail ops.te", "am@cor", "p.io now", " and later", *filler])
    assert released[0] == []  # held: the next chunks might still complete a match
    everything = [e for batch in released for e in batch]
    assert content(everything) == filler[0] + "mail <EMAIL_1> now and later" + filler[0]
    assert [r.label for r in state.records] == ["EMAIL"]


def test_block_releases_nothing_of_the_match() -> None:
    config = GuardConfig(name="code", kind="regex", action="block", settings={"deny": ["nightingale"]})
    guard = build_guard(config, CONTEXT)
    state = CallGuards(GuardSet((), (guard,), guard.reach))
    stream = StreamGuard(state, (guard,), guard.reach)
    sent: list[bytes] = []

    async def go() -> None:
        for piece in ["the long preamble of this answer ", "is about nigh", "tingale and more"]:
            sent.extend(await stream.feed(chunk(piece)))

    with pytest.raises(Blocked):
        asyncio.run(go())
    assert "nigh" not in content(sent)
    assert state.records[0].part == "0.content" and state.records[0].action == "block"


def test_window_bounds_the_delay() -> None:
    config = GuardConfig(name="code", kind="regex", action="block", settings={"deny": ["nightingale"]})
    released, _, stream = run(config, ["a" * 5, "b" * 20, "c" * 20])
    assert stream.window == 11
    # once 11 more characters are in, the first chunk goes out
    assert released[0] == [] and content(released[1]) == "a" * 5
