"""A tunnel: two transports joined byte for byte, with flow control both ways and an idle timeout.

Each side is a `Half` protocol writing what it reads into the other side's transport; a side that
cannot keep up pauses the other's reading. A half-close is passed on; the tunnel closes once both
sides ended, either side is lost, or no byte moved for `idle_timeout_s`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast


class Half(asyncio.Protocol):
    """One side of a tunnel."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.ended = False
        #: what this side read before its peer was joined (at most what one read brings, as
        #: reading pauses below) and is written once it is
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not `asyncio.Transport` subclasses, but have its methods)
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.tunnel.last_active = self.tunnel.loop.time()
        peer = self.peer
        if peer is None or peer.transport is None:
            # The upstream spoke before the client's side was joined (a server-first protocol).
            self.early.append(data)
        elif not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        peer = self.peer
        if peer is None or peer.ended or peer.transport is None or not peer.transport.can_write_eof():
            self.tunnel.close()
            return False
        peer.transport.write_eof()
        return True  # keep the transport: the other direction may still carry the answer

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()


class Tunnel:
    """Joins a client and an upstream; `on_close` runs once when it ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout_s: float, on_close: Callable[[], None]) -> None:
        self.loop = loop
        self.idle_timeout_s = idle_timeout_s
        self.on_close: Callable[[], None] | None = on_close
        self.client = Half(self)
        self.upstream = Half(self)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.last_active = loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def start(self, client: asyncio.Transport, first: bytes = b"") -> None:
        """Take over the client's transport (the upstream's is already this tunnel's); `first`:
        bytes the client sent before the tunnel was up."""
        if self.closed:  # the upstream went away already
            client.close()
            return
        client.set_protocol(self.client)
        self.client.connection_made(client)
        self.join(client)
        if first:
            self.client.data_received(first)
        client.resume_reading()
        self.start_timer()

    def join(self, client: asyncio.Transport) -> None:
        """Give the client's side its transport and the upstream's early bytes."""
        self.client.transport = client
        if self.closed:  # the upstream went away already
            client.close()
            return
        early, self.upstream.early = self.upstream.early, []
        for data in early:
            client.write(data)

    def start_timer(self) -> None:
        """Start watching for idleness (`start` does; a caller that joins the sides itself calls it)."""
        self.last_active = self.loop.time()
        self._timer = self.loop.call_later(self.idle_timeout_s, self._check_idle)

    def _check_idle(self) -> None:
        idle = self.loop.time() - self.last_active
        if idle >= self.idle_timeout_s:
            self.close()
            return
        self._timer = self.loop.call_later(self.idle_timeout_s - idle, self._check_idle)

    def close(self) -> None:
        """End both sides (idempotent)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for half in (self.client, self.upstream):
            if half.transport is not None and not half.transport.is_closing():
                half.transport.close()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()
