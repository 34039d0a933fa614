"""Audit: exactly one event per call, handed to the group-committing writer.

With `audit.durability: queued` the event is queued (no I/O); with `before_response` the stage
waits until the writer has committed it (to the store, or else the spill file) and the pipeline
sends the response's last byte only then. With `audit.on_failure: refuse`, calls are refused
(503 `audit_unavailable`) while the audit store cannot be written or the queue is full, so
nothing goes unrecorded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import orjson

from sluicegate.audit.content import AnswerTap, Capture, request_text
from sluicegate.audit.events import AuditEvent
from sluicegate.audit.failures import AuthFailureAggregator
from sluicegate.audit.reason import reason_of
from sluicegate.audit.writer import AuditNotDurable
from sluicegate.egress.context import DOOR
from sluicegate.errors import ServiceUnavailable
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.audit.chain import ChainKey
    from sluicegate.audit.writer import AuditWriter
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot

log = logging.getLogger("sluicegate.audit")


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
        *,
        before_response: bool = False,
        commit_timeout_s: float = 5.0,
        content_key: ChainKey | None = None,
        capture: Capture | None = None,
    ) -> None:
        self.writer = writer
        #: the key of the content HMACs (None: no HMACs)
        self.content_key = content_key
        self.capture = capture if capture else None
        self.refuse_when_unhealthy = refuse_when_unhealthy
        self.failures = failures
        self.before_response = before_response
        self.commit_timeout_s = commit_timeout_s
        self.unknown_urls = unknown_urls or AuthFailureAggregator(status=404, outcome="unknown_urls_aggregated")

    async def on_request(self, call: Call) -> None:
        if self.refuse_when_unhealthy and not self.writer.accepting:
            raise ServiceUnavailable(
                "The audit store cannot be written; calls are refused until it recovers",
                code="audit_unavailable",
            )
        key = self.content_key
        if key is not None:
            # The call passed every policy stage: what the client is sent from here is its answer.
            capture = self.capture
            limit = 0
            if capture is not None:
                consumer = call.consumer
                limit = capture.limit(
                    consumer.name if consumer is not None else None,
                    consumer.groups if consumer is not None else (),
                    call.model_requested,
                )
            call.answer_tap = AnswerTap(key.content_mac(), limit)

    async def on_finish(self, call: Call) -> None:
        failures = self.failures
        if call.status == 401 and not failures.admit(call.client_ip):
            return  # counted: the source's summary event will say how many
        unknown = self.unknown_urls
        if call.status in (404, 405) and call.consumer is None and not unknown.admit(call.client_ip):
            return  # a scanner without a key: counted the same way
        event = event_of(call)
        key = self.content_key
        if key is not None:
            _add_content(event, call, key)
        for summary in failures.due():
            self.writer.submit(summary)
        for summary in unknown.due():
            self.writer.submit(summary)
        if self.before_response:
            await self._commit(event)
        else:
            self.writer.submit(event)

    async def _commit(self, event: AuditEvent) -> None:
        """Wait until the event is durable; past `commit_timeout_s`, write it to the spill file first.

        Raises `AuditNotDurable` when neither the store nor the spill file took it: the pipeline
        then leaves the response without its last byte, so the client sees it fail.
        """
        writer = self.writer
        future = writer.commit(event)
        try:
            async with asyncio.timeout(self.commit_timeout_s):
                durable = await future
        except TimeoutError:
            # The store is slow: the spill file holds the event before the response completes (the
            # writer still writes its queued copy; the replay skips whichever comes second).
            durable = await asyncio.shield(asyncio.to_thread(writer.spill_now, event))
        if not durable:
            log.critical(
                "audit event %s could be written neither to the store nor to the spill file: "
                "its response is not completed",
                event.request_id,
            )
            raise AuditNotDurable(event.request_id)


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
        reason=reason_of(call) if call.error is not None else None,
        rule=error.rule if error is not None else None,
        guards=_guards(call),
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        total_tokens=call.total_tokens,
        cached_tokens=call.cached_tokens,
        cache_write_tokens=call.cache_write_tokens,
        reasoning_tokens=call.reasoning_tokens,
        usage_source=call.usage_source,
        cost_micro_usd=call.cost_micro_usd,
        latency_ms=round(call.elapsed_ms(), 3),
        ttft_ms=round(call.ttft_ms, 3) if call.ttft_ms is not None else None,
        cache=call.cache.audit_value() if call.cache is not None else None,
        cache_saved_micro_usd=call.cache.saved_micro_usd if call.cache is not None else None,
        attempts=_attempts(call),
        routed_by=call.routed_by,
        door=DOOR if call.egress_host is not None else None,
        egress_host=call.egress_host,
    )


def _attempts(call: Call) -> str | None:
    """A multi-target call's attempts, when there was more than the one its event describes."""
    plan = call.plan
    if plan is None or len(plan.attempts) < 2:
        return None
    return orjson.dumps(plan.attempts_json()).decode()


def _add_content(event: AuditEvent, call: Call, key: ChainKey) -> None:
    """The HMACs of the call's request and answer, and its content where it is captured."""
    raw = call.raw_body
    if raw is not None:
        mac = key.content_mac()
        mac.update(raw)
        event.prompt_hmac = mac.hexdigest()
    tap = call.answer_tap
    if tap is None:
        return
    event.answer_hmac = tap.hexdigest()
    if tap.limit and call.decision == "allowed" and call.body is not None:
        # `call.body` is the guards' redacted copy where they redacted; blocked calls keep no content.
        answer = tap.text()
        event.content = orjson.dumps({"request": request_text(call.body, tap.limit), "response": answer}).decode()


def _guards(call: Call) -> str | None:
    state = call.guards
    if state is None or not state.records:
        return None
    return orjson.dumps([r.as_dict() for r in state.records]).decode()


def _factory(snapshot: Snapshot, services: Services) -> AuditStage:
    cfg = snapshot.audit
    services.auth_failures.configure(cfg.auth_failure_window_s, cfg.auth_failures_per_window)
    services.unknown_urls.configure(cfg.auth_failure_window_s, cfg.auth_failures_per_window)
    services.audit.configure(cfg.batch_size, cfg.flush_interval_s, cfg.retry_s, cfg.max_queue_events)
    return AuditStage(
        services.audit,
        cfg.on_failure == "refuse",
        services.auth_failures,
        services.unknown_urls,
        before_response=cfg.durability == "before_response",
        commit_timeout_s=cfg.commit_timeout_s,
        content_key=services.audit_key if cfg.content_hmac else None,
        capture=Capture(cfg.capture),
    )


register_stage("audit", _factory)
