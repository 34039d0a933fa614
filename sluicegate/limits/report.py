"""Spend and budget state, for `sluicegate spend` and the admin API: plain data, JSON-ready.

Spend comes from the ledger (the audit trail). A budget's state is its settled spend in the
current window, read from the ledger, and what calls in flight hold, read from the counters
when they are shared (Redis); the in-process counters of a running gateway are not visible to
another process, so `reserved` is then None.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sluicegate.limits.ledger import ledger_total, spend_by
from sluicegate.limits.plan import Plan

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from sluicegate.config.snapshot import Snapshot
    from sluicegate.limits.counters import Counters


def group_members(snapshot: Snapshot) -> dict[str, list[str]]:
    """Each configured group's consumers."""
    return {g: [c for c, cfg in snapshot.consumers.items() if g in cfg.groups] for g in snapshot.groups}


def spend_report(engine: Engine, snapshot: Snapshot, by: str, since: float, until: float) -> dict[str, Any]:
    """Spend and tokens over [since, until) by consumer, group, model, provider or key."""
    rows = spend_by(engine, by, since, until, group_members(snapshot))
    currency = snapshot.config.limits.currency
    return {
        "by": by,
        "since": _iso(since),
        "until": _iso(until),
        "currency": currency,
        "rows": [
            {
                "name": r.name,
                "calls": r.calls,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "cost_micro": r.cost_micro,
                "cost": r.cost_micro / 1_000_000,
            }
            for r in rows
        ],
        "total_cost_micro": sum(r.cost_micro for r in rows) if by != "group" else None,
    }


async def budget_states(
    engine: Engine, snapshot: Snapshot, now: float, counters: Counters | None = None
) -> list[dict[str, Any]]:
    """Every budget counter of the current windows: used, reserved, remaining, resets at.

    A budget with no `match` has one counter per scope value that spent in the window."""
    plan = Plan(snapshot.config.limits)
    members = group_members(snapshot)
    out: list[dict[str, Any]] = []
    for rule in plan.rules:
        if rule.kind != "budget" or rule.window is None:
            continue
        span = rule.window.span(now)
        since = span.starts if not rule.window.rolling else now - rule.window.length
        if rule.scope == "gateway":
            values = ["*"]
        elif rule.scope == "group":
            values = [g for g in members if rule.matches(g)]
        else:
            seen = [r.name for r in spend_by(engine, rule.scope, since, now + 1)]
            exact = list(rule.matcher.exact) if rule.matcher is not None else []
            values = sorted({v for v in [*seen, *exact] if v != "-" and rule.matches(v)})
        for value in values:
            used = ledger_total(engine, rule.scope, value, since, now + 1, members.get(value, ()))
            reserved: int | None = None
            if counters is not None:
                prefix = f"b:{rule.name}:{rule.scope}={value}:"
                held = await counters.buckets(prefix)
                reserved = sum(level.reserved for level in held.values())
            out.append(
                {
                    "budget": rule.name,
                    "scope": rule.scope,
                    "value": value,
                    "window": span.label,
                    "limit_micro": rule.limit,
                    "used_micro": used,
                    "reserved_micro": reserved,
                    "remaining_micro": max(0, rule.limit - used - (reserved or 0)),
                    "resets_at": _iso(span.resets),
                }
            )
    return out


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
