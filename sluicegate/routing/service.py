"""`RoutingService`: what routing keeps across calls and config reloads (each target's circuit
breaker, retry budget, calls in flight and latency), and `RoutePlan`, one call's way through its
route's targets.

A plan orders the targets by the route's strategy, leaving out those whose breaker is open and
those the consumer may not use. `RoutePlan.open` then sends the call to the first; on a failure
that falls back (a connection failure, a timeout, or a status in `fallback_on_status`) it goes on
to the next, and when none is left it retries the last one after a jittered backoff (honouring
`Retry-After`) while the target's retry budget, the call's attempts and its deadline allow. It
never falls back once the answer has begun: only failures before the upstream's answer headers
are seen here. Every attempt is recorded for the audit event.
"""

from __future__ import annotations

import asyncio
import random
import time
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from sluicegate.errors import SluicegateError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from sluicegate.routing.breaker import BreakerSettings, CircuitBreaker
from sluicegate.routing.retry import RetryBudget, RetryPolicy
from sluicegate.routing.strategies import Candidate, SmoothWeighted, TargetStats, order

if TYPE_CHECKING:
    import aiohttp

    from sluicegate.call import Call
    from sluicegate.config.snapshot import Consumer, Route
    from sluicegate.limits.prices import PriceBook
    from sluicegate.relay import Relay
    from sluicegate.routing.rules import Pin

#: targets remembered at most (a config reload that renames many keeps the newest)
MAX_TARGETS = 10_000


class TargetRuntime:
    """One target's state across calls: breaker, retry budget, calls in flight, latency."""

    __slots__ = ("breaker", "budget", "closed", "label", "label_bytes", "stats")

    def __init__(self, label: str, breaker: CircuitBreaker | None, budget: RetryBudget) -> None:
        self.label = label
        #: the label as the answer's target header carries it
        self.label_bytes = label.encode("latin-1", "replace")
        self.breaker = breaker
        self.budget = budget
        self.stats = TargetStats()
        #: the breaker is closed (kept by its transitions): a call need not read its state
        self.closed = True

    def changed(self, old: str, new: str) -> None:
        self.closed = new == "closed"

    @property
    def available(self) -> bool:
        return self.breaker is None or self.breaker.state != "open"


class Attempt:
    """One try of a target, as the audit event lists it."""

    __slots__ = ("error", "ms", "status", "target")

    def __init__(self, target: str, status: int | None, ms: float, error: str | None) -> None:
        self.target = target
        self.status = status
        self.ms = ms
        self.error = error

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, "ms": round(self.ms, 3), "error": self.error}


