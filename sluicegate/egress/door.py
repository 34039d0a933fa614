"""The egress door of one gateway process: the proxy's listener, its policy compiled once per
config (swapped on reload), the leaf cache of its CA, and the connections it holds."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from sluicegate.egress.ca import LeafCache
from sluicegate.egress.intercept import Interceptor
from sluicegate.egress.policy import EgressPolicy
from sluicegate.egress.proxy import ProxyConnection

if TYPE_CHECKING:
    from sluicegate.app import Gateway
    from sluicegate.audit.events import AuditEvent
    from sluicegate.egress.config import EgressConfig

log = logging.getLogger("sluicegate.egress")
#: how long intercepted calls in flight may take to finish when the gateway stops
STOP_GRACE_S = 30.0


class EgressDoor:
    """The forward proxy of one gateway process: its listener, compiled policy and leaf cache."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.interceptor = Interceptor(gateway)
        self.server: asyncio.Server | None = None
        #: client connections open (tunnels and intercepted ones included)
        self.open = 0
        self.connections: set[ProxyConnection] = set()
        self._policy: EgressPolicy | None = None
        self._leaves: LeafCache | None = None
        self.stopped = False

    @property
    def config(self) -> EgressConfig:
        """The live `egress:` settings (the gateway's current snapshot)."""
        return self.gateway.snapshot.config.egress

    def policy(self) -> EgressPolicy:
        """The policy of the current config, compiled once per config (swapped on reload)."""
        config = self.config
        policy = self._policy
        if policy is None or policy.config is not config:
            policy = self._policy = EgressPolicy(config)
        return policy

    def record(self, event: AuditEvent, audited: bool = True) -> None:
        """Count one of the door's decisions, and queue its audit event (unless aggregated)."""
        self.gateway.metrics.egress.get((event.outcome,)).inc()
        if audited:
            self.gateway.audit.submit(event)

    def leaves(self) -> LeafCache:
        """The leaf cache of the current CA settings (intercept requires them)."""
        ca = self.config.ca
        assert ca is not None
        leaves = self._leaves
        if leaves is None or leaves.config != ca:
            leaves = self._leaves = LeafCache(self.gateway.vault, ca)
        return leaves

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on `sock`, or on `egress.host` and `egress.port`; the gateway's shutdown stops it."""
        loop = asyncio.get_running_loop()
        config = self.config
        self.policy()  # compiled before the first client (after a reload: by the first one, CPU only)
        if sock is not None:
            self.server = await loop.create_server(lambda: ProxyConnection(self), sock=sock)
        else:
            self.server = await loop.create_server(lambda: ProxyConnection(self), config.host, config.port)
        self.gateway.doors.append(self)

    async def serve_when_ready(self, sock: socket.socket) -> None:
        """Listen on `sock` once the gateway has started (its lifespan startup is done)."""
        await self.gateway.ready.wait()
        await self.start(sock)
        config = self.config
        log.info("egress proxy listening on %s:%d", config.host, self.port)

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop listening, close tunnels at once, and let intercepted calls in flight finish
        (within `grace_s`) before closing them; again: nothing more to do."""
        if self.stopped:
            return
        self.stopped = True
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            if not connection.intercepted:
                connection.abort()
        interceptor = self.interceptor
        interceptor.close()  # idle ones close now, busy ones after their answer
        if interceptor.state.tasks:
            await asyncio.wait(set(interceptor.state.tasks), timeout=grace_s)
        for connection in list(self.connections):
            connection.abort()
