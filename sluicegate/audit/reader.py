"""Reading the audit trail back (CLI, admin)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sluicegate.store.db import audit_events


def latest_events(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The `limit` most recent audit events, oldest first, as dicts."""
    query = sa.select(audit_events).order_by(audit_events.c.seq.desc()).limit(limit)
    with engine.connect() as conn:
        rows = [{str(k): v for k, v in row._mapping.items()} for row in conn.execute(query)]
    rows.reverse()
    for row in rows:
        row.pop("seq", None)
    return rows
