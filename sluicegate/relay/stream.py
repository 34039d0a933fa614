"""Streamed answers: OpenAI SSE relayed event by event (passthrough), or any provider's stream
decoded into neutral chunks and encoded in the client's dialect; usage always read, output guards
on a hold-back window, and an in-band error event instead of a clean end when anything breaks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson

from sluicegate.dialects import STREAM_EVENT_TEXTS
from sluicegate.errors import SluicegateError, UpstreamError
from sluicegate.guardrails.engine import Blocked, GuardFailed
from sluicegate.guardrails.stream import StreamGuard
from sluicegate.relay.common import answer_texts, response_headers, take_model, take_usage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.dialects.base import StreamEncoder
    from sluicegate.dialects.openai import Path
    from sluicegate.types import Send

#: raw stream events kept for token counting, in case the upstream never sends usage
MAX_KEPT_STREAM_BYTES = 8 * 1024 * 1024
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class StreamCut(UpstreamError):
    """The upstream stream ended, or broke, before its terminating event."""

    code = "upstream_stream_cut"


def _cut(name: str | None, exc: BaseException) -> StreamCut:
    """The error for a stream the upstream broke (a read error) or left silent (a timeout)."""
    how = "went silent" if isinstance(exc, TimeoutError) else "broke the connection"
    return StreamCut(f"provider '{name}' {how} before the end of the stream")


async def relay_stream(
    call: Call,
    resp: aiohttp.ClientResponse,
    send: Send,
    client_gone: Callable[[], bool],
    render_error: Callable[[SluicegateError], bytes],
) -> None:
    """Forward an SSE stream event by event; drop the usage chunk the client did not ask for.

    The usage chunk (`"choices": []` plus `usage`) was requested by the gateway for accounting.
    On an upstream cut the client gets an in-band error event, never a clean `[DONE]`.
    """
    name = call.provider
    status = 200
    await send({"type": "http.response.start", "status": status, "headers": response_headers(call, _SSE_HEADERS)})
    call.status = status
    buffer = b""
    kept: list[bytes] = []
    kept_bytes = 0
    done = False
    saw_model = False
    error: SluicegateError | None = None
    #: the upstream's own error event went to the client already
    relayed_error = False
    held = _output_guard(call)
    try:
        async for chunk in resp.content.iter_any():
            if call.ttft_ms is None:
                call.ttft_ms = call.elapsed_ms()
            if b"\r" in chunk:
                chunk = chunk.replace(b"\r\n", b"\n")
            buffer += chunk
            out: list[bytes] = []
            while True:
                end = buffer.find(b"\n\n")
                if end < 0:
                    break
                event = buffer[: end + 2]
                buffer = buffer[end + 2 :]
                if event.startswith(b"data: [DONE]"):
                    done = True
                    if held is not None:
                        out.extend(await _release(held.finish(), out, send))
                elif b'"usage":{' in event:
                    data = _event_json(event)
                    if data is not None:
                        take_usage(call, data.get("usage"))
                        if not saw_model:
                            saw_model = take_model(call, data)
                        if not data.get("choices") and not call.include_usage:
                            continue
                elif event.startswith(b'data: {"error"'):
                    error = UpstreamError(f"provider '{name}' reported an error in the stream")
                    relayed_error = True
                elif call.usage_source == "none":
                    if not saw_model:
                        data = _event_json(event)
                        saw_model = data is not None and take_model(call, data)
                    if kept_bytes < MAX_KEPT_STREAM_BYTES:
                        kept.append(event)
                        kept_bytes += len(event)
                if held is None or done or relayed_error:
                    # [DONE] follows what the guard window released; an upstream error event goes
                    # out at once (the held, unchecked text after it never does).
                    out.append(event)
                else:
                    held.add(event)
            if held is not None and not done:
                # One scan per read from the upstream, however many events it brought.
                out.extend(await _release(held.drain(), out, send))
            if out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            if client_gone():
                return
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = _cut(name, exc)
    except (Blocked, GuardFailed) as exc:
        # Nothing of the blocked text was released; stop the upstream and say why in-band.
        error = exc
        resp.close()
    finally:
        resp.release()
        if call.usage_source == "none" and kept:
            call.usage_text = _stream_texts(kept)
    await _end(call, send, name, done, error, None if relayed_error else render_error)


async def relay_translated_stream(
    call: Call,
    resp: aiohttp.ClientResponse,
    send: Send,
    client_gone: Callable[[], bool],
    encoder: StreamEncoder,
) -> None:
    """A stream in the provider's protocol, decoded into neutral chunks, encoded in the client's.

    The same guarantees as `relay_stream`: usage always read (the encoder drops what the client
    did not ask for), output guards on the hold-back window, and on a cut or an upstream error an
    in-band error event in the client's dialect instead of a clean end.
    """
    assert call.route is not None
    provider = call.route.provider
    decoder = provider.stream_decoder(call)
    await send({"type": "http.response.start", "status": 200, "headers": response_headers(call, _SSE_HEADERS)})
    call.status = 200
    held = _output_guard(call)
    error: SluicegateError | None = None
    saw_model = False
    kept: list[str] = []
    ended = False
    try:
        body = resp.content.iter_any()
        while not ended:
            try:
                data = await body.__anext__()
            except StopAsyncIteration:
                chunks = decoder.close()
                ended = True
            else:
                if call.ttft_ms is None:
                    call.ttft_ms = call.elapsed_ms()
                chunks = decoder.feed(data)
            for chunk in chunks:
                if "usage" in chunk:
                    take_usage(call, chunk["usage"])
                if not saw_model:
                    saw_model = take_model(call, chunk)
                if call.usage_source == "none" and len(kept) < 100_000:
                    kept.extend(answer_texts(chunk))
            out: list[bytes] = []
            if held is not None:
                for chunk in chunks:
                    held.add_chunk(chunk)
                pending = held.finish_chunks() if decoder.done else held.drain_chunks()
                chunks = await _release(pending, out, send)
            out.extend(encoder.encode(chunk) for chunk in chunks)
            if decoder.done:
                out.append(encoder.finish())
                ended = True
            if out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            if client_gone():
                return
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = _cut(provider.name, exc)
    except SluicegateError as exc:
        # A guard block, or the upstream's own error event (or garbage): stop the upstream.
        error = exc
        resp.close()
    finally:
        resp.release()
        if call.usage_source == "none" and kept:
            call.usage_text = kept
    await _end(call, send, provider.name, decoder.done, error, encoder.error)


async def relay_native_stream(
    call: Call,
    resp: aiohttp.ClientResponse,
    send: Send,
    client_gone: Callable[[], bool],
    encoder: StreamEncoder,
) -> None:
    """A passthrough stream of another protocol than OpenAI's (Anthropic's): every event goes to
    the client as the upstream sent it, unknown kinds included (server tools, citations), while
    the provider's decoder reads the same events for usage, the end of the stream and in-band
    errors. Output guards hold and scan the events' texts, and rewrite only what they redact.
    """
    assert call.route is not None
    provider = call.route.provider
    decoder = provider.stream_decoder(call)
    await send({"type": "http.response.start", "status": 200, "headers": response_headers(call, _SSE_HEADERS)})
    call.status = 200
    held = _output_guard(call, STREAM_EVENT_TEXTS[call.dialect])
    error: SluicegateError | None = None
    relayed_error = False
    saw_model = False
    buffer = b""
    try:
        async for data in resp.content.iter_any():
            if call.ttft_ms is None:
                call.ttft_ms = call.elapsed_ms()
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n")
            buffer += data
            out: list[bytes] = []
            while not decoder.done:
                end = buffer.find(b"\n\n")
                if end < 0:
                    break
                event, buffer = buffer[: end + 2], buffer[end + 2 :]
                try:
                    chunks = decoder.feed(event)
                except SluicegateError as exc:
                    # The upstream's own error event: it goes to the client as sent, and ends it.
                    error, relayed_error = exc, True
                    out.append(event)
                    break
                for chunk in chunks:
                    if "usage" in chunk:
                        take_usage(call, chunk["usage"])
                    if not saw_model:
                        saw_model = take_model(call, chunk)
                if held is None:
                    out.append(event)
                else:
                    held.add_parsed(event, _event_json(event))
            if held is not None and not relayed_error:
                pending = held.finish() if decoder.done else held.drain()
                out[:0] = await _release(pending, out, send)
            if out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            if decoder.done or relayed_error or client_gone():
                break
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = _cut(provider.name, exc)
    except SluicegateError as exc:
        error = exc  # a guard block: nothing of the blocked text was released
        resp.close()
    finally:
        resp.release()
    if client_gone():
        return
    await _end(call, send, provider.name, decoder.done, error, None if relayed_error else encoder.error)


def _output_guard(
    call: Call, texts: Callable[[dict[str, Any]], list[tuple[str, Path, str]]] | None = None
) -> StreamGuard | None:
    """The hold-back window of the call's output guards, if it has any."""
    guards = call.guards
    if guards is None or not guards.guards.output:
        return None
    return StreamGuard(guards, guards.guards.output, guards.guards.window, texts)


