"""Metrics: every finished call counted in the gateway's Prometheus metrics.

Runs last among the finishers (`pipeline.FINISH_ORDER`), when status, decision, usage, cost and
guard verdicts are settled; refusals the audit aggregates (401s, unknown URLs) are counted here one
by one. Nothing happens on the way in. With `observability.metrics.enabled: false` the stage is not
in the pipeline at all. What is recorded, and how labels are bounded: `observability.metrics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot
    from sluicegate.observability.recorder import CallRecorder


class MetricsStage:
    """Records each finished call."""

    name = "metrics"
    needs_body = False

    def __init__(self, recorder: CallRecorder) -> None:
        self.recorder = recorder
        self._record = recorder.record

    async def on_request(self, call: Call) -> None:
        return None

    async def on_finish(self, call: Call) -> None:
        self._record(call)


def _factory(snapshot: Snapshot, services: Services) -> MetricsStage | None:
    metrics = services.metrics
    if metrics is None or not snapshot.config.observability.metrics.enabled:
        return None
    return MetricsStage(metrics.recorder(snapshot))


register_stage("metrics", _factory)
