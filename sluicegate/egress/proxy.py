"""The egress listener: an HTTP forward proxy for `CONNECT` tunnels and plain `http://` requests.

A connection's head is parsed with h11 within `header_timeout_s` and `max_header_bytes`. The
client is admitted from `source_networks` or with `Proxy-Authorization: Basic` carrying a
gateway key as the password (407 otherwise). Its destination is then decided (`hosts`):

- `block`: 403, naming the approved gateway (also in the status line, which SDKs show); audited
  as `shadow_ai_blocked`;
- `deny`: 403, audited as `egress_denied`;
- `intercept` (`CONNECT` only): 200, then TLS with the CA's leaf for the host, and the gateway's
  own protocol (`intercept`); a plain `http://` request to such a host is blocked;
- `allow`: the host is resolved (or taken from `resolve`), refused if any address is private and
  not allowed, connected to within `connect_timeout_s` (502 otherwise), audited as
  `egress_allowed`, and joined to the client (`tunnel`): bytes untouched, closed when idle.
  A plain request is sent on in origin form with `Connection: close`, its body framed again.

Proxy-level refusals are plain text with a short body, and close the connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import h11

from sluicegate.egress.auth import basic_credentials, find_key
from sluicegate.egress.ca import CAInvalid
from sluicegate.egress.context import EgressContext
from sluicegate.egress.events import (
    EGRESS_ALLOWED,
    EGRESS_DENIED,
    EGRESS_UNAUTHORIZED,
    EGRESS_UNREACHABLE,
    SHADOW_AI_BLOCKED,
    Caller,
    door_event,
)
from sluicegate.egress.forward import Forward
from sluicegate.egress.hosts import Destination, host_of_header, normalise
from sluicegate.egress.policy import EgressPolicy, parse_address
from sluicegate.egress.tunnel import Tunnel
from sluicegate.errors import SluicegateError

if TYPE_CHECKING:
    from sluicegate.egress.door import EgressDoor

log = logging.getLogger("sluicegate.egress")

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class ProxyConnection(asyncio.Protocol):
    """One client connection, until its head is decided and it is refused or handed over."""

    def __init__(self, door: EgressDoor) -> None:
        self.door = door
        self.transport: asyncio.Transport | None = None
        self.client_ip: str | None = None
        self.parser: h11.Connection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        #: a plain request being forwarded: its upstream serialiser and tunnel
        self.forward: Forward | None = None
        self.released = False
        self.handed_over = False
        #: handed to the gateway's protocol (TLS ended): stopped gracefully, not aborted
        self.intercepted = False
        #: bytes read before the head was complete (bounded by `max_header_bytes`)
        self.head_bytes = 0

    # -- connection ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not `asyncio.Transport` subclasses, but have its methods)
        self.transport = cast("asyncio.Transport", transport)
        door = self.door
        door.open += 1
        door.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else None
        config = door.config
        if not door.gateway.started:
            self.refuse(503, "The gateway is starting; retry shortly")
            return
        if door.open > config.max_connections:
            self.refuse(503, "The egress proxy has too many open connections; retry shortly")
            return
        self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        self.timer = asyncio.get_running_loop().call_later(config.header_timeout_s, self._head_expired)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            return
        parser.receive_data(data)
        if self.forward is not None:
            self.forward.pump()
            return
        if self.task is not None:
            return  # deciding: reading is paused; what came with the head waits in the parser
        self.head_bytes += len(data)
        if self.head_bytes > self.door.config.max_header_bytes:
            self.refuse(431, "The proxy request's head is too large")
            return
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            self.refuse(exc.error_status_hint if exc.error_status_hint in _REASONS else 400, "Invalid proxy request")
            return
        if event is h11.NEED_DATA:
            return
        if not isinstance(event, h11.Request):
            self.refuse(400, "Invalid proxy request")
            return
        self._cancel_timer()
        self.transport.pause_reading()  # type: ignore[union-attr]
        self.task = asyncio.ensure_future(self._handle(event))

    def eof_received(self) -> bool:
        if self.forward is not None and self.parser is not None:
            self.parser.receive_data(b"")
            self.forward.pump()
            return True
        return False

    def pause_writing(self) -> None:
        if self.forward is not None:
            self.forward.tunnel.client.pause_writing()

    def resume_writing(self) -> None:
        if self.forward is not None:
            self.forward.tunnel.client.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.forward is not None:
            self.forward.tunnel.close()
        if self.task is not None and not self.task.done() and not self.handed_over:
            self.task.cancel()
        self.release()

    def release(self) -> None:
        """The connection ended (here, or in the tunnel or intercept that took it over)."""
        if self.released:
            return
        self.released = True
        self.door.open -= 1
        self.door.connections.discard(self)

    def abort(self) -> None:
        """Close at once (shutdown)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _head_expired(self) -> None:
        self.timer = None
        if self.task is None and self.transport is not None and not self.transport.is_closing():
            self.refuse(408, f"The proxy request did not arrive within {self.door.config.header_timeout_s:g} s")

    def refuse(self, status: int, message: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        """Answer a plain-text refusal and close; the message is also the status line's phrase."""
        self._cancel_timer()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        phrase = "".join(c if " " <= c <= "~" else "?" for c in message)[:300]
        body = (message + "\n").encode()
        lines = [f"HTTP/1.1 {status} {phrase or _REASONS.get(status, 'Error')}"]
        lines += [f"{name}: {value}" for name, value in extra]
        lines += ["content-type: text/plain; charset=utf-8", f"content-length: {len(body)}", "connection: close"]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        transport.close()

    # -- the decision -------------------------------------------------------------------------------

    async def _handle(self, request: h11.Request) -> None:
        try:
            await self._decide(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("egress: a proxy request failed")
            self.refuse(502, "The egress proxy failed to handle the request")

    async def _decide(self, request: h11.Request) -> None:
        door = self.door
        gateway = door.gateway
        policy = door.policy()
        config = policy.config
        caller = Caller(self.client_ip)
        credentials = next((v for n, v in request.headers if n == b"proxy-authorization"), None)
        if credentials is not None:
            basic = basic_credentials(credentials)
            record = await find_key(gateway.keys, gateway.snapshot, basic[1]) if basic is not None else None
            if basic is None or record is None:
                self._unauthorized(caller, "invalid proxy credentials")
                return
            caller.user, caller.key = basic[0][:200], basic[1]
            caller.consumer, caller.key_id = record.consumer, record.id
        elif config.require_auth or not policy.from_sources(parse_address(self.client_ip)):
            self._unauthorized(caller, "no proxy credentials")
            return
        if request.method == b"CONNECT":
            await self._connect(request, policy, caller)
        else:
            await self._plain(request, policy, caller)

    def _unauthorized(self, caller: Caller, reason: str) -> None:
        audited = self.door.gateway.services.auth_failures.admit(caller.client_ip)
        event = door_event(caller, None, status=407, decision="blocked", outcome=EGRESS_UNAUTHORIZED, reason=reason)
        self.door.record(event, audited)
        self.refuse(
            407,
            "Proxy authentication required: a gateway API key as the proxy password",
            (("proxy-authenticate", 'Basic realm="sluicegate egress"'),),
        )

    def _refuse_destination(self, caller: Caller, host: str, destination: Destination, port: int, plain: bool) -> None:
        """Answer and audit a `block` or `deny` (or an intercept host asked for in plain HTTP)."""
        config = self.door.config
        gateway_url = config.gateway_url
        if destination.action == "deny":
            message = f"Access to {host} is denied by the egress policy"
            outcome, rule = EGRESS_DENIED, destination.rule
        else:
            service = destination.ai.service if destination.ai is not None else "AI service"
            how = f"use the approved gateway at {gateway_url}" if gateway_url else "use the organisation's AI gateway"
            what = "over plain HTTP" if plain and destination.action == "intercept" else "directly"
            message = f"{service} at {host} is blocked {what}: {how}"
            outcome, rule = SHADOW_AI_BLOCKED, destination.rule
        who = (
            f"{caller.client_ip} ({caller.consumer}, proxy user {caller.user!r})"
            if caller.consumer
            else caller.client_ip
        )
        log.info("egress: %s from %s to %s:%d (%s)", outcome, who, host, port, rule)
        self.door.record(
            door_event(caller, host, status=403, decision="blocked", outcome=outcome, reason=message, rule=rule)
        )
        self.refuse(403, message)

    async def _connect(self, request: h11.Request, policy: EgressPolicy, caller: Caller) -> None:
        authority = request.target.decode("latin-1")
        name, sep, port_text = authority.rpartition(":")
        host = normalise(name) if sep else None
        if host is None or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            self.refuse(400, "CONNECT needs a host:port target")
            return
        port = int(port_text)
        if port not in policy.config.connect_ports:
            self._refuse_port(caller, host, port)
            return
        destination = policy.hosts.decide(host)
        if destination.action in ("block", "deny"):
            self._refuse_destination(caller, host, destination, port, plain=False)
            return
        assert self.parser is not None and self.transport is not None
        try:
            self.parser.next_event()  # the CONNECT's end (it has no body): the parser waits for our answer
        except h11.RemoteProtocolError:
            self.refuse(400, "Invalid proxy request")
            return
        early, _ = self.parser.trailing_data
        if destination.action == "intercept":
            await self._intercept(host, destination, policy, caller, early)
            return
        tunnel = await self._open(host, port, policy, caller)
        if tunnel is None:
            return
        self._audit_allowed(caller, host, port, destination)
        self.handed_over = True
        self.transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        tunnel.start(self.transport, early)

    def _refuse_port(self, caller: Caller, host: str, port: int) -> None:
        message = f"Port {port} is not open through the egress proxy"
        self.door.record(
            door_event(caller, host, status=403, decision="blocked", outcome=EGRESS_DENIED, reason=message)
        )
        self.refuse(403, message)

    async def _intercept(
        self,
        host: str,
        destination: Destination,
        policy: EgressPolicy,
        caller: Caller,
        early: bytes,
    ) -> None:
        assert self.transport is not None
        if early:
            # The TLS handshake must begin after our answer; bytes before it are not TLS we can take.
            self.refuse(400, "Data sent before the tunnel was established")
            return
        try:
            context = await self.door.leaves().context(host)
        except (CAInvalid, SluicegateError) as exc:
            log.error("egress: cannot issue a certificate for %s: %s", host, exc)
            self.refuse(502, "The egress proxy cannot intercept this host now")
            return
        mapped = policy.network_consumer(parse_address(self.client_ip))
        egress = EgressContext(
            host=host,
            strip_prefix=destination.ai.strip_prefix if destination.ai is not None else "",
            proxy_key=caller.key,
            network_consumer=mapped[0] if mapped else None,
            network=mapped[1] if mapped else None,
        )
        self.handed_over = self.intercepted = True
        self.transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await self.door.interceptor.serve(self.transport, context, egress, self.release)

    async def _open(self, host: str, port: int, policy: EgressPolicy, caller: Caller) -> Tunnel | None:
        """Resolve and connect to an allowed destination; a joined-to-be tunnel, or None (answered)."""
        loop = asyncio.get_running_loop()
        config = policy.config
        override = policy.resolve.get(host)
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                if override is not None:
                    # Configured: trusted as it is, private or not.
                    candidates = [(override.address, override.port)]
                else:
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                    candidates = [(str(info[4][0]), port) for info in infos]
                    for address, _ in candidates:
                        parsed = parse_address(address)
                        if parsed is None or not policy.may_reach(parsed):
                            self._refuse_private(caller, host)
                            return None
                tunnel = Tunnel(loop, config.idle_timeout_s, self.release)
                error: Exception | None = None
                for address, target_port in candidates:
                    try:
                        await loop.create_connection(lambda: tunnel.upstream, address, target_port)
                        return tunnel
                    except OSError as exc:
                        error = exc
                raise error or OSError("no address")
        except (OSError, TimeoutError) as exc:
            reason = f"cannot reach {host}:{port} ({type(exc).__name__})"
            self.door.record(
                door_event(caller, host, status=502, decision="failed", outcome=EGRESS_UNREACHABLE, reason=reason)
            )
            self.refuse(502, f"The egress proxy cannot reach {host}:{port}")
            return None

    def _refuse_private(self, caller: Caller, host: str) -> None:
        message = f"{host} resolves to a private address; the egress policy does not allow it"
        event = door_event(caller, host, status=403, decision="blocked", outcome=EGRESS_DENIED, reason=message)
        event.rule = "egress.private_networks"
        self.door.record(event)
        self.refuse(403, message)

    def _audit_allowed(self, caller: Caller, host: str, port: int, destination: Destination) -> None:
        reason = f"tunnel to port {port}"
        event = door_event(caller, host, status=200, decision="allowed", outcome=EGRESS_ALLOWED, reason=reason)
        event.rule = destination.rule
        self.door.record(event)

    # -- plain http:// requests ---------------------------------------------------------------------

    async def _plain(self, request: h11.Request, policy: EgressPolicy, caller: Caller) -> None:
        try:
            url = urlsplit(request.target.decode("latin-1"))
            port = url.port or 80
        except ValueError:
            url, port = None, 0
        host = normalise(url.hostname or "") if url is not None else None
        if url is None or url.scheme != "http" or host is None:
            self.refuse(400, "A forward proxy request names an absolute http:// URL (use CONNECT for https)")
            return
        hosts = [v for n, v in request.headers if n == b"host"]
        if len(hosts) != 1 or host_of_header(hosts[0]) != host:
            self.refuse(400, "The Host header does not name the request's host")
            return
        names = [n for n, _ in request.headers]
        if b"transfer-encoding" in names and b"content-length" in names:
            # Two framings: parsers along the way could disagree on where the body ends.
            self.refuse(400, "A request must not carry both Content-Length and Transfer-Encoding")
            return
        if port not in policy.config.http_ports:
            self._refuse_port(caller, host, port)
            return
        destination = policy.hosts.decide(host)
        if destination.action != "allow":
            self._refuse_destination(caller, host, destination, port, plain=True)
            return
        tunnel = await self._open(host, port, policy, caller)
        if tunnel is None:
            return
        self._audit_allowed(caller, host, port, destination)
        assert self.transport is not None and self.parser is not None
        forward = self.forward = Forward(self.parser, tunnel, self.transport)
        self.handed_over = True
        forward.send_head(request, url)
        forward.pump()
        self.transport.resume_reading()
