"""Access: may this consumer use the model it asked for (its allow-list of names and globs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluicegate.errors import Forbidden, NotFound
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot


def model_not_found(model: str) -> NotFound:
    """The refusal for a model the gateway does not serve."""
    return NotFound(
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


class AccessStage:
    """Refuses (403) a model outside the consumer's allow-list; 404 for models nobody serves."""

    name = "access"
    needs_body = True

    async def on_request(self, call: Call) -> None:
        consumer = call.consumer
        model = call.model_requested
        if consumer is None or model is None:
            return
        if consumer.may_use(model):
            return
        if call.snapshot.route_for(model) is None:
            raise model_not_found(model)
        raise Forbidden(
            f"Consumer '{consumer.name}' may not use the model '{model}'",
            code="model_not_allowed",
            param="model",
            rule=f"consumers.{consumer.name}.models",
        )

    async def on_finish(self, call: Call) -> None:
        return None


def _factory(snapshot: Snapshot, services: Services) -> AccessStage:
    return AccessStage()


register_stage("access", _factory)
