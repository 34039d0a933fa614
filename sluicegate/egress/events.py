"""The audit events of the egress door's own decisions (blocked, denied, tunnelled), written by the
gateway's audit writer into the one chain. Intercepted calls are audited by the pipeline."""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass

from sluicegate.audit.events import AuditEvent
from sluicegate.egress.context import DOOR

ENDPOINT = "egress"
#: outcomes of the door's decisions (`sluicegate report shadow-ai` counts them)
SHADOW_AI_BLOCKED = "shadow_ai_blocked"
EGRESS_ALLOWED = "egress_allowed"
EGRESS_DENIED = "egress_denied"
EGRESS_UNAUTHORIZED = "egress_unauthorized"
EGRESS_UNREACHABLE = "egress_unreachable"

_PREFIX = "egr_" + secrets.token_hex(6)
_IDS = itertools.count(1)


@dataclass(slots=True)
class Caller:
    """Who is using the proxy: the source address, and the consumer its proxy credentials name."""

    client_ip: str | None
    #: the proxy user name as sent (shown in logs, not trusted for identity)
    user: str | None = None
    consumer: str | None = None
    key_id: str | None = None
    #: the gateway key given as proxy password (never audited or logged)
    key: str | None = None


def door_event(
    caller: Caller,
    host: str | None,
    *,
    status: int,
    decision: str,
    outcome: str,
    reason: str,
    rule: str | None = None,
    started: float | None = None,
) -> AuditEvent:
    """An audit event for one of the door's own decisions."""
    now = time.time()
    return AuditEvent(
        request_id=f"{_PREFIX}{next(_IDS):010x}",
        ts=started if started is not None else now,
        endpoint=ENDPOINT,
        consumer=caller.consumer,
        key_id=caller.key_id,
        client_ip=caller.client_ip,
        status=status,
        decision=decision,
        outcome=outcome,
        reason=reason,
        rule=rule,
        latency_ms=round((now - started) * 1000, 3) if started is not None else 0.0,
        door=DOOR,
        egress_host=host,
    )
