"""A whole answer where a stream was asked for, relayed as the stream the client asked for.

Several servers answer `stream: true` with a plain JSON completion (often when tools are sent).
The answer is read (bounded) and checked as any JSON answer is, output guards run on it whole,
and it goes to the client as a proper stream in its dialect through the dialect's
`StreamEncoder`: OpenAI chunks (role, content, tool calls, finish reason, the usage chunk if
asked), Anthropic events or Responses events, with its usage (the upstream's, or counted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from sluicegate import neutral
from sluicegate.errors import SluicegateError
from sluicegate.guardrails.engine import check_answer
from sluicegate.relay.answer import counted, read_answer, take_answer
from sluicegate.relay.common import recorder
from sluicegate.relay.stream import end, internal, start

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.pipeline import Endpoint
    from sluicegate.providers.base import Provider
    from sluicegate.types import Send

#: content types of the stream framings providers use besides SSE
_STREAM_TYPES = frozenset({"text/event-stream", "application/x-ndjson", "application/vnd.amazon.eventstream"})
#: whitespace read while looking for an answer's first byte, at most
_SNIFF_BYTES = 4096
#: choices and tool calls a whole answer may index when it is replayed as a stream
_MAX_INDEX = 1024


async def stream_or_json(resp: aiohttp.ClientResponse, provider: Provider) -> tuple[bool, bytes]:
    """Whether a streamed call's answer is a whole JSON answer, and the bytes read to tell.

    The content type decides: a stream type is a stream and a JSON type is JSON. Without either,
    an SSE stream is told from JSON by its first byte that is not whitespace: a JSON answer opens
    with `{` or `[`, which no SSE line starts with (NDJSON and event-stream bodies are not guessed).
    """
    kind = resp.content_type or ""
    if kind in _STREAM_TYPES:
        return False, b""
    if kind == "application/json" or kind.endswith("+json"):
        return True, b""
    if provider.stream_framing != "sse":
        return False, b""
    read = b""
    try:
        while len(read) < _SNIFF_BYTES:
            data = await resp.content.readany()
            if not data:
                break
            read += data
            head = read.lstrip(b" \t\r\n\xef\xbb\xbf")
            if head:
                return head[:1] in (b"{", b"["), read
    except (aiohttp.ClientError, TimeoutError):
        pass  # the stream relay meets the failure again and reports it
    return False, read


async def relay_json_stream(
    call: Call, resp: aiohttp.ClientResponse, send: Send, endpoint: Endpoint, prefix: bytes = b""
) -> None:
    """Relay a whole JSON answer to a client that asked for a stream, as that stream."""
    assert call.route is not None and endpoint.stream_encoder is not None
    provider = call.route.provider
    encoder = endpoint.stream_encoder(call)
    await start(call, send)
    done = False
    error: SluicegateError | None = None
    tail = b""
    try:
        _, data = await read_answer(call, resp, prefix)
        call.ttft_ms = call.elapsed_ms()
        guards = call.guards
        guarded = guards is not None and bool(guards.guards.output or guards.restorable)
        chunks: list[dict[str, Any]]
        if not call.translated and call.dialect == "openai":
            if guarded:
                assert guards is not None
                await check_answer(call, guards, data, call.endpoint)
            usage = take_answer(call, data) or await counted(call)
            make = text_chunks if call.endpoint == "completions" else completion_chunks
            chunks = make(data, usage)
        else:
            if guarded and not call.translated:
                assert guards is not None
                await check_answer(call, guards, data, call.endpoint)  # the answer as the client's
            answer = provider.parse_response(data, call)
            if guarded and call.translated:
                assert guards is not None
                await check_answer(call, guards, answer, "chat")
            chunks = completion_chunks(answer, take_answer(call, answer) or await counted(call))
        record = recorder(call)
        if record is not None:
            for chunk in chunks:
                record.chunk(chunk)
        out = [encoder.encode(chunk) for chunk in chunks]
        out.append(encoder.finish())
        tail = b"".join(out)  # sent by `end`, with the body's last message
        done = True
    except SluicegateError as exc:
        error = exc
    except Exception as exc:
        error = internal(call, exc)
    await end(call, send, provider.name, done, error, encoder.error, tail)


def _choices(data: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """An answer's choices with their index (its own when it is a small integer, else its place)."""
    choices = data.get("choices")
    out = []
    for position, choice in enumerate(choices if isinstance(choices, list) else ()):
        if isinstance(choice, dict):
            index = choice.get("index")
            out.append((index if type(index) is int and 0 <= index < _MAX_INDEX else position, choice))
    return sorted(out, key=lambda pair: pair[0])


def _head(data: dict[str, Any]) -> tuple[str, str, int]:
    id_, model, created = data.get("id"), data.get("model"), data.get("created")
    return (
        id_ if isinstance(id_, str) else "",
        model if isinstance(model, str) else "",
        created if type(created) is int and 0 <= created < 2**40 else 0,
    )


def completion_chunks(data: dict[str, Any], usage: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A whole chat completion (neutral) as the chunks a stream of it has: per choice, one delta
    with the role, reasoning, content, refusal and tool calls, then the finish; the usage last."""
    id_, model, created = _head(data)
    chunks = []
    for index, choice in _choices(data):
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        delta: dict[str, Any] = {"role": "assistant"}
        for key in ("reasoning_content", "reasoning_signature", "refusal"):
            if isinstance(message.get(key), str) and message[key]:
                delta[key] = message[key]
        content = message.get("content")
        if content is not None:
            delta["content"] = neutral.text_of(content)
        if isinstance(message.get("function_call"), dict):
            delta["function_call"] = message["function_call"]
        calls = message.get("tool_calls")
        tool_calls = []
        for at, call in enumerate(calls if isinstance(calls, list) else ()):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                tool_calls.append(
                    neutral.tool_call_delta(
                        at,
                        id_=call.get("id") if isinstance(call.get("id"), str) else f"call_{index}_{at}",
                        name=function.get("name") if isinstance(function.get("name"), str) else "",
                        arguments=function.get("arguments") if isinstance(function.get("arguments"), str) else "",
                    )
                )
        if tool_calls:
            delta["tool_calls"] = tool_calls
        finish = choice.get("finish_reason")
        finish = finish if isinstance(finish, str) else "stop"
        chunks.append(neutral.chunk(id_, model, created, delta, index=index))
        chunks.append(neutral.chunk(id_, model, created, {}, finish, index=index))
    if usage is not None:
        chunks.append(neutral.usage_chunk(id_, model, created, usage))
    return chunks


def text_chunks(data: dict[str, Any], usage: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A whole legacy completion (`text_completion`) as its stream: per choice its text, then its
    finish; the usage chunk last."""
    id_, model, created = _head(data)

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": id_, "object": "text_completion", "created": created, "model": model, "choices": choices}

    chunks = []
    for index, choice in _choices(data):
        text = choice.get("text")
        finish = choice.get("finish_reason")
        chunks.append(chunk([{"text": text if isinstance(text, str) else "", "index": index, "logprobs": None,
                              "finish_reason": None}]))  # fmt: skip
        chunks.append(chunk([{"text": "", "index": index, "logprobs": None,
                              "finish_reason": finish if isinstance(finish, str) else "stop"}]))  # fmt: skip
    if usage is not None:
        chunks.append({**chunk([]), "usage": usage})
    return chunks
