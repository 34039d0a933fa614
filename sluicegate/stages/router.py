"""Router: the public model name -> its route (provider and upstream model name); for a model with
several targets, the order this call tries them in (`routing.service.RoutePlan`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluicegate.errors import UpstreamUnavailable
from sluicegate.limits.prices import PriceBook
from sluicegate.routing.service import RoutingService
from sluicegate.stages.access import model_not_found
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot


class RouterStage:
    """Sets `call.route` from the snapshot's route table (exact names, then globs)."""

    name = "router"
    needs_body = True

    def __init__(self, routing: RoutingService, prices: PriceBook) -> None:
        self.routing = routing
        self.prices = prices

    async def on_request(self, call: Call) -> None:
        model = call.model_requested
        assert model is not None
        route = call.snapshot.route_for(model)
        if route is None:
            raise model_not_found(model)
        if route.targets:
            plan = call.plan = self.routing.plan(call, route, call.consumer, self.prices)
            first = plan.first
            if first is None:
                raise UpstreamUnavailable(f"no target of model '{route.name}' is available (circuits open)")
            route = first
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


def _factory(snapshot: Snapshot, services: Services) -> RouterStage:
    for provider in snapshot.providers.values():
        provider.bind_vault(services.vault)
    return RouterStage(services.routing, PriceBook(snapshot.config))


register_stage("router", _factory)
