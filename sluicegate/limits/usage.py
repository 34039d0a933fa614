"""Usage and cost by day, consumer and model over a period: `sluicegate report`, later the admin UI.

The numbers come from the ledger's one aggregation (`ledger.spend_rows`), so a consumer's total
here is what `sluicegate spend --by consumer` shows for the same period. Days are the calendar
days of a time zone (`windows.local_days`: 23 or 25 hours across a DST change), and events are
bucketed into them by the database: runs of 24-hour days share one arithmetic expression, each
other day is a range of its own, so the SQL stays a few branches long over any period.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sluicegate.limits.ledger import spend_rows
from sluicegate.limits.windows import local_days
from sluicegate.store.db import audit_events

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

DAY_S = 86400.0
#: the fields of a usage row, in a CSV's column order
ROW_FIELDS = ("day", "consumer", "model", "calls", "prompt_tokens", "completion_tokens", "cost_micro", "cost")

Days = Sequence[tuple[dt.date, float, float]]


def usage_report(
    engine: Engine, since: float, until: float, zone: zoneinfo.ZoneInfo, currency: str = "USD"
) -> dict[str, Any]:
    """Calls, tokens and cost over [since, until) by day (in `zone`), consumer and model, plain and JSON-ready.

    `rows`: one per day, consumer and model that has usage (days in order, the largest cost
    first); `consumers`: each consumer's totals, the largest cost first; `days`: every day of the
    period with its totals, also those without usage. Costs are integer micro-units of `currency`."""
    days = local_days(since, until, zone)
    by_row: dict[tuple[int, str, str], list[int]] = {}
    by_day = [[0, 0, 0, 0] for _ in days]
    by_consumer: dict[str, list[int]] = {}
    if days:
        columns = audit_events.c
        keys = [day_index(engine.dialect.name, days), columns.consumer, columns.model_requested]
        for index, consumer, model, *values in spend_rows(engine, keys, since, until):
            # A time a hair before a day's end may round into the next day: never past the period.
            day = min(max(int(index), 0), len(days) - 1)
            name = consumer or "-"
            for acc in (by_row.setdefault((day, name, model or "-"), [0, 0, 0, 0]), by_day[day],
                        by_consumer.setdefault(name, [0, 0, 0, 0])):  # fmt: skip
                for i, value in enumerate(values):
                    acc[i] += value
    rows = [_totals({"day": days[d][0].isoformat(), "consumer": c, "model": m}, v) for (d, c, m), v in by_row.items()]
    rows.sort(key=lambda r: (r["day"], -r["cost_micro"], r["consumer"], r["model"]))
    consumers = [_totals({"consumer": c}, v) for c, v in by_consumer.items()]
    consumers.sort(key=lambda r: (-r["cost_micro"], r["consumer"]))
    return {
        "since": _iso(since),
        "until": _iso(until),
        "timezone": zone.key,
        "currency": currency,
        "days": [_totals({"day": day.isoformat()}, by_day[i]) for i, (day, _, _) in enumerate(days)],
        "consumers": consumers,
        "rows": rows,
        "total_cost_micro": sum(r["cost_micro"] for r in consumers),
    }


def day_index(dialect: str, days: Days) -> sa.ColumnElement[Any]:
    """SQL giving the index in `days` of the day an event's `ts` falls in (for a `ts` inside them)."""
    ts = audit_events.c.ts
    branches: list[tuple[sa.ColumnElement[bool], sa.ColumnElement[Any]]] = []
    for first, last in _runs(days):
        anchor = days[first][1]
        if first == last:
            value: sa.ColumnElement[Any] = sa.literal(first, sa.Integer)
        else:
            offset = (ts - anchor) / DAY_S
            # Non-negative here (ts >= anchor): truncation is the floor. SQLite has no floor() built in.
            whole = sa.cast(offset, sa.Integer) if dialect == "sqlite" else sa.func.floor(offset)
            value = whole + first
        branches.append((ts < days[last][2], value))
    *init, (_, final) = branches
    return sa.case(*init, else_=final) if init else final


def _runs(days: Days) -> list[tuple[int, int]]:
    """Runs of days (first, last index) that start whole days apart from the run's first start and
    end no later than whole days after it, so that the day of `ts` is the run's first plus whole
    days since its start: 24-hour days. A 23- or 25-hour day, or a day cut by the period, stands alone."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(days):
        anchor = days[i][1]
        j = i
        while j + 1 < len(days) and days[j + 1][1] == anchor + (j + 1 - i) * DAY_S:
            j += 1
        if j > i and days[j][2] > anchor + (j + 1 - i) * DAY_S:
            j -= 1  # a last day longer than 24 hours would spill into an index past the run
        runs.append((i, j))
        i = j + 1
    return runs


def _totals(head: dict[str, Any], values: Sequence[int]) -> dict[str, Any]:
    calls, prompt, completion, cost = values
    return {
        **head,
        "calls": calls,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_micro": cost,
        "cost": cost / 1_000_000,
    }


def micro_text(micro: int) -> str:
    """Micro-units as an exact decimal with six places (`1234567` -> `1.234567`), for CSV and tables."""
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), 1_000_000)
    return f"{sign}{whole}.{fraction:06d}"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
