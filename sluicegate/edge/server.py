"""How the gateway is served: uvicorn with the edge protocol and the `server:` settings, and a
drain on SIGTERM."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

import uvicorn

from sluicegate.edge.protocol import edge_protocol

if TYPE_CHECKING:
    from types import FrameType

    from sluicegate.app import Gateway


def server_config(gateway: Gateway, host: str, port: int, app: Any = None, **options: Any) -> uvicorn.Config:
    """The uvicorn config that serves `gateway` on `host:port` (`options` override the defaults);
    `app`: an ASGI app in front of the gateway (the egress door's), served the same way."""
    settings: dict[str, Any] = {
        "host": host,
        "port": port,
        # The edge protocol: httptools parsing with deadlines, header limits and a connection cap.
        "http": edge_protocol(gateway.edge),
        "ws": "none",
        "lifespan": "on",
        # Forwarding headers are read by the gateway, from `server.trusted_proxies` only.
        "proxy_headers": False,
        "timeout_keep_alive": gateway.snapshot.server.keep_alive_s,
        "access_log": False,
        "log_config": None,
        "server_header": False,
        "timeout_graceful_shutdown": 30,
    }
    settings.update(options)
    return uvicorn.Config(gateway if app is None else app, **settings)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which on SIGTERM first drains: `/readyz` answers 503 `draining` for
    `server.drain_s` while calls are still taken, then it stops as uvicorn does (no new
    connection, calls in flight finished). SIGINT, or a second signal, stops at once."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway
        #: `time.monotonic()` when the drain ends (None: not draining)
        self.drain_ends: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        gateway = self.gateway
        gateway.draining = True
        drain_s = gateway.snapshot.server.drain_s
        if sig == signal.SIGTERM and drain_s > 0 and self.drain_ends is None and not self.should_exit:
            self.drain_ends = time.monotonic() + drain_s
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        ends = self.drain_ends
        if ends is not None and not self.should_exit and time.monotonic() >= ends:
            super().handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)