async def _end(
    call: Call,
    send: Send,
    name: str | None,
    done: bool,
    error: SluicegateError | None,
    render_error: Callable[[SluicegateError], bytes] | None,
) -> None:
    """End the client's stream: a stream that stopped before its end marker is a cut; a failure
    is recorded and, unless the upstream's own error event went out already (`render_error`
    None), told in-band; then the body closes."""
    if error is None and not done:
        error = StreamCut(f"provider '{name}' ended the stream before its end marker")
    if error is not None:
        call.fail(error)
        if render_error is not None:
            await send({"type": "http.response.body", "body": render_error(error), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


_T = TypeVar("_T")


async def _release(pending: Awaitable[list[_T]], out: list[bytes], send: Send) -> list[_T]:
    """Events the guard window lets go; on a block, first send what it had already released."""
    try:
        return await pending
    except (Blocked, GuardFailed):
        # Released events are clean: they go out before the error event.
        if out:
            await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            out.clear()
        raise


def _event_json(event: bytes) -> dict[str, Any] | None:
    """The JSON of an SSE event's `data:` line (after an `event:` line, if any)."""
    at = 0 if event.startswith(b"data:") else event.find(b"\ndata:") + 1
    if at <= 0 and not event.startswith(b"data:"):
        return None
    try:
        data = orjson.loads(event[at + 5 :])
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _stream_texts(events: list[bytes]) -> list[str]:
    texts: list[str] = []
    for event in events:
        data = _event_json(event)
        if data is not None:
            texts.extend(answer_texts(data))
    return texts
