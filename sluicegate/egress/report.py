"""`sluicegate report shadow-ai`: what the egress proxy saw over a period, by source and host.

Read from the audit trail: the door's own events (blocked, denied, allowed tunnels) and the calls
it intercepted (`door = 'egress'` with an API endpoint). Plain data, JSON-ready.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sluicegate.egress.context import DOOR
from sluicegate.egress.events import EGRESS_ALLOWED, EGRESS_DENIED, ENDPOINT, SHADOW_AI_BLOCKED
from sluicegate.store.db import audit_events

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: the report's counts, in its column order
KINDS = ("blocked", "intercepted", "allowed", "denied")


def shadow_ai_report(engine: Engine, since: float, until: float, limit: int = 1000) -> dict[str, Any]:
    """Blocked, intercepted, allowed and denied attempts over [since, until), by source address,
    consumer (when the proxy or the call identified one) and host, most blocked first."""
    t = audit_events.c
    door_event = t.endpoint == ENDPOINT
    counts = {
        "blocked": sa.func.sum(sa.case((door_event & (t.outcome == SHADOW_AI_BLOCKED), 1), else_=0)),
        "intercepted": sa.func.sum(sa.case((~door_event, 1), else_=0)),
        "allowed": sa.func.sum(sa.case((door_event & (t.outcome == EGRESS_ALLOWED), 1), else_=0)),
        "denied": sa.func.sum(sa.case((door_event & (t.outcome == EGRESS_DENIED), 1), else_=0)),
    }
    query = (
        sa.select(
            t.client_ip,
            t.consumer,
            t.egress_host,
            *(value.label(name) for name, value in counts.items()),
            sa.func.min(t.ts).label("first"),
            sa.func.max(t.ts).label("last"),
        )
        .where(t.door == DOOR, t.ts >= since, t.ts < until, t.egress_host.is_not(None))
        .group_by(t.client_ip, t.consumer, t.egress_host)
        .order_by(sa.desc("blocked"), sa.desc("intercepted"), t.egress_host, t.client_ip)
        .limit(limit)
    )
    with engine.connect() as conn:
        result = conn.execute(query).all()
    rows = [
        {
            "source": r.client_ip,
            "consumer": r.consumer,
            "host": r.egress_host,
            **{kind: int(getattr(r, kind) or 0) for kind in KINDS},
            "first_seen": _iso(r.first),
            "last_seen": _iso(r.last),
        }
        for r in result
    ]
    rows = [row for row in rows if any(row[kind] for kind in KINDS)]
    totals = {kind: sum(row[kind] for row in rows) for kind in KINDS}
    return {"since": _iso(since), "until": _iso(until), "rows": rows, "totals": totals}


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
