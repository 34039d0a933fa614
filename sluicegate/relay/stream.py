"""Streamed answers: what every stream path shares, and the translated path (any provider's
stream decoded into neutral chunks, encoded in the client's dialect).

Every path reads the upstream's events through one parser (`providers.framing`), checks every
number before it is used (`Tally`), counts the tokens itself before the last event when the
upstream reported none (so the client is told what the audit records), holds events in the
output guards' window, and ends a stream that broke, went silent, sent garbage or reported an
error with an in-band error event in the client's dialect, never a clean end.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson

from sluicegate import neutral
from sluicegate.errors import SluicegateError, UpstreamError
from sluicegate.guardrails.engine import Blocked, GuardFailed
from sluicegate.guardrails.stream import StreamGuard
from sluicegate.providers.framing import SSEDecoder
from sluicegate.relay.common import answer_texts, count, recorder, response_headers, take_model, take_usage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.dialects.base import StreamEncoder
    from sluicegate.dialects.openai import Path
    from sluicegate.types import Send

log = logging.getLogger("sluicegate.relay")

#: text kept to count tokens when the upstream never sends usage (characters, or event bytes)
MAX_KEPT_STREAM_BYTES = 8 * 1024 * 1024
#: sent in place of the upstream's own comments: a stream that is alive but quiet stays open
KEEP_ALIVE = b": keep-alive\n\n"
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class StreamCut(UpstreamError):
    """The upstream stream ended, or broke, before its terminating event."""

    code = "upstream_stream_cut"


def cut(name: str | None, exc: BaseException) -> StreamCut:
    """The error for a stream the upstream broke (a read error) or left silent (a timeout)."""
    how = "went silent" if isinstance(exc, TimeoutError) else "broke the connection"
    return StreamCut(f"provider '{name}' {how} before the end of the stream")


def internal(call: Call, exc: Exception) -> SluicegateError:
    """A failure of the gateway's own while relaying: logged (the traceback scrubbed, as it may
    quote the upstream), told in-band without details."""
    trace = call.scrub("".join(traceback.format_exception(exc)), None)
    log.error("relaying the answer of request %s failed:\n%s", call.request_id, trace)
    return SluicegateError("The gateway failed while relaying the answer", code="internal_error")


def failure(call: Call, name: str | None, exc: Exception) -> SluicegateError:
    """What ended a stream relay early: a read error or silence (a cut), a refusal of the
    gateway's or an error the upstream reported (as they are), or a failure of the gateway's own
    (logged, scrubbed, told without details)."""
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return cut(name, exc)
    if isinstance(exc, SluicegateError):
        return exc
    return internal(call, exc)


async def start(call: Call, send: Send) -> None:
    """Send the headers of an SSE answer."""
    await send({"type": "http.response.start", "status": 200, "headers": response_headers(call, _SSE_HEADERS)})
    call.status = 200


async def body(call: Call, resp: aiohttp.ClientResponse, prefix: bytes = b"") -> AsyncIterator[bytes]:
    """The upstream body as it arrives, after bytes already read from it (`prefix`); the call's
    upstream time runs to its last chunk."""
    if prefix:
        call.upstream_done()
        yield prefix
    async for data in resp.content.iter_any():
        call.upstream_done()
        yield data


#: how long, and how many bytes, the rest of a body is read after the stream's end marker
_DRAIN_S = 1.0
_DRAIN_BYTES = 64 * 1024


async def close(
    call: Call,
    send: Send,
    resp: aiohttp.ClientResponse,
    client_gone: Callable[[], bool],
    name: str | None,
    done: bool,
    error: SluicegateError | None,
    render_error: Callable[[SluicegateError], bytes],
    tail: bytes = b"",
) -> None:
    """After a stream relay's loop: end the client's stream (`end`) and finish with the upstream;
    a client that left gets nothing more, and its upstream connection is closed."""
    if client_gone():
        resp.close()
        return
    await end(call, send, name, done, error, render_error, tail)
    await finish_upstream(resp, done and error is None)


async def finish_upstream(resp: aiohttp.ClientResponse, complete: bool) -> None:
    """After the client's stream ended: a stream that ended well is read to its end (normally
    nothing but the end of the body follows the end marker) so its connection can be reused;
    one that did not, or an upstream that keeps sending, is closed."""
    if complete and not resp.content.at_eof():
        left = _DRAIN_BYTES
        try:
            async with asyncio.timeout(_DRAIN_S):
                while left > 0:
                    data = await resp.content.readany()
                    if not data:
                        break
                    left -= len(data)
        except (aiohttp.ClientError, TimeoutError):
            pass
    if not resp.content.at_eof():
        resp.close()
    resp.release()


class Tally:
    """What a stream relay reads off the answer as it passes: the model, the usage (every number
    checked; a usage that is no count is dropped and the tokens counted instead), the texts."""

    __slots__ = ("call", "kept", "last", "record", "saw_model", "size", "texts", "warned")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.saw_model = False
        self.warned = False
        #: event data kept to count its texts if no usage arrives (passthrough; parsed again then)
        self.kept: list[bytes] = []
        #: texts kept to count (translated)
        self.texts: list[str] = []
        self.size = 0
        #: the last chunk seen: a usage chunk the gateway adds takes its id, model and time
        self.last: dict[str, Any] = {}
        #: records the chunks for the cache (a miss it will store)
        self.record = recorder(call)

    def usage(self, chunk: dict[str, Any], replace: bool = True) -> bool:
        """Take a chunk's usage; one that is not valid is removed from the chunk, a valid one
        replaced by its checked copy (`replace`). Whether the chunk still carries a usage."""
        usage = chunk.get("usage")
        if usage is None:
            return False
        checked = take_usage(self.call, usage, warn=not self.warned)
        if checked is None:
            self.warned = True
            del chunk["usage"]
            return False
        if replace:
            chunk["usage"] = checked
        return True

    def chunk(self, chunk: dict[str, Any]) -> None:
        """Model, usage and texts of a neutral chunk (translated streams)."""
        self.last = chunk
        if self.record is not None:
            self.record.chunk(chunk)
        if not self.saw_model:
            self.saw_model = take_model(self.call, chunk)
        if "usage" in chunk:
            self.usage(chunk)
        if self.call.usage_source == "none" and self.size < MAX_KEPT_STREAM_BYTES:
            for text in answer_texts(chunk):
                self.texts.append(text)
                self.size += len(text)

    def keep(self, payload: bytes) -> None:
        """Keep a passthrough event's data (a JSON object) to count its texts, if no usage arrives."""
        if self.size < MAX_KEPT_STREAM_BYTES:
            self.kept.append(payload)
            self.size += len(payload)

    def all_texts(self) -> list[str]:
        texts = list(self.texts)
        for payload in self.kept:
            texts.extend(answer_texts(orjson.loads(payload)))
        return texts

    async def count(self) -> dict[str, Any] | None:
        """The counted usage when the upstream reported none (None when it did)."""
        return await count(self.call, self.all_texts())

    async def counted_chunk(self) -> dict[str, Any] | None:
        """A usage chunk with the counted usage, like the last chunk seen (None: not counted)."""
        usage = await self.count()
        if usage is None:
            return None
        last = self.last
        created = last.get("created")
        when = created if type(created) is int and 0 <= created < 2**40 else int(time.time())
        chunk = neutral.usage_chunk(_text(last.get("id")), _text(last.get("model")), when, usage)
        if isinstance(last.get("object"), str) and last["object"] in _CHUNK_OBJECTS:
            chunk["object"] = last["object"]
        return chunk

    def keep_for_audit(self) -> None:
        """At the end of a stream that was not counted: leave the texts for accounting."""
        if self.call.usage_source == "none" and (self.kept or self.texts):
            self.call.usage_text = self.all_texts()


