"""The audit event: one per call, whatever its outcome; never a secret, never a prompt."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True, kw_only=True)
class AuditEvent:
    """What the gateway records of one call (`sluicegate audit tail` prints these).

    Made by keyword; fields added after the first release default to None, so that code written
    before them still makes events."""

    request_id: str
    ts: float
    endpoint: str
    consumer: str | None
    key_id: str | None
    client_ip: str | None
    model_requested: str | None
    model_served: str | None
    provider: str | None
    stream: bool
    status: int
    upstream_status: int | None
    decision: str
    outcome: str
    reason: str | None
    #: the id of the rule that refused the call (`consumers.bob.models`, `groups.eng.time_windows`)
    rule: str | None
    #: guard decisions as a JSON list (guard, kind, action, direction, part, label)
    guards: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    #: of the prompt tokens, those read from the provider's cache, and those written to it
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    #: of the completion tokens, the reasoning (thinking) ones
    reasoning_tokens: int | None = None
    usage_source: str
    cost_micro_usd: int | None
    latency_ms: float
    ttft_ms: float | None
    #: HMACs (hex) of the request body as received and the response body as sent, under the
    #: audit content key: they prove what was said without keeping it
    prompt_hmac: str | None = None
    answer_hmac: str | None = None
    #: the request (after the guards' redactions) and the answer as sent, as JSON, where content
    #: capture is enabled for the call (`audit.capture`), cut to its size bound
    content: str | None = None

    def as_row(self) -> dict[str, Any]:
        """Column values for the store."""
        return asdict(self)


FIELDS = tuple(AuditEvent.__dataclass_fields__)
