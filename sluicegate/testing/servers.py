"""Run an ASGI app (the fake upstream, the gateway, any other) under uvicorn for tests, benchmarks
and demo mode: in a daemon thread (`serve_in_thread`), as a task (`start_server`) or in the
foreground (`run_server`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from sluicegate.testing.wire import ASGIApp


def _config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",
        http="auto",
        ws="none",
        lifespan="auto",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, config: uvicorn.Config | None = None
) -> Iterator[str]:
    """Run an ASGI app under uvicorn (uvloop + httptools when available) in a daemon thread; yield its base URL.

    `config` replaces the default uvicorn config (its host and port are not used: the socket is bound here)."""
    sock = _bind(host, port)
    url = _base_url(sock)
    server = uvicorn.Server(config or _config(app, host, port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn {url}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10.0
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the server for {url} exited during startup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server for {url} did not start within 10 s")
            time.sleep(0.002)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=5.0)
        sock.close()


async def start_server(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0
) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Start an ASGI app under uvicorn as a task of the running loop; return once it listens (stop: should_exit)."""
    sock = _bind(host, port)
    url = _base_url(sock)
    server = uvicorn.Server(_config(app, host, port))
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn {url}")
    while not server.started:
        if task.done():
            sock.close()
            task.result()
            raise RuntimeError(f"the server for {url} exited during startup")
        await asyncio.sleep(0.002)
    return server, task, url


async def run_server(app: ASGIApp, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve an ASGI app with uvicorn in the current event loop until it is told to exit (signal or should_exit)."""
    await uvicorn.Server(_config(app, host, port)).serve()
