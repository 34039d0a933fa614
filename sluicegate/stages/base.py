"""The stage contract and the stage registry.

A stage is one step of the request path. It declares whether it reads the body, refuses by
raising a `SluicegateError`, and never writes the HTTP response itself. A new stage is one
module plus one `register_stage` line; `pipeline.STAGE_ORDER` says where it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sluicegate.audit.failures import AuthFailureAggregator
from sluicegate.auth.jwks import JWKSCache
from sluicegate.cache.service import CacheService
from sluicegate.limits.service import LimitsService
from sluicegate.routing.service import RoutingService

if TYPE_CHECKING:
    from aiohttp import ClientSession

    from sluicegate.audit.chain import ChainKey
    from sluicegate.audit.writer import AuditWriter
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot
    from sluicegate.guardrails.base import GuardContext
    from sluicegate.observability.metrics import GatewayMetrics
    from sluicegate.observability.tracing import Tracing
    from sluicegate.stages.identity import KeyIndex
    from sluicegate.vault import Vault


class Stage(Protocol):
    """One step of the request path."""

    name: str
    #: False for stages that decide on headers alone: they run before the body is read
    needs_body: bool

    async def on_request(self, call: Call) -> None:
        """Inspect or annotate the call before it goes upstream; raise to refuse it."""

    async def on_finish(self, call: Call) -> None:
        """Run after the call ended, whatever the outcome (in a `finally`)."""


@dataclass(slots=True)
class Services:
    """The long-lived parts a stage may use; built once by the gateway."""

    keys: KeyIndex
    audit: AuditWriter
    vault: Vault
    http: ClientSession | None = None
    #: failed authentications per source, kept across config reloads
    auth_failures: AuthFailureAggregator = field(default_factory=AuthFailureAggregator)
    #: unauthenticated requests for unknown URLs or with a wrong method (404, 405), per source
    unknown_urls: AuthFailureAggregator = field(
        default_factory=lambda: AuthFailureAggregator(
            status=404, outcome="unknown_urls_aggregated", endpoint="unknown", what="unauthenticated unknown URLs"
        )
    )
    #: JWKS documents of the JWT issuers, kept across config reloads
    jwks: JWKSCache = field(default_factory=JWKSCache)
    #: what guards may use (HTTP session, vault, the gateway's own model calls)
    guard_context: GuardContext | None = None
    #: budget and rate-limit counters, kept across config reloads
    limits: LimitsService = field(default_factory=LimitsService)
    #: the audit's keys (the chain's and the content HMACs'); None: no content HMACs
    audit_key: ChainKey | None = None
    #: the gateway's Prometheus metrics, kept across config reloads (None: not collected)
    metrics: GatewayMetrics | None = None
    #: the tracer provider while tracing is enabled (set at startup, kept or replaced on reload)
    tracing: Tracing | None = None
    #: the response cache's backends and writes, kept across config reloads
    cache: CacheService = field(default_factory=CacheService)
    #: each route target's breaker, retry budget and load, kept across config reloads
    routing: RoutingService = field(default_factory=RoutingService)


#: builds a stage for a snapshot, or None when the config does not need it (it then costs nothing)
StageFactory = Callable[["Snapshot", Services], "Stage | None"]

_FACTORIES: dict[str, StageFactory] = {}


def register_stage(name: str, factory: StageFactory) -> None:
    """Make a stage available under `name`; `pipeline.STAGE_ORDER` places it."""
    if name in _FACTORIES:
        raise ValueError(f"stage {name!r} is registered twice")
    _FACTORIES[name] = factory


def stage_factories() -> dict[str, StageFactory]:
    """Every registered stage factory by name."""
    _load_builtins()
    return _FACTORIES


def _load_builtins() -> None:
    from sluicegate.stages import (  # noqa: F401
        access,
        accounting,
        audit,
        cache,
        guardrails,
        identity,
        limits,
        metrics,
        router,
        tracing,
    )
