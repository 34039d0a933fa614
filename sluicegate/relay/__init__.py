"""Provider send and relay: the call goes upstream, the answer comes back to the client.

`Relay.open` sends the call to its provider (credential from the vault, explicit timeouts, no
redirects, the body passed through or translated), gives the call the `Scrubber` of the
credentials it sent, and maps every failure before the first byte to an `UpstreamError`.
`relay_answer` then picks the path of the answer: `answer.py` relays complete answers,
`passthrough.py` streams in the client's own protocol, `stream.py` translated streams and what
every stream shares, `replay.py` a whole answer given where a stream was asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from sluicegate.errors import SluicegateError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from sluicegate.neutral import unsupported
from sluicegate.providers.base import clamp_output, retry_seconds
from sluicegate.relay.answer import relay_json, relay_translated_json
from sluicegate.relay.passthrough import relay_native_stream, relay_stream
from sluicegate.relay.replay import relay_json_stream, stream_or_json
from sluicegate.relay.stream import StreamCut, internal, relay_translated_stream
from sluicegate.scrub import Scrubber

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.pipeline import Endpoint
    from sluicegate.providers.base import Provider
    from sluicegate.types import Send
    from sluicegate.vault import Vault

__all__ = [
    "Relay",
    "StreamCut",
    "relay_answer",
    "relay_json",
    "relay_json_stream",
    "relay_native_stream",
    "relay_stream",
    "relay_translated_json",
    "relay_translated_stream",
]


async def relay_answer(
    call: Call,
    resp: aiohttp.ClientResponse,
    send: Send,
    endpoint: Endpoint,
    client_gone: Callable[[], bool] = lambda: False,
) -> None:
    """Relay the upstream's answer to the client, in the client's dialect, by the path it needs:
    complete or streamed, passed through or translated, or a whole answer where a stream was
    asked. Errors before the first byte are raised; once a stream started they end it in-band."""
    if not call.stream:
        try:
            if call.translated:
                assert endpoint.render_response is not None
                await relay_translated_json(call, resp, send, endpoint.render_response)
            else:
                await relay_json(call, resp, send)
        except SluicegateError:
            raise
        except Exception as exc:
            # Logged here, scrubbed: a failure on an upstream's answer may quote it.
            raise internal(call, exc) from None
        return
    assert call.route is not None
    whole, prefix = await stream_or_json(resp, call.route.provider)
    if whole:
        await relay_json_stream(call, resp, send, endpoint, prefix)
    elif call.translated or call.dialect != "openai":
        # A translated stream, or another protocol's passthrough stream read alongside by its
        # provider's decoder (Anthropic's).
        assert endpoint.stream_encoder is not None
        encoder = endpoint.stream_encoder(call)
        relay = relay_translated_stream if call.translated else relay_native_stream
        await relay(call, resp, send, client_gone, encoder, prefix)
    else:
        await relay_stream(call, resp, send, client_gone, endpoint.render_stream_error, prefix)


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
        #: the scrubber of each set of credentials a call sends (built once per key)
        self._scrubbers: dict[tuple[str | None, ...], Scrubber] = {}

    def scrubber(self, provider: Provider, secret: str | None) -> Scrubber:
        """The `Scrubber` of the secret values a call to `provider` sends upstream with `secret`
        as its key (cached: keys rarely change)."""
        key = (secret,) if not provider.header_refs else provider.secret_values(secret)
        found = self._scrubbers.get(key)
        if found is None:
            if len(self._scrubbers) > 1024:
                self._scrubbers.clear()
            found = self._scrubbers[key] = Scrubber(tuple(s for s in key if s))
        return found

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
        self,
        call: Call,
        to_chat: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        first_byte_s: float | None = None,
    ) -> aiohttp.ClientResponse:
        """Send the call upstream; return the response once its headers say success.

        When the provider does not speak the client's dialect, the body is translated: `to_chat`
        gives the neutral chat body of the client's (None: it already is one). `first_byte_s`
        bounds the wait for the response headers (a target's own timeout per attempt); the
        call's `deadline`, when set, bounds the whole exchange."""
        route = call.route
        assert route is not None
        provider = route.provider
        timeout = self._timeout(provider)
        deadline = call.deadline
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UpstreamTimeout(f"the call ran out of time before provider '{provider.name}' was asked")
            if timeout.total is None or left < timeout.total:
                # (aiohttp's total bounds the headers too: a target's own first-byte time is
                # needed only when it ends sooner)
                timeout = _within(timeout, left)
                if first_byte_s is not None and first_byte_s >= left:
                    first_byte_s = None
        refs = provider.config.api_key
        ref = self._pick_key(provider, refs) if isinstance(refs, list) else refs
        # A cache hit (nearly every call) costs a dict lookup; only a miss awaits the vault.
        secret = (self.vault.cached(ref) or await self.vault.aresolve(ref)) if ref else None
        # Every upstream text the call repeats is scrubbed of what it sends (see `scrub.py`).
        call.scrub = self.scrubber(provider, secret)
        upstream_model = route.upstream_model or call.model_requested or ""
        limit = route.max_tokens
        if provider.native_dialect == call.dialect:
            # Same protocol on both sides: the client's body passes through.
            call.translated = False
            endpoint = call.endpoint
            if limit is None:
                body = provider.prepare_body(call)
            else:
                # The target's cap on what may be asked of it (the client's body stays as sent).
                sent = call.body
                assert sent is not None
                call.body = clamp_output(sent, limit)
                try:
                    body = provider.prepare_body(call)
                finally:
                    call.body = sent
        else:
            call.translated = True
            endpoint = _NEUTRAL_ENDPOINTS.get(call.endpoint, call.endpoint)
            if endpoint not in provider.translated_endpoints:
                raise unsupported(f"The '{call.endpoint}' endpoint", f"{provider.label} (provider '{provider.name}')")
            assert call.body is not None
            chat = call.body if to_chat is None else to_chat(call.body)
            if limit is not None:
                chat = clamp_output(chat, limit)
            body = provider.build_request(call, chat)
        url_text = provider.url_for(endpoint, upstream_model, call.stream)
        url = self._url(url_text)
        name = provider.name
        headers = provider.request_headers(call, secret, url_text, body)
        trace = call.trace
        if trace is not None:
            # The upstream call's span; a `traceparent` naming it goes upstream (never the client's).
            headers = trace.upstream(url, headers)
        call.upstream_started = time.perf_counter()
        try:
            if first_byte_s is None:
                resp = await self.session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
            else:
                async with asyncio.timeout(first_byte_s):
                    resp = await self.session.post(
                        url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                    )
        except TimeoutError:
            call.upstream_done()
            raise UpstreamTimeout(f"provider '{name}' did not answer in time") from None
        except aiohttp.ClientConnectorError:
            call.upstream_done()
            raise UpstreamUnavailable(f"cannot connect to provider '{name}'") from None
        except aiohttp.ClientError as exc:
            call.upstream_done()
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
            raise provider.parse_error(status, raw, retry_seconds(resp.headers.get("retry-after")), call.scrub)
        finally:
            call.upstream_done()
            resp.release()


def _within(timeout: aiohttp.ClientTimeout, total_s: float) -> aiohttp.ClientTimeout:
    """A provider's timeouts with the whole exchange bounded by `total_s` (a call's deadline)."""
    return aiohttp.ClientTimeout(
        total=total_s, connect=timeout.connect, sock_connect=timeout.sock_connect, sock_read=timeout.sock_read
    )


#: the neutral endpoint a translated call of each client endpoint goes to
_NEUTRAL_ENDPOINTS = {"messages": "chat", "responses": "chat"}
