"""Tracing: the call's span opens first and ends last, after audit (see `observability.tracing`).

Built only when `observability.tracing.enabled`; without it nothing here runs and no OpenTelemetry
module is imported. The stages of `TRACED_STAGES` run inside child spans of the call's (`traced`),
wrapped when the pipeline is built, so an untraced pipeline has no wrapper at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sluicegate.observability.config import OTEL_EXTRA
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot
    from sluicegate.observability.config import TracingConfig
    from sluicegate.observability.tracing import Tracing
    from sluicegate.stages.base import Stage
    from sluicegate.vault import Vault

#: stages whose `on_request` gets a child span: its name, and what says the stage had work for the
#: call (None: always). Only those that may wait on a store or a service; the others decide from
#: memory in microseconds, less than a span costs (about 50 us to make and export with the Python
#: SDK), and their time shows as the gap before the upstream span.
TRACED_STAGES: dict[str, tuple[str, Callable[[Call], bool] | None]] = {
    "limits": ("limits", lambda call: call.limits is not None),
    "guardrails": ("guardrails.input", lambda call: call.guards is not None),
    "cache": ("cache", lambda call: call.cache is not None),
}


class TracingStage:
    """Opens the call's span (the gateway's current tracer provider) and ends it at the finish."""

    name = "tracing"
    needs_body = False

    def __init__(self, services: Services) -> None:
        # Read per call: a config reload may replace the provider (`Gateway.reload`).
        self.services = services

    async def on_request(self, call: Call) -> None:
        tracing = self.services.tracing
        if tracing is not None:
            call.trace = tracing.start(call)

    async def on_finish(self, call: Call) -> None:
        trace = call.trace
        if trace is not None:
            call.trace = None
            trace.finish(call)

    def traced(self, stages: Sequence[Stage]) -> list[Stage]:
        """`stages` with each one of `TRACED_STAGES` wrapped in a child span."""
        return [
            TracedStage(stage, *TRACED_STAGES[stage.name]) if stage.name in TRACED_STAGES else stage for stage in stages
        ]


class TracedStage:
    """A stage whose `on_request` gets a child span of the call's, when the call has a span and the
    stage had work for it (or refused it). The span is made once the stage returned, with the time
    it started: a stage with nothing to do for a call costs no span."""

    def __init__(self, stage: Stage, span_name: str, worked: Callable[[Call], bool] | None) -> None:
        self.stage = stage
        self.name = stage.name
        self.needs_body = stage.needs_body
        self.span_name = span_name
        self.worked = worked

    async def on_request(self, call: Call) -> None:
        trace = call.trace
        if trace is None or not trace.recording:
            await self.stage.on_request(call)
            return
        started = time.time_ns()
        try:
            await self.stage.on_request(call)
        except BaseException as exc:
            trace.record(self.span_name, started, exc)
            raise
        if self.worked is None or self.worked(call):
            trace.record(self.span_name, started)

    async def on_finish(self, call: Call) -> None:
        await self.stage.on_finish(call)


async def tracing_for(config: TracingConfig, current: Tracing | None, vault: Vault) -> Tracing | None:
    """The tracer provider for `config`: None when tracing is off, `current` when its settings did
    not change, else a new one (the caller retires `current` once the new one serves)."""
    if not config.enabled:
        return None
    if current is not None and current.config == config:
        return current
    try:
        from sluicegate.observability.tracing import Tracing
    except ImportError:
        raise RuntimeError(f"tracing needs the OpenTelemetry packages: pip install '{OTEL_EXTRA}'") from None
    return await Tracing.create(config, vault)


def _factory(snapshot: Snapshot, services: Services) -> TracingStage | None:
    if not snapshot.config.observability.tracing.enabled:
        return None
    return TracingStage(services)


register_stage("tracing", _factory)
