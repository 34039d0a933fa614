"""The cache's keys, entries and in-process backend, without a gateway."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from sluicegate.cache.entry import Entry, Recorder, assemble
from sluicegate.cache.key import Keyed, canonical, context_key, exact_key, last_turn
from sluicegate.cache.memory import ENTRY_OVERHEAD, MemoryBackend

SECRET = Keyed(b"k" * 32)
TARGET = ("mock", "http://upstream/v1", "gpt-4o-mini")


def key(body: dict[str, object], scope: str = "c\x00alice", target: tuple[str, ...] = TARGET) -> str:
    return exact_key(SECRET, scope, target, canonical(body), None)


BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


@pytest.mark.parametrize(
    "same",
    [
        {**BASE, "temperature": 0.0},
        {**BASE, "stream": True, "stream_options": {"include_usage": True}, "user": "u", "metadata": {"a": 1}},
        {**BASE, "model": "another-alias"},
        {**BASE, "seed": None},
        {**BASE, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {
            **BASE,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}
            ],
        },
        {"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "m"},
    ],
)
def test_what_does_not_shape_the_answer_shares_a_key(same: dict[str, object]) -> None:
    assert key(same) == key(BASE)


@pytest.mark.parametrize(
    "other",
    [
        {**BASE, "temperature": 0.2},
        {**BASE, "top_p": 0.9},
        {**BASE, "n": 2},
        {**BASE, "seed": 1},
        {**BASE, "max_tokens": 10},
        {**BASE, "logit_bias": {"50256": -100}},
        {**BASE, "messages": [{"role": "user", "content": "hi "}]},
        {**BASE, "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]},
        {
            **BASE,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}],
        },
    ],
)
def test_what_shapes_the_answer_changes_the_key(other: dict[str, object]) -> None:
    assert key(other) != key(BASE)


def test_scope_target_and_secret_change_the_key() -> None:
    assert key(BASE, scope="c\x00bob") != key(BASE)
    assert key(BASE, target=("mock", "http://upstream/v1", "gpt-4o")) != key(BASE)
    assert key(BASE, target=("mock", "http://elsewhere/v1", "gpt-4o-mini")) != key(BASE)
    assert exact_key(Keyed(b"x" * 32), "c\x00alice", TARGET, canonical(BASE), None) != key(BASE)
    assert exact_key(SECRET, "c\x00alice", TARGET, canonical(BASE), 100) != key(BASE)


def test_aliases_in_the_body_normalise() -> None:
    assert canonical({**BASE, "max_completion_tokens": 5}) == canonical({**BASE, "max_tokens": 5})
    assert canonical({**BASE, "stop": "END"}) == canonical({**BASE, "stop": ["END"]})


def test_the_context_key_leaves_out_only_the_last_user_turn() -> None:
    def ctx(*messages: dict[str, object]) -> str:
        return context_key(SECRET, "c\x00a", TARGET, canonical({"messages": list(messages)}), None, "minilm")

    first = ctx({"role": "system", "content": "s"}, {"role": "user", "content": "one"})
    assert first == ctx({"role": "system", "content": "s"}, {"role": "user", "content": "another"})
    assert first != ctx({"role": "system", "content": "t"}, {"role": "user", "content": "one"})
    assert last_turn({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}) == "a"
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    assert last_turn({"messages": [{"role": "user", "content": [image]}]}) is None
    assert last_turn({"messages": [{"role": "assistant", "content": "x"}]}) is None


def chunk(delta: dict[str, object], finish: str | None = None, index: int = 0) -> dict[str, object]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}  # fmt: skip


def test_chunks_assemble_into_their_completion() -> None:
    calls = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "look", "arguments": '{"a"'}}]
    more = [{"index": 0, "function": {"arguments": ": 1}"}}]
    completion = assemble(
        [
            chunk({"role": "assistant", "content": "Hel"}),
            chunk({"content": "lo"}, index=1),
            chunk({"content": "lo"}),
            chunk({"tool_calls": calls}),
            chunk({"tool_calls": more}),
            chunk({}, "tool_calls"),
            chunk({}, "stop", index=1),
            {"id": "c1", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
        ]
    )
    first, second = completion["choices"]
    assert first["message"]["content"] == "Hello" and first["finish_reason"] == "tool_calls"
    assert first["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": '{"a": 1}'}}
    ]
    assert second["message"]["content"] == "lo" and second["finish_reason"] == "stop"
    assert completion["usage"]["total_tokens"] == 3


def test_a_recording_is_an_entry_only_whole_and_within_its_bound() -> None:
    class Finished:
        prompt_tokens = 3
        completion_tokens = 4

    recorder = Recorder(10_000)
    recorder.chunk(chunk({"content": "partial"}))
    assert recorder.entry(Finished()) is None  # type: ignore[arg-type]  # no finish: a cut stream
    recorder.chunk(chunk({}, "stop"))
    raw = recorder.entry(Finished())  # type: ignore[arg-type]
    assert raw is not None
    entry = Entry.read(raw)
    assert entry is not None and entry.streamed
    # The upstream streamed no usage: the entry keeps the gateway's count.
    assert entry.chunks()[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    small = Recorder(100)
    small.chunk(chunk({"content": "x" * 200}))
    small.chunk(chunk({}, "stop"))
    assert small.entry(Finished()) is None  # type: ignore[arg-type]
    filtered = Recorder(10_000)
    filtered.answer({"choices": [{"index": 0, "message": {"content": ""}, "finish_reason": "content_filter"}]})
    assert filtered.entry(Finished()) is None  # type: ignore[arg-type]


def test_entries_of_another_format_or_damaged_are_not_read() -> None:
    assert Entry.read(b"not json") is None
    assert Entry.read(orjson.dumps({"v": 99, "completion": {}})) is None
    assert Entry.read(orjson.dumps({"v": 1})) is None


def test_memory_backend_evicts_least_recently_used_by_bytes_and_expires() -> None:
    async def run() -> None:
        backend = MemoryBackend(max_bytes=3 * (100 + ENTRY_OVERHEAD))
        for name in "abc":
            await backend.set(name, b"x" * 100, 60)
        assert await backend.get("a") == b"x" * 100  # a is now the most recently used
        await backend.set("d", b"y" * 100, 60)
        assert await backend.get("b") is None and await backend.get("a") is not None
        assert backend.bytes <= backend.max_bytes and backend.evictions == 1
        await backend.set("big", b"z" * 10_000, 60)  # larger than the whole backend: not stored
        assert await backend.get("big") is None and await backend.get("c") is not None
        await backend.set("short", b"s", 0.05)
        await asyncio.sleep(0.1)
        assert await backend.get("short") is None
        await backend.set("a", b"new", 60)
        assert await backend.get("a") == b"new"
        assert backend.bytes == sum(len(v) + ENTRY_OVERHEAD for _, v in backend._entries.values())

    asyncio.run(run())
