"""The gateway's HTTP/1.1 server protocol: uvicorn's httptools protocol with the bounds a proxy needs.

uvicorn parses with httptools but sets no deadline on a request's head or body, no limit on the
size or count of its headers and no connection cap; it waits without end on a client that stops
reading, and sends chunked bodies to HTTP/1.0 clients, which cannot read them. `EdgeProtocol`
adds, from the live `server:` settings (`EdgeState`, swapped on config reload):

- a header deadline, from the connection's opening or the request's first byte (408; a silent
  close when no byte came), armed only when a head spans several reads;
- a bound on the head's bytes, counted as they arrive, and on its header lines (431);
- a connection cap: a connection past it is answered 503 once its head is read;
- a body deadline, from the end of the head, armed only when the body did not come with it
  (the gateway then answers 408; a body that goes on after an early answer is cut off);
- a write deadline: while the transport's buffer stays full (the client takes nothing), at most
  `write_timeout_s`, and never past the call's deadline; then the connection is aborted;
- close-delimited bodies for HTTP/1.0 clients (`Http10Cycle`);
- a per-request handle (`EdgeRequest`, in `scope["extensions"]["sluicegate.edge"]`) through which
  the gateway hears of a disconnect without a task of its own, learns of an expired body
  deadline, and bounds the writes by the call's deadline.

It builds on uvicorn internals (`HttpToolsProtocol`, `RequestResponseCycle`): pyproject bounds the
uvicorn versions, and `tests/edge/test_uvicorn_internals.py` fails loudly when they change.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from sluicegate.dialects import anthropic as anthropic_dialect
from sluicegate.dialects import openai as openai_dialect
from sluicegate.errors import BadRequest, RequestTimeout, ServiceUnavailable, SluicegateError

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

    from sluicegate.config.model import ServerConfig

log = logging.getLogger("sluicegate.edge")

#: the key of the per-request handle in the ASGI scope's `extensions`
EXTENSION = "sluicegate.edge"
#: after a refusal, the client's further bytes are read and dropped this long, so that it can read
#: the answer before the connection closes (closing with unread bytes would reset it)
LINGER_S = 2.0


class EdgeState:
    """The `server:` settings the protocol reads; the gateway swaps them on config reload."""

    __slots__ = ("server",)

    def __init__(self, server: ServerConfig) -> None:
        self.server = server


class _Refused(Exception):
    """Raised in a parser callback: stop parsing a request the edge refuses."""


class EdgeRequest:
    """The gateway's handle on one request of an `EdgeProtocol` connection."""

    __slots__ = ("body_expired", "deadline", "on_gone", "stalled")

    def __init__(self) -> None:
        #: loop time past which no write waits (the call's total deadline); None: the write deadline only
        self.deadline: float | None = None
        #: the client stopped reading: the connection was aborted at the write deadline
        self.stalled = False
        #: the body deadline (seconds) that passed before the body arrived; None: not passed
        self.body_expired: float | None = None
        #: called (once) if the client goes away before the response is complete; None: nobody listens
        self.on_gone: Callable[[], None] | None = None

    def gone(self) -> None:
        """The connection was lost before the response was complete (called by the protocol)."""
        callback = self.on_gone
        self.on_gone = None
        if callback is not None:
            callback()


