"""How the gateway is served: uvicorn with the edge protocol and the `server:` settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import uvicorn

from sluicegate.edge.protocol import edge_protocol

if TYPE_CHECKING:
    from sluicegate.app import Gateway


def server_config(gateway: Gateway, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn config that serves `gateway` on `host:port` (`options` override the defaults)."""
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
    return uvicorn.Config(gateway, **settings)
