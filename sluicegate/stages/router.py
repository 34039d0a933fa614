"""Router: the public model name -> its route (provider and upstream model name); for a model with
several targets, the order this call tries them in (`routing.service.RoutePlan`).

After the input guards, so what they found can choose the targets: a model's first `when` rule
that holds replaces its targets (`routing.rules`), and the pins that hold for the call narrow
whatever targets it has to the providers and regions they allow, fallbacks included. The call's
deadline is set here too: the model's `timeout_s` or the client's own deadline header, whichever
ends first.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from sluicegate.errors import BadRequest, Forbidden, UpstreamUnavailable
from sluicegate.limits.prices import PriceBook
from sluicegate.routing.service import RoutingService
from sluicegate.stages.access import model_not_found
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Route, Snapshot
    from sluicegate.routing.rules import Choice, Pin

#: the gateway's own deadline header: a client's error in it is a 400 (others are ignored)
OWN_DEADLINE_HEADER = b"x-sluicegate-timeout"
#: the longest deadline a header may set (a day), and the shortest (a millisecond)
MAX_DEADLINE_S = 86400.0
MIN_DEADLINE_S = 0.001


class RoutePinned(Forbidden):
    """No target of the call's route is one its pins (or its provider rules) allow."""

    code = "route_not_permitted"


class RouterStage:
    """Sets `call.route` from the snapshot's route table (exact names, then globs)."""

    name = "router"
    needs_body = True

    def __init__(self, routing: RoutingService, prices: PriceBook, deadline_headers: list[str]) -> None:
        self.routing = routing
        self.prices = prices
        self.deadline_headers = tuple(h.lower().encode() for h in deadline_headers)

    async def on_request(self, call: Call) -> None:
        model = call.model_requested
        assert model is not None
        route = call.snapshot.route_for(model)
        if route is None:
            raise model_not_found(model)
        route, chosen, pins = chosen_route(call, route)
        if chosen is not None or pins:
            rules = [p.rule for p in pins]
            call.routed_by = ",".join([chosen, *rules] if chosen is not None else rules)
        client_s = self._client_deadline(call) if self.deadline_headers else None
        if route.targets:
            plan = call.plan = self.routing.plan(call, route, call.consumer, self.prices, pins)
            first = plan.first
            if first is None:
                if not plan.permitted:
                    raise not_permitted(call, route, pins)
                raise UpstreamUnavailable(f"no target of model '{route.name}' is available (circuits open)")
            route = first
        elif pins and not all(p.allows(route.provider) for p in pins):
            raise not_permitted(call, route, pins)
        total_s = route.config.timeout_s
        if client_s is not None and (total_s is None or client_s < total_s):
            total_s = client_s
        if total_s is not None:
            # (else the provider's timeouts bound each attempt, and a plan's retries stop within
            # the first one's total time)
            call.deadline = _deadline(call, total_s)
        call.route = route
        provider = route.provider
        call.provider = provider.name
        if provider.header_refs:
            # Secrets of referenced headers are read here, off the send path's synchronous code.
            await provider.resolve_header_secrets()

    async def on_finish(self, call: Call) -> None:
        plan = call.plan
        if plan is not None:
            plan.finish()

    def _client_deadline(self, call: Call) -> float | None:
        """The client's deadline for the whole call, in seconds, from the first header present."""
        headers = call.headers
        for name in self.deadline_headers:
            raw = headers.get(name)
            if raw is None:
                continue
            try:
                value = float(raw.strip())
            except ValueError:
                value = math.nan
            if math.isfinite(value) and value > 0:
                return min(max(value, MIN_DEADLINE_S), MAX_DEADLINE_S)
            if name == OWN_DEADLINE_HEADER:
                raise BadRequest(
                    f"Invalid '{name.decode()}' header: a number of seconds greater than 0 is expected",
                    param=name.decode(),
                )
        return None


def _deadline(call: Call, total_s: float) -> float:
    """The `time.monotonic()` by which a call must be done that has `total_s` from its arrival."""
    return time.monotonic() + total_s - (time.perf_counter() - call.started)


def when_rule(call: Call, route: Route) -> Choice | None:
    """The first of the model's `when` rules that holds for the call (None: its own targets serve)."""
    for choice in route.rules:
        if choice.match.holds(call):
            return choice
    return None


def chosen_route(call: Call, route: Route) -> tuple[Route, str | None, tuple[Pin, ...]]:
    """The route the call takes (its model's, or the first `when` rule's that holds), that rule's
    id, and the pins that apply to the call. The router and `sluicegate policy` both choose here."""
    chosen: str | None = None
    if route.rules:
        choice = when_rule(call, route)
        if choice is not None:
            route, chosen = choice.route, choice.rule
    pins_config = call.snapshot.pins
    return route, chosen, pins_config.active(call) if pins_config is not None else ()


def not_permitted(call: Call, route: Route, pins: tuple[Pin, ...]) -> RoutePinned:
    """The refusal of a call none of whose targets its pins (or provider rules) allow."""
    blocking = [p for p in pins if not any(p.allows(t.provider) for t in (route.targets or (route,)))]
    if blocking:
        pin = blocking[0]
        return RoutePinned(
            f"No target of model '{route.name}' may serve this call: pin '{pin.rule}' allows {pin.allowed} only",
            rule=pin.rule,
        )
    consumer = call.consumer
    rule = consumer.providers_rule if consumer is not None else ""
    return RoutePinned(
        f"No target of model '{route.name}' may serve this call: its providers are not allowed together with "
        "the call's provider rules and pins",
        rule=rule or None,
    )


def _factory(snapshot: Snapshot, services: Services) -> RouterStage:
    for provider in snapshot.providers.values():
        provider.bind_vault(services.vault)
    routing = snapshot.config.routing
    return RouterStage(services.routing, PriceBook(snapshot.config), routing.deadline_headers)


register_stage("router", _factory)
