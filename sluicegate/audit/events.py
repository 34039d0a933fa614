"""The audit event: one per call, whatever its outcome; never a secret, never a prompt."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True, kw_only=True)
class AuditEvent:
    """What the gateway records of one call (`sluicegate audit tail` prints these).

    Made by keyword; what a call did not have (no consumer, no model, no usage) defaults to None,
    so that events that are not calls (summaries, alerts, retention) name only what they hold."""

    request_id: str
    ts: float
    endpoint: str
    consumer: str | None = None
    key_id: str | None = None
    client_ip: str | None = None
    model_requested: str | None = None
    model_served: str | None = None
    provider: str | None = None
    stream: bool = False
    status: int
    upstream_status: int | None = None
    decision: str
    outcome: str
    reason: str | None = None
    #: the id of the rule that refused the call (`consumers.bob.models`, `groups.eng.time_windows`)
    rule: str | None = None
    #: guard decisions as a JSON list (guard, kind, action, direction, part, label)
    guards: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    #: of the prompt tokens, those read from the provider's cache, and those written to it
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    #: of the completion tokens, the reasoning (thinking) ones
    reasoning_tokens: int | None = None
    usage_source: str = "none"
    cost_micro_usd: int | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    #: HMACs (hex) of the request body as received and the response body as sent, under the
    #: audit content key: they prove what was said without keeping it
    prompt_hmac: str | None = None
    answer_hmac: str | None = None
    #: the request (after the guards' redactions) and the answer as sent, as JSON, where content
    #: capture is enabled for the call (`audit.capture`), cut to its size bound
    content: str | None = None
    #: what the response cache did: hit, semantic_hit, miss or bypass (None: not a cached call)
    cache: str | None = None
    #: what a cache hit saved: the cost of the answer it served, at the current prices
    cache_saved_micro_usd: int | None = None
    #: a multi-target route's attempts as a JSON list (target, status, ms, error), in order, when
    #: the call made more than one (a fallback, a retry, a target skipped as open)
    attempts: str | None = None
    #: the routing rules that chose or narrowed where the call could go: a model's `when` rule
    #: (`models.smart.when.private-data`) and the pins that held (`routing.pins.eu-data`), by comma
    routed_by: str | None = None
    #: the gateway process that wrote the event (`SLUICEGATE_INSTANCE_ID`, else `host:pid`): with
    #: several instances or workers on one store, which one served the call
    instance: str | None = None
    #: the door the call came in by when it was not the data plane: `egress` (the forward proxy)
    door: str | None = None
    #: through the egress proxy: the host the client was going to (blocked, tunnelled or intercepted)
    egress_host: str | None = None

    def as_row(self) -> dict[str, Any]:
        """Column values for the store."""
        return asdict(self)


FIELDS = tuple(AuditEvent.__dataclass_fields__)
