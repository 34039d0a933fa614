"""Audit: exactly one event per call, queued for the group-committing writer.

With `audit.on_failure: refuse`, calls are refused (503 `audit_unavailable`) while the audit
store cannot be written, so nothing goes unrecorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from sluicegate.audit.events import AuditEvent
from sluicegate.audit.failures import AuthFailureAggregator
from sluicegate.errors import ServiceUnavailable
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.audit.writer import AuditWriter
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot


class AuditStage:
    """Turns the finished call into its audit event."""

    name = "audit"
    needs_body = False

    def __init__(
        self,
        writer: AuditWriter,
        refuse_when_unhealthy: bool,
        failures: AuthFailureAggregator,
        unknown_urls: AuthFailureAggregator | None = None,
    ) -> None:
        self.writer = writer
        self.refuse_when_unhealthy = refuse_when_unhealthy
        self.failures = failures
        self.unknown_urls = unknown_urls or AuthFailureAggregator(status=404, outcome="unknown_urls_aggregated")

    async def on_request(self, call: Call) -> None:
        if self.refuse_when_unhealthy and not self.writer.healthy:
            raise ServiceUnavailable(
                "The audit store cannot be written; calls are refused until it recovers",
                code="audit_unavailable",
            )

    async def on_finish(self, call: Call) -> None:
        failures = self.failures
        if call.status == 401 and not failures.admit(call.client_ip):
            return  # counted: the source's summary event will say how many
        unknown = self.unknown_urls
        if call.status in (404, 405) and call.consumer is None and not unknown.admit(call.client_ip):
            return  # a scanner without a key: counted the same way
        self.writer.submit(event_of(call))
        for summary in failures.due():
            self.writer.submit(summary)
        for summary in unknown.due():
            self.writer.submit(summary)


def event_of(call: Call) -> AuditEvent:
    """The audit event of a finished call."""
    error = call.error
    consumer = call.consumer
    return AuditEvent(
        request_id=call.request_id,
        ts=call.started_wall,
        endpoint=call.endpoint,
        consumer=consumer.name if consumer is not None else None,
        key_id=call.key_id,
        client_ip=call.client_ip,
        model_requested=call.model_requested,
        model_served=call.model_served,
        provider=call.provider,
        stream=call.stream,
        status=call.status,
        upstream_status=call.upstream_status,
        decision=call.decision,
        outcome=call.outcome,
        reason=error.message if error is not None else None,
        rule=error.rule if error is not None else None,
        guards=_guards(call),
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        total_tokens=call.total_tokens,
        usage_source=call.usage_source,
        cost_micro_usd=call.cost_micro_usd,
        latency_ms=round(call.elapsed_ms(), 3),
        ttft_ms=round(call.ttft_ms, 3) if call.ttft_ms is not None else None,
    )


def _guards(call: Call) -> str | None:
    state = call.guards
    if state is None or not state.records:
        return None
    return orjson.dumps([r.as_dict() for r in state.records]).decode()


def _factory(snapshot: Snapshot, services: Services) -> AuditStage:
    window_s, per_window = snapshot.audit.auth_failure_window_s, snapshot.audit.auth_failures_per_window
    services.auth_failures.configure(window_s, per_window)
    services.unknown_urls.configure(window_s, per_window)
    return AuditStage(
        services.audit, snapshot.audit.on_failure == "refuse", services.auth_failures, services.unknown_urls
    )


register_stage("audit", _factory)
