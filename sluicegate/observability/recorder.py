"""Recording a finished call: its labels bounded, its figures kept as plain numbers, then folded.

`CallRecorder.record` runs on every call (the `metrics` stage). Each combination of labels has a
`Series` of plain numbers: counts, token and cost sums, and per histogram its count, sum and
bucket counts. `GatewayMetrics.fold` adds them to the library's metric objects before every
scrape and within a second of a call, so the request path takes no lock and makes no library call
(those cost more than all the rest), and the library's objects, which its multiprocess mode
shares between workers, hold every figure within a second. Both run in the event loop.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import TYPE_CHECKING

from sluicegate.observability.genai import OPERATIONS, PROVIDER_NAMES

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from sluicegate.call import Call
    from sluicegate.config.snapshot import Route, Snapshot
    from sluicegate.observability.metrics import Children, GatewayMetrics

#: the label value of a configured name's absence (no consumer yet, no model in the request)
NONE = "none"
#: the label value of anything not in the config (a model name a client made up, a JWT subject)
OTHER = "other"
#: how long, at most, a call's figures wait to reach the metric objects
FOLD_EVERY_S = 1.0
#: label combinations a snapshot's recorder keeps; past them, consumer and model become `other`
MAX_SERIES = 5000
#: OpenTelemetry's advised bucket boundaries for GenAI durations and token counts
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
#: the gateway's own time is far shorter than a model's: finer buckets, from 0.25 ms
OVERHEAD_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TOKEN_TYPES = ("input", "output", "cached", "cache_write", "reasoning")
_STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
#: error codes of the limits stage, and the kind of refusal each is when its rule does not say
_LIMIT_CODES = {"budget_exceeded": "budget", "rate_limit_exceeded": "", "budget_store_unavailable": "store_unavailable"}
#: a histogram's pending figures: [count, sum, then one count per bucket, +Inf last]
Pending = list[float]


def _pending(buckets: tuple[float, ...]) -> Pending:
    return [0.0] * (len(buckets) + 3)


def _add(children: Children[Histogram], labels: tuple[str, ...], pending: Pending) -> None:
    """Add a histogram's pending figures to its child, and clear them. The library has no call that
    adds many observations at once: its child's sum and bucket values are incremented directly, as
    its own `observe` does (they are the library's value objects, multiprocess ones included)."""
    child = children.get(labels)
    child._sum.inc(pending[1])
    buckets = child._buckets
    for i in range(2, len(pending)):
        if pending[i]:
            buckets[i - 2].inc(pending[i])
            pending[i] = 0.0
    pending[0] = pending[1] = 0.0


#: what the response cache did, in the order `Series.cache` counts it
CACHE_RESULTS = ("hit", "semantic_hit", "miss", "bypass")
_CACHE_INDEX = {name: i for i, name in enumerate(CACHE_RESULTS)}


class Series:
    """What the calls of one label combination recorded since the last fold."""

    __slots__ = (
        "cache",
        "cost",
        "currency",
        "duration",
        "key",
        "operation",
        "overhead",
        "pending",
        "requests",
        "tokens",
        "ttft",
        "upstream",
        "usage_input",
        "usage_output",
    )

    def __init__(self, key: tuple[str, ...], currency: str) -> None:
        #: consumer, model, provider, GenAI provider name, endpoint, status class, decision, error
        #: type, stream ("true" / "false")
        self.key = key
        self.currency = currency
        self.operation = OPERATIONS.get(key[4])
        #: waiting in `GatewayMetrics.pending` to be folded
        self.pending = False
        self.requests = 0
        #: by `TOKEN_TYPES`; cost in micro-units of the currency
        self.tokens = [0, 0, 0, 0, 0]
        self.cost = 0
        #: cache results by `CACHE_RESULTS`, then the tokens and cost (micro-units) hits saved
        self.cache: list[int] | None = None
        self.duration = _pending(DURATION_BUCKETS)
        self.upstream = _pending(DURATION_BUCKETS)
        self.overhead = _pending(OVERHEAD_BUCKETS)
        self.ttft = _pending(TTFT_BUCKETS)
        self.usage_input = _pending(TOKEN_BUCKETS)
        self.usage_output = _pending(TOKEN_BUCKETS)

    def _fold_cache(self, m: GatewayMetrics, who: str, model: str, cache: list[int]) -> None:
        for i, result in enumerate(CACHE_RESULTS):
            if cache[i]:
                m.cache_requests.get((who, model, result)).inc(cache[i])
                cache[i] = 0
        if cache[4]:
            m.cache_saved_tokens.get((who, model)).inc(cache[4])
            cache[4] = 0
        if cache[5]:
            m.cache_saved_cost.get((who, model, self.currency)).inc(cache[5] / 1_000_000)
            cache[5] = 0

    def fold(self, m: GatewayMetrics) -> None:
        """Add the pending figures to the metric objects, and clear them."""
        self.pending = False
        who, model, provider, system, endpoint, klass, decision, error, stream = self.key
        if self.requests:
            m.requests.get((who, model, provider, endpoint, klass, decision)).inc(self.requests)
            self.requests = 0
        tokens = self.tokens
        for i, count in enumerate(tokens):
            if count:
                m.tokens.get((who, model, provider, TOKEN_TYPES[i])).inc(count)
                tokens[i] = 0
        if self.cost:
            m.cost.get((who, model, provider, self.currency)).inc(self.cost / 1_000_000)
            self.cost = 0
        cache = self.cache
        if cache is not None:
            self._fold_cache(m, who, model, cache)
        operation = self.operation
        if operation is None:
            return
        genai = (operation, system, model, provider)
        if self.duration[0]:
            _add(m.request_duration, (*genai, error), self.duration)
        if self.upstream[0]:
            _add(m.upstream_duration, (*genai, error), self.upstream)
        if self.overhead[0]:
            _add(m.overhead, (endpoint, provider, stream), self.overhead)
        if self.ttft[0]:
            _add(m.ttft, genai, self.ttft)
        if self.usage_input[0]:
            _add(m.token_usage, (*genai, "input"), self.usage_input)
        if self.usage_output[0]:
            _add(m.token_usage, (*genai, "output"), self.usage_output)


class CallRecorder:
    """Records finished calls of one config snapshot; `record` runs on every call."""

    __slots__ = ("_models", "_overflow", "consumers", "currency", "metrics", "series", "snapshot")

    def __init__(self, metrics: GatewayMetrics, snapshot: Snapshot) -> None:
        self.metrics = metrics
        self.snapshot = snapshot
        self.consumers = snapshot.consumers
        self.currency = snapshot.config.limits.currency
        self.series: dict[tuple[str, ...], Series] = {}
        self._overflow = metrics.overflow_of("series")
        #: a requested model name -> its route (None: no route), for calls refused before routing
        self._models: dict[str, Route | None] = {}

    def record(self, call: Call) -> None:
        """Count one finished call in every metric it concerns."""
        consumer = call.consumer
        if consumer is None:
            who = NONE
        else:
            who = consumer.name
            # A consumer made for a JWT's groups is not in the config: its name is the token's.
            if self.consumers.get(who) is not consumer:
                who = OTHER
        route = call.route
        if route is None and call.model_requested is not None:
            route = self._route(call.model_requested)
        if route is not None:
            model = route.name
            provider = call.provider or route.provider.name
            kind = route.provider.type
            system = PROVIDER_NAMES.get(kind, kind)
        else:
            model = OTHER if call.model_requested is not None else NONE
            provider = call.provider or NONE
            system = NONE
        status = call.status
        klass = _STATUS_CLASSES[status // 100] if 100 <= status < 600 else "other"
        error = call.error
        if error is not None:
            code = error.code
            self._record_error(call, code, who, provider)
        else:
            # `error_type` as the traces give it: the error's code, else an outcome that is not ok
            outcome = call.outcome
            code = "" if outcome == "ok" else outcome
        guards = call.guards
        if guards is not None and guards.records:
            self._record_guards(call)
        cache = call.cache
        hit = cache is not None and cache.hit
        stream = call.stream
        key = (who, model, provider, system, call.endpoint, klass, call.decision, code, "true" if stream else "false")
        series = self.series.get(key)
        if series is None:
            series = self._series(key)
        if not series.pending:
            series.pending = True
            pending = self.metrics.pending
            if not pending:
                self.metrics.fold_soon()
            pending.append(series)
        series.requests += 1
        if cache is not None:
            counts = series.cache
            if counts is None:
                counts = series.cache = [0, 0, 0, 0, 0, 0]
            counts[_CACHE_INDEX[cache.audit_value()]] += 1
            if hit:
                # A hit's tokens were saved, not spent: they count here, not in the tokens below.
                counts[4] += (call.prompt_tokens or 0) + (call.completion_tokens or 0)
                counts[5] += cache.saved_micro_usd or 0
        # A cache hit's tokens were saved, not spent: `sluicegate_cache_saved_tokens` counts them.
        prompt = call.prompt_tokens if not hit else None
        completion = call.completion_tokens if not hit else None
        tokens = series.tokens
        if prompt is not None and prompt > 0:
            tokens[0] += prompt
        if completion is not None and completion > 0:
            tokens[1] += completion
        for i, count in ((2, call.cached_tokens), (3, call.cache_write_tokens), (4, call.reasoning_tokens)):
            if count is not None and count > 0 and not hit:
                tokens[i] += count
        cost = call.cost_micro_usd
        if cost is not None and cost > 0:
            series.cost += cost
        if series.operation is not None:
            # Each histogram: count, sum, and the count of the first bucket the value fits in.
            elapsed = time.perf_counter() - call.started
            h = series.duration
            h[0] += 1
            h[1] += elapsed
            h[bisect_left(DURATION_BUCKETS, elapsed) + 2] += 1
            upstream_ms = call.upstream_ms
            if upstream_ms is not None:
                upstream = upstream_ms / 1000.0
                h = series.upstream
                h[0] += 1
                h[1] += upstream
                h[bisect_left(DURATION_BUCKETS, upstream) + 2] += 1
                own = elapsed - upstream if elapsed > upstream else 0.0
                h = series.overhead
                h[0] += 1
                h[1] += own
                h[bisect_left(OVERHEAD_BUCKETS, own) + 2] += 1
            if stream and call.ttft_ms is not None:
                first = call.ttft_ms / 1000.0
                h = series.ttft
                h[0] += 1
                h[1] += first
                h[bisect_left(TTFT_BUCKETS, first) + 2] += 1
            if prompt is not None and prompt >= 0:
                h = series.usage_input
                h[0] += 1
                h[1] += prompt
                h[bisect_left(TOKEN_BUCKETS, prompt) + 2] += 1
            if completion is not None and completion >= 0:
                h = series.usage_output
                h[0] += 1
                h[1] += completion
                h[bisect_left(TOKEN_BUCKETS, completion) + 2] += 1

    def _series(self, key: tuple[str, ...]) -> Series:
        series = self.series
        if len(series) >= MAX_SERIES:
            # Bounded: past the limit, new combinations count under `other` consumer and model.
            self._overflow.inc()
            key = (OTHER, OTHER, *key[2:])
            found = series.get(key)
            if found is not None:
                return found
        made = series[key] = Series(key, self.currency)
        return made

    def _route(self, requested: str) -> Route | None:
        models = self._models
        try:
            return models[requested]
        except KeyError:
            pass
        route = self.snapshot.route_for(requested)
        if len(models) >= 10_000:
            models.clear()
        models[requested] = route
        return route

    def _record_error(self, call: Call, code: str, who: str, provider: str) -> None:
        m = self.metrics
        if code.startswith("upstream_"):
            m.upstream_errors.get((provider, code)).inc()
            return
        kind = _LIMIT_CODES.get(code)
        if kind is None:
            return
        rule = call.error.rule if call.error is not None else None
        name = ""
        if rule is not None and rule.startswith("limits.budgets."):
            name = rule[len("limits.budgets.") :]
        elif rule is not None and rule.startswith("limits.rate_limits."):
            # `limits.rate_limits.NAME.KIND`: KIND is requests, tokens or concurrent
            name, _, kind = rule[len("limits.rate_limits.") :].rpartition(".")
        elif kind == "":
            return  # a 429 that is not the gateway's own limit
        m.limit_refusals.get((who, kind, name)).inc()

    def _record_guards(self, call: Call) -> None:
        assert call.guards is not None
        verdicts = self.metrics.guard_verdicts
        # One count per call for each guard, action and direction, however many findings it had.
        seen = {(r.guard or r.kind, r.action, r.direction) for r in call.guards.records}
        for key in seen:
            verdicts.get(key).inc()
