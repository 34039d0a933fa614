"""Guardrails: the input guards of the call's consumer, groups and model, and the state its
answer's output guards use (in the relay, on the JSON answer or the stream's hold-back window).

Built only when the config has guards; with none attached to a call it costs one dict lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluicegate.guardrails.engine import CallGuards, Guardrails, check_request
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot


class GuardrailsStage:
    """Runs the input guards; leaves `call.guards` for the output side."""

    name = "guardrails"
    needs_body = True

    def __init__(self, rails: Guardrails) -> None:
        self.rails = rails

    async def on_request(self, call: Call) -> None:
        consumer = call.consumer
        model = call.model_requested
        if consumer is None or model is None:
            return
        route = call.snapshot.route_for(model)
        if route is None:
            return
        guards = self.rails.for_call(consumer, route)
        if guards is None:
            return
        state = call.guards = CallGuards(guards)
        await check_request(call, state)

    async def on_finish(self, call: Call) -> None:
        return None


def _factory(snapshot: Snapshot, services: Services) -> GuardrailsStage | None:
    if not snapshot.config.guards:
        return None
    if services.guard_context is None:
        raise RuntimeError("guards are configured but the gateway gave no guard context")
    return GuardrailsStage(Guardrails(snapshot.config, services.guard_context, snapshot.pins))


register_stage("guardrails", _factory)
