"""Provider send and relay: the call goes upstream, the answer comes back to the client.

`Relay.open` sends the call to its provider (credential from the vault, explicit timeouts, no
redirects) and maps every failure before the first byte to an `UpstreamError`. `relay_json` and
`relay_stream` then forward the answer as the upstream sent it (same dialect: passthrough),
reading from it only what accounting needs: usage, the model served, the time to first token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson
from yarl import URL

from sluicegate.errors import SluicegateError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from sluicegate.guardrails.engine import Blocked, GuardFailed, check_answer
from sluicegate.guardrails.stream import StreamGuard
from sluicegate.neutral import unsupported

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.dialects.base import StreamEncoder
    from sluicegate.providers.base import Provider
    from sluicegate.types import Send
    from sluicegate.vault import Vault

#: raw stream events kept for token counting, in case the upstream never sends usage
MAX_KEPT_STREAM_BYTES = 8 * 1024 * 1024
#: largest non-streamed upstream answer accepted
MAX_RESPONSE_BYTES = 64 * 1024 * 1024

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Relay:
    """Sends calls upstream over one shared, pooled HTTP client session."""

    def __init__(self, session: aiohttp.ClientSession, vault: Vault, max_error_body_bytes: int = 64 * 1024) -> None:
        self.session = session
        self.vault = vault
        self.max_error_body_bytes = max_error_body_bytes
        # Built once per provider and URL, not per request (a config reload adds new entries).
        self._timeouts: dict[Provider, aiohttp.ClientTimeout] = {}
        self._urls: dict[str, URL] = {}
        #: per provider with several keys: calls made (`round_robin`) or 429s seen (`on_429`)
        self._key_turns: dict[str, int] = {}

    def _timeout(self, provider: Provider) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(provider)
        if timeout is None:
            if len(self._timeouts) > 10_000:
                self._timeouts.clear()
            t = provider.timeouts
            timeout = self._timeouts[provider] = aiohttp.ClientTimeout(
                total=t.total_s, connect=t.connect_s, sock_connect=t.connect_s, sock_read=t.read_s
            )
        return timeout

    def _url(self, url: str) -> URL:
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) > 10_000:
                self._urls.clear()
            parsed = self._urls[url] = URL(url)
        return parsed

    def _pick_key(self, provider: Provider, refs: list[str]) -> str | None:
        """The reference this call uses among a provider's several keys."""
        if not refs:
            return None
        # Per provider name, so the position survives a config reload that rebuilds the provider.
        name = provider.name
        n = self._key_turns.get(name, 0)
        if provider.config.key_rotation == "round_robin":
            self._key_turns[name] = n + 1
        return refs[n % len(refs)]

    def _rate_limited(self, provider: Provider, refs: list[str], used: str | None) -> None:
        """With `on_429`, move the provider on to its next key after the current one got a 429."""
        if provider.config.key_rotation != "on_429" or len(refs) < 2:
            return
        name = provider.name
        n = self._key_turns.get(name, 0)
        # Several calls may come back 429 from one key; only the first moves on, so keys aren't skipped.
        if refs[n % len(refs)] == used:
            self._key_turns[name] = n + 1

    async def open(
        self, call: Call, to_chat: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    ) -> aiohttp.ClientResponse:
        """Send the call upstream; return the response once its headers say success.

        When the provider does not speak the client's dialect, the body is translated: `to_chat`
        gives the neutral chat body of the client's (None: it already is one)."""
        route = call.route
        assert route is not None
        provider = route.provider
        refs = provider.config.api_key
        ref = self._pick_key(provider, refs) if isinstance(refs, list) else refs
        # A cache hit (nearly every call) costs a dict lookup; only a miss awaits the vault.
        secret = (self.vault.cached(ref) or await self.vault.aresolve(ref)) if ref else None
        upstream_model = route.upstream_model or call.model_requested or ""
        if provider.native_dialect == call.dialect:
            # Same protocol on both sides: the client's body passes through.
            call.translated = False
            endpoint = call.endpoint
            body = provider.prepare_body(call)
        else:
            call.translated = True
            endpoint = _NEUTRAL_ENDPOINTS.get(call.endpoint, call.endpoint)
            if endpoint not in provider.translated_endpoints:
                raise unsupported(f"The '{call.endpoint}' endpoint", f"{provider.label} (provider '{provider.name}')")
            assert call.body is not None
            chat = call.body if to_chat is None else to_chat(call.body)
            body = provider.build_request(call, chat)
        url_text = provider.url_for(endpoint, upstream_model, call.stream)
        url = self._url(url_text)
        name = provider.name
        try:
            resp = await self.session.post(
                url,
                data=body,
                headers=provider.request_headers(call, secret, url_text, body),
                timeout=self._timeout(provider),
                allow_redirects=False,
            )
        except TimeoutError:
            raise UpstreamTimeout(f"provider '{name}' did not answer in time") from None
        except aiohttp.ClientConnectorError:
            raise UpstreamUnavailable(f"cannot connect to provider '{name}'") from None
        except aiohttp.ClientError as exc:
            # The exception text may carry the URL; the class name says enough.
            raise UpstreamError(f"provider '{name}' failed before answering ({type(exc).__name__})") from None
        call.upstream_status = status = resp.status
        if status < 300:
            return resp
        if status == 429 and isinstance(refs, list):
            self._rate_limited(provider, refs, ref)
        try:
            if 300 <= status < 400:
                raise UpstreamError(
                    f"provider '{name}' answered with a redirect (HTTP {status}), which is not followed"
                )
            try:
                raw = await resp.content.read(self.max_error_body_bytes)
            except (aiohttp.ClientError, TimeoutError):
                raw = b""
            raise provider.parse_error(status, raw, _retry_after(resp.headers.get("retry-after")), secret)
        finally:
            resp.release()