class Http10Cycle(RequestResponseCycle):
    """uvicorn's request cycle for an HTTP/1.0 client: a response without a length is written as
    is and ends when the connection closes, as HTTP/1.0 has no chunked encoding. The protocol
    gives an HTTP/1.0 request's cycle this class before the app runs (uvicorn closes HTTP/1.0
    connections after one response)."""

    close_delimited = False

    async def send(self, message: ASGISendEvent) -> None:
        if self.close_delimited:
            self._write_close_delimited(message)
            return
        if not self.response_started and message["type"] == "http.response.start":
            message = self._delimit_by_close(message)
        await super().send(message)

    def _delimit_by_close(self, message: ASGISendEvent) -> ASGISendEvent:
        headers = cast("dict[str, Any]", message).get("headers") or ()
        names = {name.lower() for name, _ in headers}
        if b"content-length" in names or b"transfer-encoding" in names:
            return message
        self.chunked_encoding = False  # uvicorn then writes the head without `transfer-encoding`
        self.close_delimited = True
        self.keep_alive = False
        if b"connection" in names:
            return message
        return cast("ASGISendEvent", {**message, "headers": [*headers, (b"connection", b"close")]})

    def _write_close_delimited(self, message: ASGISendEvent) -> None:
        if self.disconnected or self.response_complete:
            return
        if message["type"] != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")
        body = message.get("body", b"")
        if body and self.scope["method"] != "HEAD":
            self.transport.write(body)
        if not message.get("more_body", False):
            self.response_complete = True
            self.message_event.set()
            self.transport.close()
            self.on_response()


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines, limits and a connection cap (module docstring).

    Bound to an `EdgeState` by `edge_protocol`; uvicorn makes one per connection."""

    edge: ClassVar[EdgeState]
    # Slots: a kept-alive connection is one of thousands; they add no dictionary entries.
    __slots__ = (
        "_body_timer",
        "_head_at",
        "_head_begun",
        "_head_bytes",
        "_head_timer",
        "_lingering",
        "_over_cap",
        "_read_len",
        "_refusal",
        "_request",
        "_write_timer",
    )

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.edge.server.keep_alive_s  # type: ignore[assignment]
        #: loop time the current head's clock started; None between requests
        self._head_at: float | None = None
        #: a byte of the current head arrived (the head is partial until its end)
        self._head_begun = False
        #: bytes of the current head in earlier reads, and the size of the current read
        self._head_bytes = 0
        self._read_len = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        #: the handle of the latest request
        self._request: EdgeRequest | None = None
        self._over_cap = False
        self._refusal: SluicegateError | None = None
        #: after a refusal: the client's bytes are dropped until the connection closes
        self._lingering = False

    # -- connection ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        server = self.edge.server
        self._over_cap = len(self.connections) > server.max_connections
        # The first head must arrive within the deadline even if no byte ever comes.
        self._head_at = self.loop.time()
        self._head_timer = self.loop.call_at(self._head_at + server.header_timeout_s, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        cycle = self.cycle
        super().connection_lost(exc)
        request = self._request
        if request is not None and cycle is not None and cycle.disconnected:
            request.gone()

    def pause_writing(self) -> None:
        super().pause_writing()
        # The client takes nothing more for now: it has until the write deadline to start again.
        if self._write_timer is None:
            wait = self.edge.server.write_timeout_s
            request = self._request
            if request is not None and request.deadline is not None:
                wait = min(wait, request.deadline - self.loop.time())
            self._write_timer = self.loop.call_later(max(wait, 0.0), self._write_expired, wait)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        self._unset_keepalive_if_required()
        self._read_len = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            refusal = self._refusal
            if refusal is not None:
                self._refuse(refusal)
            else:
                log.debug("invalid HTTP request from %s", self.client)
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            # No protocol upgrade is served (no WebSockets, no h2c): the request stays HTTP/1.1.
            log.debug("ignored a protocol upgrade request from %s", self.client)
        if self._head_begun:
            # The head goes on in a later read: bound what the parser may buffer, and its time.
            server = self.edge.server
            self._head_bytes += len(data)
            if self._head_bytes > server.max_header_bytes:
                self._refuse(_too_large(server))
            elif self._head_timer is None and self._head_at is not None:
                self._head_timer = self.loop.call_at(self._head_at + server.header_timeout_s, self._head_expired)
        elif self._body_timer is None:
            cycle = self.cycle
            if cycle is not None and cycle.more_body and not cycle.response_complete:
                self._body_timer = self.loop.call_later(
                    self.edge.server.body_timeout_s, self._body_expired, cycle, self._request
                )

    # -- parser callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_at is None:  # a later request on a kept-alive connection
            self._head_at = self.loop.time()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        server = self.edge.server
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        head_bytes = self._head_bytes
        self._head_at = None
        self._head_begun = False
        self._head_bytes = 0
        # Within one read no larger than the limit, the head cannot be larger: count only otherwise.
        if head_bytes + self._read_len > server.max_header_bytes and _head_size(self.url, self.headers) > (
            server.max_header_bytes
        ):
            self._refusal = _too_large(server)
        elif len(self.headers) > server.max_headers:
            self._refusal = BadRequest(
                f"The request has more than {server.max_headers} header lines",
                code="request_header_fields_too_large",
                status=431,
            )
        elif self._over_cap:
            self._refusal = ServiceUnavailable(
                "The gateway has too many open connections; retry shortly", code="too_many_connections"
            )
        if self._refusal is not None:
            raise _Refused
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not previous:
            self._adopt(cycle)

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if cycle is self.cycle and cycle is not None and cycle.response_complete and not cycle.more_body:
            # The connection is idle until its next request: keep nothing of the last one (a
            # kept-alive connection then costs its transport, parser and timer only).
            self.cycle = None  # type: ignore[assignment]
            self.scope = None  # type: ignore[assignment]
            self.headers = None  # type: ignore[assignment]
            self._request = None

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.pipeline and self.timeout_keep_alive_task is None:
            # The body ended after its answer (an early refusal): the connection is idle from now,
            # and its reads cancelled the keep-alive timer uvicorn set at the answer.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # -- deadlines and refusals ---------------------------------------------------------------------

    def _adopt(self, cycle: RequestResponseCycle) -> None:
        """Give a new request its handle, in its scope; an HTTP/1.0 request its own cycle class."""
        request = self._request = EdgeRequest()
        scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
        scope["extensions"] = {EXTENSION: request}
        if scope["http_version"] == "1.0":
            # Changing an object's class costs CPython's attribute caches: only HTTP/1.0 pays it.
            cycle.__class__ = Http10Cycle

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._head_at is None or self.transport.is_closing():
            return
        if not self._head_begun:
            # The connection never sent a byte of a request: nothing to answer.
            self.transport.close()
            return
        timeout = self.edge.server.header_timeout_s
        self._refuse(RequestTimeout(f"The request headers did not arrive within {timeout:g} s"))

    def _body_expired(self, cycle: RequestResponseCycle, request: EdgeRequest | None) -> None:
        self._body_timer = None
        if not cycle.more_body:
            return
        if cycle.response_complete or request is None:
            # Answered before its body came (an early refusal), and the body still drips: close.
            self.transport.close()
            return
        # The gateway, waiting for the body, answers 408; the rest of the body may still come, so
        # the connection ends with that answer.
        request.body_expired = self.edge.server.body_timeout_s
        cycle.keep_alive = False
        cycle.message_event.set()

    def _write_expired(self, waited: float) -> None:
        self._write_timer = None
        if self.transport.is_closing():
            return
        if self._request is not None:
            self._request.stalled = True
        log.info("a client took nothing for %.1f s; its connection is closed", waited)
        self.transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._write_timer = None

    def _refuse(self, error: SluicegateError) -> None:
        """Answer `error` in the client's dialect and close, without running the app."""
        self._refusal = None
        self._cancel_timers()
        self._head_at = None
        self._head_begun = False
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A response to an earlier request is still being written (pipelining): cut it short.
            self.transport.close()
            return
        log.debug("refused a request from %s: %s", self.client, error.code)
        anthropic = b"/messages" in (self.url or b"") or any(n == b"anthropic-version" for n, _ in self.headers or ())
        body = (anthropic_dialect.error_body if anthropic else openai_dialect.error_body)(error)
        head = [f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        # Half-close and drop what the client still sends, so it reads the answer before the close.
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self._linger_done)

    def _linger_done(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """Bytes of a request head, about as sent (request line, names, values, separators)."""
    return len(url) + 16 + sum(len(name) + len(value) + 4 for name, value in headers)


def _too_large(server: ServerConfig) -> BadRequest:
    return BadRequest(
        f"The request line and headers are larger than {server.max_header_bytes} bytes",
        code="request_header_fields_too_large",
        status=431,
    )


def edge_protocol(state: EdgeState) -> type[EdgeProtocol]:
    """The protocol class to give uvicorn (`uvicorn.Config(http=...)`), reading `state`."""
    return type("EdgeProtocol", (EdgeProtocol,), {"edge": state})
