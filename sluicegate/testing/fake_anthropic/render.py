"""Fake Anthropic upstream, answers: a planned `wire.Answer` as a Messages API message or SSE stream.

Also what the routes read off a request to plan one: its prompt size and last user text.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from sluicegate.testing.wire import Answer, Reply, Send, pieces, rand, sse, stream_events, text_of, words

#: neutral planned finish -> Anthropic `stop_reason`
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _block_text(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text") or "")
    if kind == "tool_result":
        content = block.get("content")
        return content if isinstance(content, str) else text_of(content)
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_block_text(b) for b in content if isinstance(b, dict))
    return ""


def prompt_size(data: dict[str, Any]) -> tuple[int, int]:
    """(words, messages) of a request, the system prompt counted as one message (as OpenAI's is)."""
    messages = data.get("messages") or []
    count = sum(words(_content_text(m.get("content"))) for m in messages)
    n = len(messages)
    system = data.get("system")
    if system:
        count += words(_content_text(system))
        n += 1
    return count, n


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else text_of(content)
    return ""


def apply_stop_sequences(answer: Answer, stops: list[str] | None) -> str | None:
    """Cut the text at the first stop sequence it holds (`stop_reason` "stop_sequence"); that sequence."""
    if not stops or answer.text is None or answer.tool_calls:
        return None
    hits = [(answer.text.find(s), s) for s in stops if s and s in answer.text]
    if not hits:
        return None
    at, stop = min(hits)
    answer.text = answer.text[:at]
    answer.pieces = pieces(answer.text)
    if answer.reply.completion_tokens is None:
        answer.completion_tokens = len(answer.pieces)
    answer.finish = "stop"
    return stop


def _usage(answer: Answer, output_tokens: int) -> dict[str, Any]:
    cached = answer.reply.cached_tokens or 0
    input_tokens, output = answer.reply.counts(max(answer.prompt_tokens - cached, 0), output_tokens)
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output,
        "service_tier": "standard",
    }


def _stop_reason(answer: Answer, stop_sequence: str | None) -> str:
    return "stop_sequence" if stop_sequence is not None else STOP_REASONS[answer.finish]


def _signature() -> str:
    return "Eq" + rand(86)


def _input(arguments: str) -> Any:
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def headers(answer: Answer) -> dict[str, str]:
    return {"request-id": "req_" + rand(24), **answer.reply.headers}


def message(answer: Answer, stop_sequence: str | None) -> dict[str, Any]:
    """The Message object (https://docs.anthropic.com/en/api/messages, response); without `usage`
    when the reply says the upstream reports none."""
    content: list[dict[str, Any]] = []
    if answer.reasoning:
        content.append({"type": "thinking", "thinking": answer.reasoning, "signature": _signature()})
    if answer.text or (answer.text is not None and not answer.tool_calls):
        content.append({"type": "text", "text": answer.text})
    for tc in answer.tool_calls:
        content.append({"type": "tool_use", "id": tc.id, "name": tc.name, "input": _input(tc.arguments)})
    return {
        "id": "msg_" + rand(24),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": _stop_reason(answer, stop_sequence),
        "stop_sequence": stop_sequence,
        **({"usage": _usage(answer, answer.completion_tokens)} if answer.reply.usage else {}),
    }


async def stream(answer: Answer, stop_sequence: str | None, send: Send) -> None:
    """The documented event sequence (https://docs.anthropic.com/en/api/messages-streaming): message_start,
    per block content_block_start / content_block_delta ... / content_block_stop (a ping after the
    first start), message_delta with the stop reason and usage, message_stop."""
    start: dict[str, Any] = {
        "id": "msg_" + rand(24),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        **({"usage": _usage(answer, 1)} if answer.reply.usage else {}),
    }
    head = [sse({"type": "message_start", "message": start}, "message_start")]
    body: list[bytes] = []
    index = 0

    def block(first: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        nonlocal index
        body.append(sse({"type": "content_block_start", "index": index, "content_block": first}, "content_block_start"))
        if index == 0:
            body.append(sse({"type": "ping"}, "ping"))
        body.extend(
            sse({"type": "content_block_delta", "index": index, "delta": d}, "content_block_delta") for d in deltas
        )
        body.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        index += 1

    if answer.reasoning:
        block(
            {"type": "thinking", "thinking": "", "signature": ""},
            [{"type": "thinking_delta", "thinking": p} for p in pieces(answer.reasoning)]
            + [{"type": "signature_delta", "signature": _signature()}],
        )
    if answer.text or (answer.text is not None and not answer.tool_calls):
        block({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in answer.pieces])
    for tc in answer.tool_calls:
        block(
            {"type": "tool_use", "id": tc.id, "name": tc.name, "input": {}},
            [{"type": "input_json_delta", "partial_json": f} for f in ["", *tc.fragments]],
        )
    usage = _usage(answer, answer.completion_tokens)
    del usage["cache_creation"], usage["service_tier"]
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": _stop_reason(answer, stop_sequence), "stop_sequence": stop_sequence},
    }
    if answer.reply.usage:
        delta["usage"] = usage
    tail = [sse(delta, "message_delta"), sse({"type": "message_stop"}, "message_stop")]
    # The scripted reply may be reused: its headers are not changed.
    reply = dataclasses.replace(answer.reply, headers=headers(answer))
    await stream_events(reply, head, body, tail, send, error_event=stream_error(answer.reply))


def stream_error(reply: Reply) -> bytes:
    """An `error` event, as Anthropic sends one mid-stream (its type: `overloaded_error`)."""
    error = {"type": "overloaded_error", "message": reply.message("Overloaded")}
    return sse({"type": "error", "error": error}, "error")