#: the neutral endpoint a translated call of each client endpoint goes to
_NEUTRAL_ENDPOINTS = {"messages": "chat", "responses": "chat"}


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def response_headers(call: Call, base: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Response headers with the gateway's request id."""
    return [*base, (b"x-request-id", call.request_id.encode())]


def _take_usage(call: Call, usage: Any) -> None:
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        total = usage.get("total_tokens")
        call.prompt_tokens = prompt if isinstance(prompt, int) else None
        call.completion_tokens = completion if isinstance(completion, int) else 0
        call.total_tokens = total if isinstance(total, int) else None
        call.usage_source = "upstream"


async def _read_answer(call: Call, resp: aiohttp.ClientResponse) -> tuple[bytes, Any]:
    """The whole upstream answer, raw and parsed as JSON."""
    name = call.provider
    try:
        if (resp.content_length or 0) > MAX_RESPONSE_BYTES:
            raise UpstreamError(f"provider '{name}' answered with more than {MAX_RESPONSE_BYTES} bytes")
        raw = await resp.read()
    except TimeoutError:
        raise UpstreamTimeout(f"provider '{name}' did not finish its answer in time") from None
    except aiohttp.ClientError:
        raise UpstreamError(f"provider '{name}' broke the connection during its answer") from None
    finally:
        resp.release()
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"provider '{name}' answered with a body that is not JSON") from None


def _take_answer(call: Call, data: dict[str, Any]) -> None:
    """Model served and usage of a complete neutral (OpenAI) answer."""
    model = data.get("model")
    if isinstance(model, str):
        call.model_served = model
    _take_usage(call, data.get("usage"))
    if call.usage_source == "none":
        call.usage_text = _answer_texts(data)


