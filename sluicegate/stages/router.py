"""Router: the public model name -> its route (provider and upstream model name)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluicegate.stages.access import model_not_found
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot


class RouterStage:
    """Sets `call.route` from the snapshot's route table (exact names, then globs)."""

    name = "router"
    needs_body = True

    async def on_request(self, call: Call) -> None:
        model = call.model_requested
        assert model is not None
        route = call.snapshot.route_for(model)
        if route is None:
            raise model_not_found(model)
        call.route = route
        provider = route.provider
        call.provider = provider.name
        if provider.header_refs:
            # Secrets of referenced headers are read here, off the send path's synchronous code.
            await provider.resolve_header_secrets()

    async def on_finish(self, call: Call) -> None:
        return None


def _factory(snapshot: Snapshot, services: Services) -> RouterStage:
    for provider in snapshot.providers.values():
        provider.bind_vault(services.vault)
    return RouterStage()


register_stage("router", _factory)
