"""The durable ledger of spend: the audit trail, read back by scope and period.

Every call's audit event carries its cost, tokens and who made it; reaped reservations are
audited at their estimate. Counters are a fast, shared view of the same spend; the
reconciliation (`limits.reconcile`) and `sluicegate spend` read this ledger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sluicegate.store.db import audit_events

#: the audit column of each scope
SCOPE_COLUMNS = {
    "consumer": audit_events.c.consumer,
    "key": audit_events.c.key_id,
    "model": audit_events.c.model_requested,
    "provider": audit_events.c.provider,
}
#: what `sluicegate spend` groups by
GROUPINGS = ("consumer", "group", "model", "provider", "key")


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Spend and tokens of one consumer, group, model, provider or key over a period."""

    name: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_micro: int


def _period(since: float, until: float) -> sa.ColumnElement[bool]:
    return sa.and_(audit_events.c.ts >= since, audit_events.c.ts < until)


def ledger_total(
    engine: Engine, scope: str, value: str, since: float, until: float, members: Sequence[str] = ()
) -> int:
    """Spend (micro-units) of one scope value in [since, until): `members` are a group's consumers."""
    query = sa.select(sa.func.coalesce(sa.func.sum(audit_events.c.cost_micro_usd), 0)).where(_period(since, until))
    if scope == "group":
        if not members:
            return 0
        query = query.where(audit_events.c.consumer.in_(list(members)))
    elif scope != "gateway":
        query = query.where(SCOPE_COLUMNS[scope] == value)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def spend_rows(
    engine: Engine, keys: Sequence[sa.ColumnElement[Any]], since: float, until: float
) -> list[tuple[Any, ...]]:
    """Calls, prompt tokens, completion tokens and cost over [since, until), grouped by `keys`:
    one tuple `(*key values, calls, prompt, completion, cost)` per group.

    The one aggregation of spend: `sluicegate spend` and the usage report both read it, so their
    numbers agree. Spend of the limits' own bookkeeping events is left out; a reaped reservation
    is spend (at its estimate), not a call of its own."""
    columns = audit_events.c
    # Keys are computed in a subquery and grouped by name: the outer query repeats no expression.
    inner = (
        sa.select(
            *(key.label(f"k{i}") for i, key in enumerate(keys)),
            columns.outcome,
            columns.prompt_tokens,
            columns.completion_tokens,
            columns.cost_micro_usd,
        )
        .where(_period(since, until))
        .where(columns.endpoint != "limits")
        .subquery()
    )
    group = [inner.c[f"k{i}"] for i in range(len(keys))]
    is_call = sa.case((inner.c.outcome == "reservation_reaped", 0), else_=1)
    query = sa.select(
        *group,
        sa.func.sum(is_call),
        sa.func.coalesce(sa.func.sum(inner.c.prompt_tokens), 0),
        sa.func.coalesce(sa.func.sum(inner.c.completion_tokens), 0),
        sa.func.coalesce(sa.func.sum(inner.c.cost_micro_usd), 0),
    ).group_by(*group)
    width = len(keys)
    with engine.connect() as conn:
        return [
            (*row[:width], int(row[width] or 0), int(row[width + 1]), int(row[width + 2]), int(row[width + 3]))
            for row in conn.execute(query)
        ]


def spend_by(
    engine: Engine, by: str, since: float, until: float, groups: Mapping[str, Sequence[str]] | None = None
) -> list[SpendRow]:
    """Spend and tokens over [since, until) grouped `by` a scope, the largest spend first.

    `groups`: each group's consumers (from the config), for `by="group"` (a consumer in several
    groups counts in each)."""
    column = audit_events.c.consumer if by == "group" else SCOPE_COLUMNS[by]
    rows = spend_rows(engine, [column], since, until)
    totals: dict[str, list[int]] = {}
    for name, n, p, c, cost in rows:
        keys = [name or "-"]
        if by == "group":
            keys = [g for g, members in (groups or {}).items() if name in members] or ["(no group)"]
        for key in keys:
            acc = totals.setdefault(key, [0, 0, 0, 0])
            acc[0] += n
            acc[1] += p
            acc[2] += c
            acc[3] += cost
    out = [SpendRow(name, *values) for name, values in totals.items()]
    out.sort(key=lambda r: (-r.cost_micro, r.name))
    return out