async def _send_json_answer(call: Call, send: Send, raw: bytes) -> None:
    call.ttft_ms = call.elapsed_ms()
    call.status = 200
    headers = response_headers(call, _JSON_HEADERS)
    headers.append((b"content-length", str(len(raw)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


async def relay_json(call: Call, resp: aiohttp.ClientResponse, send: Send) -> None:
    """Forward a complete JSON answer in the client's own dialect, reading its usage and model."""
    raw, data = await _read_answer(call, resp)
    if isinstance(data, dict):
        if call.dialect == "openai":
            _take_answer(call, data)
        elif call.route is not None and call.endpoint != "count_tokens":
            # Passthrough of another protocol: its provider reads usage (the answer goes as is).
            _take_answer(call, call.route.provider.parse_response(data, call))
        guards = call.guards
        # Output guards see the answer before any of it is sent; usage is already accounted.
        if (
            guards is not None
            and (guards.guards.output or guards.restorable)
            and await check_answer(call, guards, data, call.endpoint)
        ):
            raw = orjson.dumps(data)
    await _send_json_answer(call, send, raw)


async def relay_translated_json(
    call: Call,
    resp: aiohttp.ClientResponse,
    send: Send,
    render: Callable[[dict[str, Any], Call], dict[str, Any]],
) -> None:
    """A complete answer in the provider's protocol, made neutral, then rendered in the client's."""
    _, data = await _read_answer(call, resp)
    assert call.route is not None
    neutral = call.route.provider.parse_response(data, call)
    _take_answer(call, neutral)
    guards = call.guards
    if guards is not None and (guards.guards.output or guards.restorable):
        await check_answer(call, guards, neutral, "chat")
    await _send_json_answer(call, send, orjson.dumps(render(neutral, call)))


def _answer_texts(data: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        source = choice.get("message") or choice.get("delta") or choice
        if not isinstance(source, dict):
            continue
        for key in ("content", "text", "refusal", "reasoning_content"):
            value = source.get(key)
            if isinstance(value, str):
                texts.append(value)
        for tool_call in source.get("tool_calls") or ():
            fn = tool_call.get("function") if isinstance(tool_call, dict) else None
            if isinstance(fn, dict):
                texts.extend(v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))
    return texts


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
    guards = call.guards
    held = (
        StreamGuard(guards, guards.guards.output, guards.guards.window)
        if guards is not None and guards.guards.output
        else None
    )
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
                        _take_usage(call, data.get("usage"))
                        if not saw_model:
                            saw_model = _take_model(call, data)
                        if not data.get("choices") and not call.include_usage:
                            continue
                elif event.startswith(b'data: {"error"'):
                    error = UpstreamError(f"provider '{name}' reported an error in the stream")
                    relayed_error = True
                elif call.usage_source == "none":
                    if not saw_model:
                        data = _event_json(event)
                        saw_model = data is not None and _take_model(call, data)
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
    if error is None and not done:
        error = StreamCut(f"provider '{name}' ended the stream before its end marker")
    if error is not None:
        call.fail(error)
        if not relayed_error:
            await send({"type": "http.response.body", "body": render_error(error), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


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
    guards = call.guards
    held = (
        StreamGuard(guards, guards.guards.output, guards.guards.window)
        if guards is not None and guards.guards.output
        else None
    )
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
                    _take_usage(call, chunk["usage"])
                if not saw_model:
                    saw_model = _take_model(call, chunk)
                if call.usage_source == "none" and len(kept) < 100_000:
                    kept.extend(_answer_texts(chunk))
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
    if error is None and not decoder.done:
        error = StreamCut(f"provider '{provider.name}' ended the stream before its end marker")
    if error is not None:
        call.fail(error)
        await send({"type": "http.response.body", "body": encoder.error(error), "more_body": True})
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
    if not event.startswith(b"data:"):
        return None
    try:
        data = orjson.loads(event[5:])
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _take_model(call: Call, data: dict[str, Any]) -> bool:
    model = data.get("model")
    if isinstance(model, str) and model:
        call.model_served = model
        return True
    return False


def _stream_texts(events: list[bytes]) -> list[str]:
    texts: list[str] = []
    for event in events:
        data = _event_json(event)
        if data is not None:
            texts.extend(_answer_texts(data))
    return texts