class RoutingService:
    """Target state kept across calls and reloads, keyed by route, target and settings."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self._targets: dict[tuple[Any, ...], TargetRuntime] = {}
        self._rotations: dict[tuple[Any, ...], SmoothWeighted] = {}
        #: per route object (a snapshot's): its targets' runtimes, retry policy and rotation, found
        #: once; the route is held so its id is not reused while the entry lives
        self._routes: dict[int, RouteRuntime] = {}

    def runtime(self, route: Route, target: Route, prices: PriceBook | None = None) -> TargetRuntime:
        config = route.config
        key = (route.name, target.index, target.provider.name, target.upstream_model, config.breaker, config.retry)
        found = self._targets.get(key)
        if found is None:
            if len(self._targets) >= MAX_TARGETS:
                self._targets.clear()
            b = config.breaker
            budget = RetryBudget(config.retry.budget_ratio, clock=self.clock)
            label = f"{target.provider.name}/{target.upstream_model or route.name}"
            found = self._targets[key] = TargetRuntime(label, None, budget)
            if b.enabled:
                settings = BreakerSettings(b.failure_rate, b.min_calls, b.window_s, b.open_s, b.half_open_probes)
                found.breaker = CircuitBreaker(settings, clock=self.clock, on_change=found.changed)
            price = prices.price_for(config, target.upstream_model) if prices is not None else None
            if price is not None:
                # `lowest_cost` compares a million input and a million output tokens, and a request.
                found.stats.price = float(price.input + price.output + price.per_request)
        return found

    def route_runtime(self, route: Route, prices: PriceBook | None = None) -> RouteRuntime:
        """What a route's calls share, found once per route object (a snapshot's)."""
        found = self._routes.get(id(route))
        if found is None or found.route is not route:
            if len(self._routes) >= MAX_TARGETS:
                self._routes.clear()
            targets = route.targets
            rotation = None
            if route.strategy == "round_robin":
                key = (route.name, tuple((t.provider.name, t.upstream_model, t.weight) for t in targets))
                rotation = self._rotations.get(key)
                if rotation is None:
                    rotation = self._rotations[key] = SmoothWeighted()
            retry = route.config.retry
            found = self._routes[id(route)] = RouteRuntime(
                route,
                [self.runtime(route, t, prices) for t in targets],
                RetryPolicy(retry.max_attempts, retry.base_s, retry.cap_s, retry.budget_ratio, retry.max_retry_after_s),
                frozenset(route.config.fallback_on_status),
                rotation,
            )
        return found

    def plan(
        self,
        call: Call,
        route: Route,
        consumer: Consumer | None,
        prices: PriceBook | None = None,
        pins: tuple[Pin, ...] = (),
    ) -> RoutePlan:
        """The order in which this call tries its route's targets: those its consumer may use and
        its pins allow, whose circuit is not open."""
        shared = self.route_runtime(route, prices)
        targets = route.targets
        runtimes = shared.runtimes
        closed = True
        for rt in runtimes:
            closed = closed and rt.closed
        if closed and not pins and (consumer is None or consumer.providers is None):
            # Every circuit closed and every provider allowed (the common case): built once.
            candidates = shared.candidates
            weights = shared.weights
            if weights is not None:
                # Weighted within one priority group: the first by one draw over the cumulative
                # weights (what the weighted order's first place is), the rest weighted as usual.
                first = bisect_right(weights, self.rng.random() * weights[-1])
                first = min(first, len(weights) - 1)
                pairs = shared.pairs
                if len(pairs) == 2:
                    return RoutePlan(self, shared, shared.orders[first])
                rest = order(shared.strategy, [c for c in candidates if c.index != first], self.rng)
                return RoutePlan(self, shared, [pairs[first], *[pairs[i] for i in rest]])
        else:
            candidates = [
                Candidate(t.index, t.weight, t.priority, rt.stats, rt.available)
                for t, rt in zip(targets, runtimes, strict=True)
                if may_serve(t, consumer, pins)
            ]
        ordered = order(shared.strategy, candidates, self.rng, rr=shared.rotation)
        pairs = shared.pairs
        return RoutePlan(self, shared, [pairs[i] for i in ordered], permitted=bool(candidates))

    def status(self) -> dict[str, list[dict[str, Any]]]:
        """Each target's breaker and load, by model, for `/readyz` and the metrics."""
        out: dict[str, list[dict[str, Any]]] = {}
        for key, rt in self._targets.items():
            entry: dict[str, Any] = {"target": rt.label, "outstanding": rt.stats.outstanding}
            if rt.breaker is not None:
                entry["circuit"] = rt.breaker.snapshot()
            out.setdefault(key[0], []).append(entry)
        return out


def may_serve(target: Route, consumer: Consumer | None, pins: tuple[Pin, ...]) -> bool:
    """Whether a target may serve a call of this consumer under these pins (its provider rules
    and every pin allow the target's provider)."""
    return (consumer is None or consumer.may_use_provider(target.provider.name)) and all(
        p.allows(target.provider) for p in pins
    )


class RouteRuntime:
    """What the calls of one route share: its targets' runtimes, retry policy, fallback statuses."""

    __slots__ = (
        "candidates",
        "fallback_on",
        "latency",
        "orders",
        "pairs",
        "policy",
        "rotation",
        "route",
        "runtimes",
        "strategy",
        "weights",
    )

    def __init__(
        self,
        route: Route,
        runtimes: list[TargetRuntime],
        policy: RetryPolicy,
        fallback_on: frozenset[int],
        rotation: SmoothWeighted | None,
    ) -> None:
        self.route = route
        self.runtimes = runtimes
        self.policy = policy
        self.fallback_on = fallback_on
        self.rotation = rotation
        self.strategy = route.strategy
        #: the strategy reads the targets' latency: only then is it measured
        self.latency = self.strategy == "lowest_latency"
        #: every target, available: the candidates while every circuit is closed
        self.candidates = [
            Candidate(t.index, t.weight, t.priority, rt.stats, True)
            for t, rt in zip(route.targets, runtimes, strict=True)
        ]
        #: each target with its runtime, by index
        self.pairs = list(zip(route.targets, runtimes, strict=True))
        #: `weighted` within one priority group: the cumulative weights (else None), and for two
        #: targets the two orders there are
        self.weights: list[float] | None = None
        self.orders: tuple[list[tuple[Route, TargetRuntime]], ...] = ()
        if self.strategy == "weighted" and len({t.priority for t in route.targets}) == 1:
            self.weights = list(accumulate(t.weight for t in route.targets))
            if len(self.pairs) == 2:
                self.orders = ([self.pairs[0], self.pairs[1]], [self.pairs[1], self.pairs[0]])


