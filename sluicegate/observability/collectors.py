"""Metrics read at scrape time, not counted per call: the audit writer, budgets, reloads.

Each collector reads what its part already keeps (the audit writer's counters, the limits'
counters, the gateway's reload count), so the request path pays nothing for them. Budget state
may live in Redis: it is read before each scrape (`refresh`, awaited by the `/metrics` handler),
and a store that does not answer leaves the budget series out and says so in
`sluicegate_budget_state_up` and a log line (a metrics exporter fails open).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluicegate.limits.counters import CountersUnavailable
from sluicegate.limits.plan import Applied, Plan, Rule

if TYPE_CHECKING:
    from sluicegate.audit.writer import AuditWriter
    from sluicegate.config.snapshot import Snapshot
    from sluicegate.limits.service import LimitsService
    from sluicegate.observability.metrics import GatewayMetrics

log = logging.getLogger("sluicegate.metrics")

#: budget counters exposed at most (each is two series: limit and remaining)
MAX_BUDGET_SERIES = 1000
#: how long a scrape waits for a shared counter store before it leaves budgets out
BUDGET_READ_TIMEOUT_S = 2.0
#: a failing budget read is logged at most this often
WARN_EVERY_S = 60.0


class GatewayState(Protocol):
    """What the gateway exposes of itself (`app.Gateway`)."""

    reloads: int
    reload_failures: int
    last_reload_error: str | None
    in_flight: int


class StateCollector(Collector):
    """Config reloads and requests in flight."""

    def __init__(self, gateway: GatewayState) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        yield CounterMetricFamily("sluicegate_config_reloads", "Config reloads that took effect", value=gw.reloads)
        yield CounterMetricFamily(
            "sluicegate_config_reload_failures",
            "Config reloads refused (the previous config kept serving)",
            value=gw.reload_failures,
        )
        yield GaugeMetricFamily(
            "sluicegate_config_last_reload_successful",
            "1 when the last reload took effect (or none was tried), 0 when it was refused",
            value=0 if gw.last_reload_error is not None else 1,
        )
        yield GaugeMetricFamily(
            "sluicegate_in_flight_requests", "HTTP requests being handled on the data port", value=gw.in_flight
        )


class AuditCollector(Collector):
    """The audit writer's queue and counters."""

    def __init__(self, writer: AuditWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        w = self.writer
        status = w.status()
        yield GaugeMetricFamily(
            "sluicegate_audit_queue_depth", "Audit events waiting in the writer's queue", value=status["queued"]
        )
        yield GaugeMetricFamily(
            "sluicegate_audit_pending_events",
            "Audit events queued or being written (not yet in the store or a spill file)",
            value=status["pending"],
        )
        yield GaugeMetricFamily(
            "sluicegate_audit_store_up", "1 while the audit store takes writes, else 0", value=1 if w.healthy else 0
        )
        for name, key, documentation in (
            ("written", "written", "Audit events committed to the store"),
            ("spilled", "spilled", "Audit events written to the spill file (store down or queue full)"),
            ("replayed", "replayed", "Spilled audit events later replayed into the store"),
            ("poisoned", "poisoned", "Audit events the store refused, set aside in the poison file"),
            ("lost", "lost", "Audit events neither the store nor a spill file took by shutdown"),
        ):
            yield CounterMetricFamily(f"sluicegate_audit_events_{name}", documentation, value=status[key])
        yield CounterMetricFamily(
            "sluicegate_audit_write_failures", "Failed attempts to write a batch to the audit store", value=w.failures
        )


class LimitsCollector(Collector):
    """Budget state (limit and remaining, per budget and scope value) and the limits' own counters."""

    def __init__(self, service: LimitsService, snapshot: Callable[[], Snapshot]) -> None:
        self.service = service
        self.snapshot = snapshot
        self._plan: tuple[Snapshot, Plan] | None = None
        #: (budget, scope, value, currency, limit, remaining) in currency units, as last read
        self.rows: list[tuple[str, str, str, str, float, float]] = []
        self.up = 1
        self._last_warning = 0.0

    async def refresh(self) -> None:
        """Read the budgets' counters of their current windows (a shared store is awaited)."""
        snapshot = self.snapshot()
        plan = self._plan_of(snapshot)
        budgets = [(rule, value) for rule in plan.rules if rule.kind == "budget" for value in _values(rule, snapshot)]
        if not budgets:
            self.rows, self.up = [], 1
            return
        budgets = budgets[:MAX_BUDGET_SERIES]
        service = self.service
        try:
            async with asyncio.timeout(BUDGET_READ_TIMEOUT_S):
                counters = await service.counters()
                now = counters.clock()
                windows = [Applied(rule, value).charge(0, now)[0].window for rule, value in budgets]
                levels = await counters.levels(windows)
        except (CountersUnavailable, TimeoutError) as exc:
            self.rows, self.up = [], 0
            now = time.monotonic()
            if now - self._last_warning >= WARN_EVERY_S:
                self._last_warning = now
                log.warning("metrics: budget state left out, the limits' counter store did not answer (%s)", exc)
            return
        currency = snapshot.config.limits.currency
        self.rows = [
            (
                rule.name,
                rule.scope,
                value,
                currency,
                rule.limit / 1_000_000,
                max(0, rule.limit - level.used - level.reserved) / 1_000_000,
            )
            for (rule, value), level in zip(budgets, levels, strict=True)
        ]
        self.up = 1

    def _plan_of(self, snapshot: Snapshot) -> Plan:
        cached = self._plan
        if cached is None or cached[0] is not snapshot:
            cached = self._plan = (snapshot, Plan(snapshot.config.limits))
        return cached[1]

    def collect(self) -> Iterator[Metric]:
        labels = ["budget", "scope", "value", "currency"]
        limit = GaugeMetricFamily(
            "sluicegate_budget_limit", "A budget's amount per window, in currency units", labels=labels
        )
        remaining = GaugeMetricFamily(
            "sluicegate_budget_remaining",
            "What a budget has left in its current window (less what calls in flight hold), in currency units",
            labels=labels,
        )
        for budget, scope, value, currency, amount, left in self.rows:
            limit.add_metric([budget, scope, value, currency], amount)
            remaining.add_metric([budget, scope, value, currency], left)
        yield limit
        yield remaining
        yield GaugeMetricFamily(
            "sluicegate_budget_state_up", "1 when the last scrape could read the budgets' counters", value=self.up
        )
        service = self.service
        yield CounterMetricFamily(
            "sluicegate_limits_degraded_calls",
            "Calls whose rate limits were kept in this process while the shared counter store was down",
            value=service.degraded_calls,
        )
        yield CounterMetricFamily(
            "sluicegate_limits_reservations_reaped",
            "Reservations settled at their estimate by the reaper (their call never settled)",
            value=service.reaped,
        )


def _values(rule: Rule, snapshot: Snapshot) -> list[str]:
    """The scope values of a budget that are named in the config (bounded: no JWT subject, no key
    that is not named in the budget's `match`)."""
    scope = rule.scope
    if scope == "gateway":
        return ["*"]
    names: list[str]
    if scope == "consumer":
        names = list(snapshot.consumers)
    elif scope == "group":
        names = list(snapshot.groups)
    elif scope == "model":
        names = [m.name for m in snapshot.config.models]
    elif scope == "provider":
        names = list(snapshot.providers)
    else:
        names = sorted(rule.matcher.exact) if rule.matcher is not None else []
    return [name for name in names if rule.matches(name)]


class CacheCollector(Collector):
    """What the response cache holds, read at scrape time (nothing while no config enables it)."""

    def __init__(self, status: Callable[[], dict[str, Any] | None]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        if status is None:
            return
        backend = status["backend"]
        for key, name, documentation in (
            ("entries", "sluicegate_cache_entries", "Entries the in-process response cache holds"),
            ("bytes", "sluicegate_cache_bytes", "Bytes the in-process response cache holds (entries and overhead)"),
        ):
            if key in status:
                yield _gauge(name, documentation, backend, status[key])
        yield CounterMetricFamily(
            "sluicegate_cache_store_errors",
            "Response-cache store operations that failed or timed out (each a miss or an unstored answer)",
            value=status.get("errors", 0) + status.get("failed_writes", 0),
        )
        semantic = status.get("semantic")
        if semantic is not None:
            yield CounterMetricFamily(
                "sluicegate_cache_semantic_timeouts",
                "Semantic-cache lookups whose embedding was not ready in time (each a miss)",
                value=semantic["timeouts"],
            )


#: `sluicegate_route_circuit_state` values
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class RoutingCollector(Collector):
    """Each route target's circuit and calls in flight, read at scrape time."""

    def __init__(self, status: Callable[[], dict[str, list[dict[str, Any]]]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        if not status:
            return
        circuit = GaugeMetricFamily(
            "sluicegate_route_circuit_state",
            "Circuit breaker of each route target: 0 closed, 1 half open, 2 open",
            labels=["model", "target"],
        )
        outstanding = GaugeMetricFamily(
            "sluicegate_route_outstanding", "Calls in flight to each route target", labels=["model", "target"]
        )
        for model, targets in status.items():
            for target in targets:
                labels = [model, target["target"]]
                outstanding.add_metric(labels, target["outstanding"])
                if "circuit" in target:
                    circuit.add_metric(labels, CIRCUIT_STATES.get(str(target["circuit"]["state"]), 0))
        yield circuit
        yield outstanding


def _gauge(name: str, documentation: str, backend: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["backend"])
    gauge.add_metric([backend], value)
    return gauge


def register_collectors(
    metrics: GatewayMetrics,
    gateway: GatewayState,
    audit: AuditWriter,
    limits: LimitsService,
    snapshot: Callable[[], Snapshot],
    cache_status: Callable[[], dict[str, Any] | None] = lambda: None,
    routing_status: Callable[[], dict[str, list[dict[str, Any]]]] = dict,
) -> None:
    """Add the scrape-time collectors of one gateway to its metrics' registry."""
    registry = metrics.registry
    registry.register(StateCollector(gateway))
    registry.register(CacheCollector(cache_status))
    registry.register(RoutingCollector(routing_status))
    registry.register(AuditCollector(audit))
    budgets = LimitsCollector(limits, snapshot)
    registry.register(budgets)
    metrics.refreshers.append(budgets.refresh)
