"""Searching the audit trail: filters, pages on a keyset cursor, and a streamed read for exports.

SQLAlchemy Core over `audit_events`, alike on SQLite and PostgreSQL. Every filter but the guard
one is a plain comparison on a column, so the time range can use the `ts` index and a page the
`seq` primary key. The guard filter narrows rows in SQL with a LIKE on the guard's JSON-encoded
name, then decides in Python on the parsed records: a guard whose name holds another's
(`answer-codename` and `codename`), or a label that spells a guard's name, never matches.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sluicegate.store.db import audit_events

#: rows fetched per round trip when reading in a stream (a server-side cursor on PostgreSQL)
STREAM_CHUNK = 1000
#: the largest page `search` returns
MAX_PAGE = 10_000

_STATUS = re.compile(r"^([1-5])(?:xx|XX|(\d\d))$")


def status_range(text: str) -> tuple[int, int]:
    """The statuses [low, high) that `429` (exactly) or `4xx` (a class) names; ValueError otherwise."""
    match = _STATUS.match(text.strip())
    if match is None:
        raise ValueError(f"'{text}' is not a status (429) or a status class (4xx)")
    if match.group(2) is None:
        low = int(match.group(1)) * 100
        return low, low + 100
    code = int(match.group(1) + match.group(2))
    return code, code + 1


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """What to look for; every field set must hold (None: any). Times are epoch seconds, `until` excluded."""

    consumer: str | None = None
    key_id: str | None = None
    #: the model the client asked for or the one that answered
    model: str | None = None
    provider: str | None = None
    #: `429`, or a class: `4xx`
    status: str | None = None
    decision: str | None = None
    outcome: str | None = None
    #: a guard's name, among the call's guard decisions
    guard: str | None = None
    request_id: str | None = None
    since: float | None = None
    until: float | None = None

    def __post_init__(self) -> None:
        if self.status is not None:
            status_range(self.status)

    def where(self) -> list[sa.ColumnElement[bool]]:
        """The SQL conditions (the guard's is only a prefilter: see `matches_guard`)."""
        c = audit_events.c
        out: list[sa.ColumnElement[bool]] = []
        for column, value in (
            (c.consumer, self.consumer),
            (c.key_id, self.key_id),
            (c.provider, self.provider),
            (c.decision, self.decision),
            (c.outcome, self.outcome),
            (c.request_id, self.request_id),
        ):
            if value is not None:
                out.append(column == value)
        if self.model is not None:
            out.append(sa.or_(c.model_requested == self.model, c.model_served == self.model))
        if self.status is not None:
            low, high = status_range(self.status)
            out.append(c.status == low if high == low + 1 else sa.and_(c.status >= low, c.status < high))
        if self.since is not None:
            out.append(c.ts >= self.since)
        if self.until is not None:
            out.append(c.ts < self.until)
        if self.guard is not None:
            # The name as the audit stage's JSON spells it; LIKE's wildcards in it are escaped.
            needle = orjson.dumps(self.guard).decode()[1:-1]
            out.append(c.guards.contains(needle, autoescape=True))
        return out

    def matches_guard(self, guards: str | None) -> bool:
        """Whether a row's `guards` JSON holds a decision of the queried guard (True with no guard filter)."""
        if self.guard is None:
            return True
        return self.guard in guard_names(guards)


def guard_names(guards: str | None) -> set[str]:
    """The guards named in a `guards` column value (empty for NULL or a value that is not the list)."""
    if not guards:
        return set()
    try:
        records = orjson.loads(guards)
    except orjson.JSONDecodeError:
        # A value cut to the column's size is not JSON any more: it names no guard for sure.
        return set()
    if not isinstance(records, list):
        return set()
    return {r["guard"] for r in records if isinstance(r, dict) and isinstance(r.get("guard"), str)}


@dataclass(frozen=True, slots=True)
class Page:
    """One page of events, in the order asked; `next_after` is the cursor of the next page (None: last page)."""

    events: list[dict[str, Any]]
    next_after: int | None


def search(
    engine: Engine, query: AuditQuery, limit: int = 50, after: int | None = None, oldest_first: bool = False
) -> Page:
    """A page of at most `limit` events matching `query`, newest first (or oldest first), after the
    event `after` in that order.

    The cursor is the last event's `seq`: rows written meanwhile never shift a page, so paging
    returns each row once (newest first, rows newer than the first page are left for a new
    search; oldest first, they come on the last pages)."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    events: list[dict[str, Any]] = []
    more = False
    # One row past the page says whether there is a next one.
    with contextlib.closing(_read(engine, query, after, oldest_first, fetch=limit + 1)) as rows:
        for event in rows:
            if len(events) == limit:
                more = True
                break
            events.append(event)
    return Page(events, events[-1]["seq"] if more else None)


def stream(engine: Engine, query: AuditQuery, oldest_first: bool = True) -> Generator[dict[str, Any]]:
    """Every event matching `query`, read in chunks (bounded memory whatever the count), oldest first by default."""
    return _read(engine, query, None, oldest_first, fetch=None)


def _read(
    engine: Engine, query: AuditQuery, after: int | None, oldest_first: bool, fetch: int | None
) -> Generator[dict[str, Any]]:
    seq = audit_events.c.seq
    statement = sa.select(audit_events).where(*query.where())
    if after is not None:
        statement = statement.where(seq > after if oldest_first else seq < after)
    statement = statement.order_by(seq.asc() if oldest_first else seq.desc())
    if fetch is not None and query.guard is None:
        # Without the guard filter every row fetched is a match: the database stops at the page.
        statement = statement.limit(fetch)
    chunk = STREAM_CHUNK if fetch is None else min(STREAM_CHUNK, fetch)
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=chunk).execute(statement)
        try:
            for row in result:
                values = row._mapping
                if query.matches_guard(values["guards"]):
                    yield event_dict(values)
        finally:
            result.close()


def event_dict(values: Any) -> dict[str, Any]:
    """A row as a dict: `seq`, `time` (ISO 8601, UTC) and the table's columns."""
    out: dict[str, Any] = {"seq": values["seq"], "time": iso_time(values["ts"])}
    for key, value in values.items():
        out.setdefault(str(key), value)
    return out


def columns() -> list[str]:
    """The keys of `event_dict`, in order (an export's header)."""
    return ["seq", "time", *(c.name for c in audit_events.columns if c.name != "seq")]


def iso_time(ts: float) -> str:
    """An epoch time as ISO 8601 in UTC, to the millisecond."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")
