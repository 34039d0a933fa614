"""Passthrough streams, when the client speaks the provider's protocol: each upstream event is
parsed once and re-sent in canonical framing (`event:` when named, one `data:` line, a blank
line), so comments, `id:` and `retry:` lines never reach the client and odd framing (CRLF,
`data:` without a space, multi-line data) reaches it normalised.

What is sent is the upstream's data as received, unless the gateway changed the event (usage the
client did not ask for removed, a counted usage added) or output guards apply: then it is
re-serialised from the object the guards checked, so a parser that reads duplicate keys
differently cannot make the client see what the guard did not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from sluicegate.cache.entry import carried
from sluicegate.dialects import STREAM_EVENT_TEXTS
from sluicegate.dialects.anthropic.render import render_usage
from sluicegate.dialects.openai import without_usage
from sluicegate.errors import SluicegateError
from sluicegate.neutral import token_count
from sluicegate.providers.framing import SSEDecoder, SSEParser, event_json
from sluicegate.providers.openai import stream_error
from sluicegate.relay.common import frame, reframe, take_model
from sluicegate.relay.stream import (
    KEEP_ALIVE,
    Tally,
    body,
    close,
    failure,
    output_guard,
    release,
    start,
)

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.dialects.base import StreamEncoder
    from sluicegate.types import Send

_DONE = b"data: [DONE]\n\n"


async def relay_stream(
    call: Call,
    resp: aiohttp.ClientResponse,
    send: Send,
    client_gone: Callable[[], bool],
    render_error: Callable[[SluicegateError], bytes],
    prefix: bytes = b"",
) -> None:
    """Forward an OpenAI SSE stream (chat or legacy completions) event by event.

    The usage chunk was requested by the gateway for accounting: a client that did not ask for it
    gets no usage, whatever the shape of the chunk that carries it. Without usage from the
    upstream (or with numbers that are not counts), the gateway counts, and a client that asked
    gets the count in a usage chunk before `[DONE]`. Garbage (not JSON, not an object) and the
    upstream's own error events end the stream with an in-band error; nothing after them is
    relayed.
    """
    name = call.provider or ""
    parser = SSEParser(name, call.snapshot.server.max_stream_event_bytes)
    await start(call, send)
    held = output_guard(call)
    tally = Tally(call)
    include_usage = call.include_usage
    done = False
    error: SluicegateError | None = None
    tail = b""
    try:
        async for data in body(call, resp, prefix):
            if call.ttft_ms is None:
                call.ttft_ms = call.elapsed_ms()
            comments = parser.comments
            out: list[bytes] = []
            for event_name, payload in parser.feed(data):
                if payload[:1] != b"{":
                    if payload.strip() == b"[DONE]":
                        done = True
                        break
                    if not payload or payload.isspace():
                        continue
                chunk = event_json(name, payload)
                failed = stream_error(name, event_name, chunk)
                if failed is not None:
                    raise failed
                if tally.record is not None:
                    tally.record.chunk(chunk)
                if not tally.saw_model:
                    tally.saw_model = take_model(call, chunk)
                changed = False
                if chunk.get("usage") is not None:
                    kept = tally.usage(chunk, replace=False)
                    changed = not kept
                    if not (kept and include_usage):
                        stripped = without_usage(chunk)
                        if stripped is None:
                            continue  # only the usage: the client did not ask, or it was no count
                        chunk, changed = stripped, True
                elif call.usage_source == "none":
                    tally.keep(payload)
                tally.last = chunk
                if held is not None:
                    held.add_parsed(frame(event_name, orjson.dumps(chunk)), chunk)
                elif changed:
                    out.append(frame(event_name, orjson.dumps(chunk)))
                else:
                    out.append(reframe(event_name, payload, chunk))
            if done:
                if held is not None:
                    out.extend(await release(held.finish(), out, send))
                # Counted now only for a client that asked; otherwise accounting counts after the end.
                counted = await tally.counted_chunk() if include_usage else None
                if counted is not None:
                    out.append(frame(None, orjson.dumps(counted)))
                out.append(_DONE)
                tail = b"".join(out)  # sent by `end`, with the body's last message
                break
            if held is not None:
                # One scan per read from the upstream, however many events it brought.
                out.extend(await release(held.drain(), out, send))
            if not out and parser.comments != comments:
                out.append(KEEP_ALIVE)
            if out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            if client_gone():
                break
    except asyncio.CancelledError:
        resp.release()
        raise
    except Exception as exc:
        # A cut, a guard block, the upstream's own error event, garbage: the upstream is stopped.
        error = failure(call, name, exc)
    finally:
        tally.keep_for_audit()
    await close(call, send, resp, client_gone, name, done, error, render_error, tail)


async def relay_native_stream(
    call: Call,
    resp: aiohttp.ClientResponse,
    send: Send,
    client_gone: Callable[[], bool],
    encoder: StreamEncoder,
    prefix: bytes = b"",
) -> None:
    """A passthrough stream of another protocol than OpenAI's (Anthropic's): every event goes to
    the client as the upstream sent it (re-framed), unknown kinds included (server tools,
    citations), while the provider's decoder reads the same parsed events for usage, the end of
    the stream and in-band errors. Output guards hold and scan the events' texts, and rewrite
    only what they redact. The event that ends the answer (Anthropic's `message_delta`) gets the
    gateway's count when the upstream reported no usage.
    """
    assert call.route is not None
    provider = call.route.provider
    name = provider.name
    decoder = provider.stream_decoder(call)
    assert isinstance(decoder, SSEDecoder), "a native stream is SSE"
    parser = decoder.sse
    await start(call, send)
    held = output_guard(call, STREAM_EVENT_TEXTS[call.dialect])
    tally = Tally(call)
    error: SluicegateError | None = None
    tail = b""
    try:
        async for data in body(call, resp, prefix):
            if call.ttft_ms is None:
                call.ttft_ms = call.elapsed_ms()
            comments = parser.comments
            out: list[bytes] = []
            for event_name, payload in parser.feed(data):
                if decoder.done:
                    break
                if not payload or payload.isspace():
                    continue
                event = event_json(name, payload)
                if tally.record is not None and event.get("type") == "content_block_start":
                    if not carried([event.get("content_block")]):
                        tally.record.drop()
                chunks = decoder.event(event_name, event)
                for chunk in chunks:
                    tally.chunk(chunk)
                changed = call.usage_source == "none" and await _fill_usage(tally, event, chunks)
                if held is not None:
                    held.add_parsed(frame(event_name, orjson.dumps(event)), event)
                elif changed:
                    out.append(frame(event_name, orjson.dumps(event)))
                else:
                    out.append(reframe(event_name, payload, event))
            if held is not None:
                pending = held.finish() if decoder.done else held.drain()
                out[:0] = await release(pending, out, send)
            if decoder.done:
                tail = b"".join(out)  # sent by `end`, with the body's last message
                break
            if not out and parser.comments != comments:
                out.append(KEEP_ALIVE)
            if out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            if client_gone():
                break
    except asyncio.CancelledError:
        resp.release()
        raise
    except Exception as exc:
        # A cut, a guard block, the upstream's own error event, garbage: the upstream is stopped.
        error = failure(call, name, exc)
    finally:
        tally.keep_for_audit()
    await close(call, send, resp, client_gone, name, decoder.done, error, encoder.error, tail)


def _ends_answer(chunk: dict[str, Any]) -> bool:
    """Whether a neutral chunk carries the finish reason (the last event with content)."""
    choices = chunk.get("choices")
    return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)


async def _fill_usage(tally: Tally, event: dict[str, Any], chunks: list[dict[str, Any]]) -> bool:
    """An Anthropic stream whose upstream reports no usage (so far): `message_start` gets the
    zero usage SDKs need to accumulate the message (or zeros where its numbers are no counts),
    and `message_delta`, which ends the answer, the gateway's count. Whether the event changed."""
    kind = event.get("type")
    if kind == "message_start":
        message = event.get("message")
        if not isinstance(message, dict):
            return False
        usage = message.get("usage")
        if not isinstance(usage, dict):
            message["usage"] = {"input_tokens": 0, "output_tokens": 0}
            return True
        bad = [k for k, v in usage.items() if k.endswith("_tokens") and v is not None and token_count(v) is None]
        for key in bad:
            usage[key] = 0
        return bool(bad)
    if kind != "message_delta" or not any(map(_ends_answer, chunks)):
        return False
    usage = await tally.count()
    if usage is None:
        return False
    event["usage"] = render_usage(usage)
    return True