class RoutePlan:
    """One call's targets in the order it tries them, and what each attempt did."""

    __slots__ = ("attempts", "permitted", "route", "served", "service", "shared", "targets")

    def __init__(
        self,
        service: RoutingService,
        shared: RouteRuntime,
        targets: list[tuple[Route, TargetRuntime]],
        permitted: bool = True,
    ) -> None:
        self.service = service
        self.shared = shared
        self.route = shared.route
        self.targets = targets
        #: some target is one the call may use (else: none is, whatever the circuits say)
        self.permitted = permitted
        self.attempts: list[Attempt] = []
        #: the target whose answer the call relays (its call is in flight until `finish`)
        self.served: TargetRuntime | None = None

    @property
    def first(self) -> Route | None:
        return self.targets[0][0] if self.targets else None

    async def open(
        self, call: Call, relay: Relay, to_chat: Callable[[dict[str, Any]], dict[str, Any]] | None
    ) -> aiohttp.ClientResponse:
        """Send the call to its targets in turn until one answers; raise the last failure."""
        shared = self.shared
        policy = shared.policy
        fallback_on = shared.fallback_on
        clock = self.service.clock
        #: the whole call's end, on `time.monotonic()`: the router sets it from the model's
        #: `timeout_s` and the client's deadline header; else it is the first provider's total
        #: time, found when first needed (a retry)
        deadline = call.deadline
        queue = list(self.targets)
        last: SluicegateError | None = None
        retries = 0
        while queue and len(self.attempts) < policy.max_attempts:
            target, rt = queue[0]
            breaker = rt.breaker
            # (a closed circuit allows every call: only another state is asked)
            if breaker is not None and not rt.closed and not breaker.allow():
                self.attempts.append(Attempt(rt.label, None, 0.0, "circuit_open"))
                queue.pop(0)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                self.attempts.append(Attempt(rt.label, None, 0.0, "deadline"))
                break
            call.route = target
            call.provider = target.provider.name
            call.upstream_status = None
            started = clock()
            if not retries:
                rt.budget.request(started)
            rt.stats.start()
            try:
                resp = await relay.open(call, to_chat, target.timeout_s)
            except asyncio.CancelledError:
                rt.stats.done()
                if breaker is not None:
                    breaker.release()
                raise
            except SluicegateError as exc:
                rt.stats.done()
                elapsed = clock() - started
                status = call.upstream_status
                # No answer at all (connection failure, timeout), or an answer whose status falls back.
                falls_back = (
                    status in fallback_on if status is not None else isinstance(exc, UpstreamError | UpstreamTimeout)
                )
                if breaker is not None:
                    breaker.record(not falls_back)
                self.attempts.append(Attempt(rt.label, status, elapsed * 1000.0, exc.code))
                if not falls_back:
                    raise
                last = exc
                queue.pop(0)
                if queue or len(self.attempts) >= policy.max_attempts:
                    continue
                # None left to fall back to: the same target again, if its budget and the deadline allow.
                if deadline is None:
                    total_s = self.route.provider.timeouts.total_s
                    deadline = call.deadline = time.monotonic() + total_s - (time.perf_counter() - call.started)
                delay = policy.delay_s(retries, self.service.rng, exc.retry_after)
                if delay is None or time.monotonic() + delay >= deadline:
                    break
                if not rt.budget.try_retry():
                    break
                retries += 1
                await asyncio.sleep(delay)
                queue.append((target, rt))
                continue
            now = clock()
            if shared.latency:
                rt.stats.observe_ttft(now - started)
            if breaker is not None:
                breaker.record(True, now)
            if self.attempts:
                # After failures: the audit lists them all (a first success is the event itself).
                self.attempts.append(Attempt(rt.label, call.upstream_status, (now - started) * 1000.0, None))
            self.served = rt
            return resp
        if last is not None:
            raise last
        if deadline is not None and time.monotonic() >= deadline:
            raise UpstreamTimeout(f"the call to model '{self.route.name}' ran out of time before an answer")
        raise UpstreamUnavailable(f"no target of model '{self.route.name}' is available (circuits open)")

    def finish(self) -> None:
        """The call ended: its served target has one call fewer in flight."""
        served, self.served = self.served, None
        if served is not None:
            served.stats.done()

    def attempts_json(self) -> list[dict[str, Any]]:
        return [a.as_dict() for a in self.attempts]