#: `object` of a chunk: chat completions, legacy completions
_CHUNK_OBJECTS = frozenset({"chat.completion.chunk", "text_completion"})


def _text(value: Any) -> str:
    return value[:256] if isinstance(value, str) else ""


def output_guard(
    call: Call, texts: Callable[[dict[str, Any]], list[tuple[str, Path, str]]] | None = None
) -> StreamGuard | None:
    """The hold-back window of the call's output guards, if it has any."""
    guards = call.guards
    if guards is None or not guards.guards.output:
        return None
    if call.trace is not None:
        # The output guards of a stream act all along it: their span ends with the call.
        call.trace.hold("guardrails.output")
    return StreamGuard(guards, guards.guards.output, guards.guards.window, texts)


async def end(
    call: Call,
    send: Send,
    name: str | None,
    done: bool,
    error: SluicegateError | None,
    render_error: Callable[[SluicegateError], bytes],
    tail: bytes = b"",
) -> None:
    """End the client's stream: a stream that stopped before its end marker is a cut; a failure
    is recorded (its message scrubbed) and told in-band in the client's dialect; then the body
    closes. The stream's closing events (`tail`: `[DONE]`, `message_stop`...) or the error event
    go out in the body's last message, so with `audit.durability: before_response` the client
    sees the end of the answer only once its audit event is committed."""
    if error is None and not done:
        error = StreamCut(f"provider '{name}' ended the stream before its end marker")
    if error is not None:
        call.fail(error)
        tail += render_error(error)
    await send({"type": "http.response.body", "body": tail, "more_body": False})


