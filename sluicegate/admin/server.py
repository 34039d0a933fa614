"""The admin listener: a small ASGI app over the gateway, served by a second uvicorn server.

It answers `GET /metrics` (while metrics are enabled), `/healthz` and `/readyz` (the gateway's own
answers) and 404 to anything else; nothing on it is audited or counted. It runs in the data
server's event loop and process, and leaves signals to the data server: `run_admin` stops when
told to, after the data server stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from sluicegate.observability.exposition import send_metrics

if TYPE_CHECKING:
    from sluicegate.app import Gateway
    from sluicegate.types import Receive, Scope, Send

_HEALTH = frozenset({"/healthz", "/readyz"})


class AdminApp:
    """The admin plane's ASGI app (`Gateway.admin_app`)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # The gateway's own lifespan runs on the data server; under any server this app has none.
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        gateway = self.gateway
        metrics = gateway.services.metrics
        if path == "/metrics" and metrics is not None and gateway.snapshot.config.observability.metrics.enabled:
            await send_metrics(metrics, scope, send)
        elif path in _HEALTH and scope["method"] in ("GET", "HEAD"):
            await gateway.answer_health(path, send)
        else:
            status = 405 if path in _HEALTH else 404
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the data server it runs beside."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def admin_server(gateway: Gateway) -> uvicorn.Server:
    """The admin listener's server for `gateway` (start it with `start_admin`, stop it with `should_exit`)."""
    config = uvicorn.Config(
        AdminApp(gateway),
        ws="none",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=1,
    )
    return _Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` (raises OSError when the address is taken or not local)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def start_admin(server: uvicorn.Server, sock: socket.socket) -> asyncio.Task[None]:
    """Serve on `sock` as a task of the running loop; return once it listens."""
    task = asyncio.create_task(server.serve(sockets=[sock]), name="sluicegate admin")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the admin listener stopped during its startup")
        await asyncio.sleep(0.005)
    return task
