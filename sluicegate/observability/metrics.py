"""Prometheus metrics of one gateway: the families, the bounds on their labels, recording a call.

One `GatewayMetrics` per `Gateway`, with its own `CollectorRegistry` (never the library's global
one: a process may run many gateways), kept across config reloads so counters never go back. The
`metrics` stage records each finished call through the `CallRecorder` of its config snapshot;
scrape-time figures (audit writer, budgets, reloads) come from `observability/collectors.py`.
Names follow Prometheus conventions and, where one exists, the OpenTelemetry GenAI semantic
conventions; `docs/metrics.md` lists every metric. Only the library's own metric classes are used,
so its multiprocess mode applies unchanged once the gateway runs several workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from sluicegate.observability.recorder import (
    DURATION_BUCKETS,
    FOLD_EVERY_S,
    OTHER,
    OVERHEAD_BUCKETS,
    TOKEN_BUCKETS,
    TTFT_BUCKETS,
    CallRecorder,
)

if TYPE_CHECKING:
    from sluicegate.config.snapshot import Snapshot
    from sluicegate.observability.recorder import Series

#: label combinations kept per counter, and per histogram (each of its series is ~20 lines);
#: past them, new combinations count under `other` consumer and model
MAX_COUNTER_SERIES = 5000
MAX_HISTOGRAM_SERIES = 500

_Child = TypeVar("_Child", bound=MetricWrapperBase)
_Key = tuple[str, ...]


class Children(Generic[_Child]):
    """The labelled children of one metric by label values, made once each and bounded.

    Past `limit` combinations a new one counts under `other` in the label positions `fold` names
    (consumer and model), and in `overflow`, so no client can grow the exposition without end."""

    __slots__ = ("cache", "fold", "limit", "metric", "overflow")

    def __init__(self, metric: _Child, limit: int, overflow: Counter, fold: tuple[int, ...] = ()) -> None:
        self.metric = metric
        self.cache: dict[_Key, _Child] = {}
        self.limit = limit
        #: the positions of the labels that become `other` past the limit
        self.fold = fold
        self.overflow = overflow

    def get(self, key: _Key) -> _Child:
        """The child of these label values (`metric.labels` once per combination: it is slow)."""
        child = self.cache.get(key)
        if child is not None:
            return child
        if len(self.cache) >= self.limit:
            self.overflow.inc()
            key = tuple(OTHER if i in self.fold else value for i, value in enumerate(key))
            child = self.cache.get(key)
            if child is not None:
                return child
        child = self.cache[key] = self.metric.labels(*key)
        return child


class GatewayMetrics:
    """Every metric of one gateway, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        #: awaited before each scrape (see `observability.collectors`)
        self.refreshers: list[Callable[[], Awaitable[None]]] = []
        #: series with figures not yet folded into the metric objects
        self.pending: list[Series] = []
        # Registered first: a scrape folds what calls recorded before it reads any metric.
        self.registry.register(_FoldFirst(self))
        ProcessCollector(registry=self.registry)
        self._overflow = Counter(
            "sluicegate_metrics_label_overflow",
            "Observations whose label combination was past the series bound (counted under `other`)",
            ["metric"],
            registry=self.registry,
        )
        who = ["consumer", "model", "provider"]
        self.requests = self._counter(
            "sluicegate_requests",
            "Data-plane requests by consumer, model, provider, endpoint, status class and decision",
            [*who, "endpoint", "status_class", "decision"],
            fold=(0, 1),
        )
        self.tokens = self._counter(
            "sluicegate_tokens",
            "Tokens by type: input, output; cached and cache_write (of input), reasoning (of output)",
            [*who, "type"],
            fold=(0, 1),
        )
        self.cost = self._counter(
            "sluicegate_cost", "Cost of calls, in units of the `currency` label", [*who, "currency"], fold=(0, 1)
        )
        self.guard_verdicts = self._counter(
            "sluicegate_guard_verdicts",
            "Calls on which a guard acted, by guard, action and direction",
            ["guard", "action", "direction"],
        )
        self.upstream_errors = self._counter(
            "sluicegate_upstream_errors",
            "Calls that failed at their upstream, by provider and kind (the error code)",
            ["provider", "kind"],
        )
        self.limit_refusals = self._counter(
            "sluicegate_limit_refusals",
            "Calls refused by a budget or rate limit, by consumer, kind and limit name",
            ["consumer", "kind", "limit"],
            fold=(0,),
        )
        self.egress = self._counter(
            "sluicegate_egress_decisions",
            "The egress proxy's own decisions by outcome: shadow_ai_blocked, egress_allowed, egress_denied ...",
            ["outcome"],
        )
        self.cache_requests = self._counter(
            "sluicegate_cache_requests",
            "Calls on a cached route, by what the response cache did: hit, semantic_hit, miss, bypass",
            ["consumer", "model", "result"],
            fold=(0, 1),
        )
        self.cache_saved_tokens = self._counter(
            "sluicegate_cache_saved_tokens",
            "Tokens the response cache's hits did not spend upstream (input and output)",
            ["consumer", "model"],
            fold=(0, 1),
        )
        self.cache_saved_cost = self._counter(
            "sluicegate_cache_saved_cost",
            "What the response cache's hits would have cost upstream, in units of the `currency` label",
            ["consumer", "model", "currency"],
            fold=(0, 1),
        )
        # GenAI names as the traces set them (`observability.genai`), plus the configured provider:
        # two providers of one type are told apart.
        genai = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "provider"]
        self.request_duration = self._histogram(
            "gen_ai_server_request_duration",
            "Time from a request's arrival to its answer's end, as its client sees it",
            [*genai, "error_type"],
            DURATION_BUCKETS,
        )
        self.upstream_duration = self._histogram(
            "gen_ai_client_operation_duration",
            "Time the upstream took: from the request sent to its answer read to the end (or failed)",
            [*genai, "error_type"],
            DURATION_BUCKETS,
        )
        self.ttft = self._histogram(
            "gen_ai_server_time_to_first_token",
            "Time from a streamed request's arrival to its first chunk",
            genai,
            TTFT_BUCKETS,
        )
        self.token_usage = self._histogram(
            "gen_ai_client_token_usage",
            "Tokens per call, input and output (gen_ai_token_type)",
            [*genai, "gen_ai_token_type"],
            TOKEN_BUCKETS,
            unit="",
        )
        self.overhead = self._histogram(
            "sluicegate_gateway_overhead",
            "The gateway's own time in a call that went upstream: its duration less the upstream's",
            ["endpoint", "provider", "stream"],
            OVERHEAD_BUCKETS,
            fold=(),
        )
        #: the audit writer's batch commits (fed by the writer thread: see `observe_audit_write`)
        self.audit_write = Histogram(
            "sluicegate_audit_write_duration",
            "Time to commit one batch of audit events to the store",
            unit="seconds",
            buckets=(*OVERHEAD_BUCKETS, 5.0, 10.0),
            registry=self.registry,
        )

    def _counter(
        self, name: str, documentation: str, labels: list[str], fold: tuple[int, ...] = ()
    ) -> Children[Counter]:
        metric = Counter(name, documentation, labels, registry=self.registry)
        return Children(metric, MAX_COUNTER_SERIES, self.overflow_of(name), fold)

    def _histogram(
        self,
        name: str,
        documentation: str,
        labels: list[str],
        buckets: tuple[float, ...],
        unit: str = "seconds",
        fold: tuple[int, ...] = (2,),
    ) -> Children[Histogram]:
        metric = Histogram(name, documentation, labels, unit=unit, buckets=buckets, registry=self.registry)
        return Children(metric, MAX_HISTOGRAM_SERIES, self.overflow_of(name), fold)

    def overflow_of(self, name: str) -> Counter:
        """The overflow count of the metric called `name`."""
        return self._overflow.labels(name)

    async def refresh(self) -> None:
        """Read what collectors need before a scrape and cannot read without waiting (budgets in Redis)."""
        for refresh in self.refreshers:
            await refresh()

    def observe_audit_write(self, events: int, seconds: float) -> None:
        """Record one batch committed by the audit writer (called from its thread)."""
        self.audit_write.observe(seconds)

    def recorder(self, snapshot: Snapshot) -> CallRecorder:
        """What records the calls of one config snapshot (its consumers and models bound the labels)."""
        return CallRecorder(self, snapshot)

    def fold(self) -> None:
        """Add what calls recorded since the last fold to the metric objects (see `recorder`)."""
        pending, self.pending = self.pending, []
        for series in pending:
            series.fold(self)

    def fold_soon(self) -> None:
        """Fold within `FOLD_EVERY_S` (called when a first series waits), so the metric objects hold
        every call within a second, read or not; outside an event loop, the next read folds."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(FOLD_EVERY_S, self.fold)


class _FoldFirst(Collector):
    """Folds the recorded figures into the metric objects when the registry is read."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        self.metrics.fold()
        return iter(())
