"""Intercept: the proxy terminates TLS for a host with a leaf from the organisation's CA, then
serves the decrypted HTTP with the gateway's own protocol and app, so the call takes the one
policy path (identity, access, limits, guards, cache, routing, audit) as if sent to the gateway.

Per request, `InterceptApp` checks the `Host` header against the `CONNECT` target (421 when it
differs), maps the provider's path to the gateway's (`strip_prefix`), and settles who calls: the
gateway key given as proxy password; else the key the app sends where it would send its provider
key, when it is a gateway key; else the consumer of the client's source network. A key the app
sends that is none of these is refused by the identity stage (401), and never leaves the gateway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from uvicorn.server import ServerState

from sluicegate.edge.protocol import EdgeProtocol
from sluicegate.edge.server import server_config
from sluicegate.egress.auth import find_key
from sluicegate.egress.context import EGRESS_EXTENSION, EgressContext
from sluicegate.egress.hosts import host_of_header
from sluicegate.stages.identity import presented_key

if TYPE_CHECKING:
    from sluicegate.app import Gateway
    from sluicegate.types import Receive, Scope, Send

log = logging.getLogger("sluicegate.egress")

#: request headers that carry a credential for the provider: replaced or dropped when the door
#: identifies the caller itself
_CREDENTIALS = (b"authorization", b"x-api-key", b"api-key")


class InterceptProtocol(EdgeProtocol):
    """The edge protocol for one intercepted connection: each request's scope carries its
    `EgressContext`; `on_release` runs when the connection ends."""

    egress: EgressContext
    on_release: Callable[[], None] | None = None

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        scope: Any = self.scope
        extensions = scope.setdefault("extensions", {})
        extensions[EGRESS_EXTENSION] = self.egress

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        release, self.on_release = self.on_release, None
        if release is not None:
            release()


class _Held(asyncio.Protocol):
    """Holds what arrives between the TLS handshake and the hand-over to the HTTP protocol."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (exc,)

    def hand_over(self, protocol: asyncio.Protocol) -> None:
        for chunk in self.data:
            protocol.data_received(chunk)
        if self.eof:
            protocol.eof_received()
        if self.lost is not None:
            protocol.connection_lost(self.lost[0])


class Interceptor:
    """Serves intercepted connections with the gateway's protocol and `InterceptApp`."""

    def __init__(self, gateway: Gateway, handshake_timeout_s: float = 10.0) -> None:
        self.gateway = gateway
        self.handshake_timeout_s = handshake_timeout_s
        config = server_config(gateway, "127.0.0.1", 0, app=InterceptApp(gateway), lifespan="off")
        config.load()
        self.config = config
        #: the intercepted connections (uvicorn's per-server state, of this door's own)
        self.state = ServerState()
        self.protocol = type("InterceptProtocol", (InterceptProtocol,), {"edge": gateway.edge})

    async def serve(
        self,
        transport: asyncio.Transport,
        context: ssl.SSLContext,
        egress: EgressContext,
        on_release: Callable[[], None],
    ) -> None:
        """Complete the TLS handshake on the client's transport and serve it; `on_release` runs once
        the connection ends (at once when the handshake fails)."""
        loop = asyncio.get_running_loop()
        held = _Held()
        try:
            tls = await loop.start_tls(
                transport, held, context, server_side=True, ssl_handshake_timeout=self.handshake_timeout_s
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            # A client that does not trust the CA, or whose SNI named another host.
            log.info("egress: TLS with a client for %s failed (%s)", egress.host, type(exc).__name__)
            transport.abort()
            on_release()
            return
        if tls is None:  # the client went away during the handshake
            on_release()
            return
        protocol = self.protocol(self.config, self.state, {}, loop)
        protocol.egress = egress
        protocol.on_release = on_release
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        held.hand_over(protocol)

    def close(self) -> None:
        """Close every intercepted connection (at shutdown)."""
        for connection in list(self.state.connections):
            connection.shutdown()


class InterceptApp:
    """The ASGI app of intercepted requests: checks, maps and identifies (module docstring), then
    hands the request to the gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        egress: EgressContext = scope["extensions"][EGRESS_EXTENSION]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        hosts = [value for name, value in headers if name == b"host"]
        if len(hosts) != 1 or host_of_header(hosts[0]) != egress.host:
            await _plain(send, 421, f"This connection is for {egress.host}; the request names another host")
            return
        path: str = scope["path"]
        prefix = egress.strip_prefix
        if prefix and path.startswith(prefix + "/"):
            path = path[len(prefix) :]
        headers, egress = await self._identify(headers, egress)
        extensions = {**scope["extensions"], EGRESS_EXTENSION: egress}
        inner = {**scope, "path": path, "raw_path": path.encode(), "headers": headers, "extensions": extensions}
        await self.gateway(inner, receive, send)

    async def _identify(
        self, headers: list[tuple[bytes, bytes]], egress: EgressContext
    ) -> tuple[list[tuple[bytes, bytes]], EgressContext]:
        """The request's headers and context once the caller is settled (module docstring)."""
        if egress.proxy_key is not None:
            kept = [(n, v) for n, v in headers if n not in _CREDENTIALS]
            kept.append((b"authorization", b"Bearer " + egress.proxy_key.encode()))
            return kept, dataclasses.replace(egress, network_consumer=None)
        sent = presented_key(dict(headers))
        if egress.network_consumer is not None:
            gateway = self.gateway
            if sent is None or await find_key(gateway.keys, gateway.snapshot, sent) is None:
                # The app's own provider key (or none): the source network names the caller.
                return [(n, v) for n, v in headers if n not in _CREDENTIALS], egress
        return headers, dataclasses.replace(egress, network_consumer=None)


async def _plain(send: Send, status: int, message: str) -> None:
    body = message.encode() + b"\n"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