_T = TypeVar("_T")


async def release(pending: Awaitable[list[_T]], out: list[bytes], send: Send) -> list[_T]:
    """Events the guard window lets go; on a block, first send what it had already released."""
    try:
        return await pending
    except (Blocked, GuardFailed):
        # Released events are clean: they go out before the error event.
        if out:
            await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            out.clear()
        raise


async def relay_translated_stream(
    call: Call,
    resp: aiohttp.ClientResponse,
    send: Send,
    client_gone: Callable[[], bool],
    encoder: StreamEncoder,
    prefix: bytes = b"",
) -> None:
    """A stream in the provider's protocol, decoded into neutral chunks, encoded in the client's.

    Usage is always read (the encoder drops what the client did not ask for); without one, the
    tokens are counted and the count goes to the encoder before its closing events.
    """
    assert call.route is not None
    provider = call.route.provider
    decoder = provider.stream_decoder(call)
    sse = decoder.sse if isinstance(decoder, SSEDecoder) else None
    await start(call, send)
    held = output_guard(call)
    tally = Tally(call)
    error: SluicegateError | None = None
    ended = False
    tail = b""
    try:
        chunks_in = body(call, resp, prefix)
        while not ended:
            comments = sse.comments if sse is not None else 0
            try:
                data = await anext(chunks_in)
            except StopAsyncIteration:
                chunks = decoder.close()
                ended = True
            else:
                if call.ttft_ms is None:
                    call.ttft_ms = call.elapsed_ms()
                chunks = decoder.feed(data)
            for chunk in chunks:
                tally.chunk(chunk)
            out: list[bytes] = []
            if held is not None:
                for chunk in chunks:
                    held.add_chunk(chunk)
                pending = held.finish_chunks() if decoder.done else held.drain_chunks()
                chunks = await release(pending, out, send)
            out.extend(encoder.encode(chunk) for chunk in chunks)
            if decoder.done:
                counted = await tally.counted_chunk()
                if counted is not None:
                    out.append(encoder.encode(counted))
                out.append(encoder.finish())
                tail = b"".join(out)  # sent by `end`, with the body's last message
                break
            elif not out and sse is not None and sse.comments != comments:
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
        error = failure(call, provider.name, exc)
    finally:
        tally.keep_for_audit()
    await close(call, send, resp, client_gone, provider.name, decoder.done, error, encoder.error, tail)
