"""Spend and budget state, for `sluicegate spend` and the admin API: plain data, JSON-ready.

Spend comes from the ledger (the audit trail). A budget's state is its settled spend in the
current window, read from the ledger, and what calls in flight hold, read from the counters
when they are shared (Redis); the in-process counters of a running gateway are not visible to
another process, so `reserved` is then None.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sluicegate.limits.ledger import ledger_total, spend_by
from sluicegate.limits.plan import Plan
from sluicegate.limits.windows import calendar_bounds
from sluicegate.store.db import audit_events

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from sluicegate.config.snapshot import Consumer, Snapshot
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


async def caller_view(
    engine: Engine,
    snapshot: Snapshot,
    consumer: Consumer,
    key_id: str | None,
    counters: Counters,
    period: str = "month",
) -> dict[str, Any]:
    """What one caller may see of its own limits (`GET /v1/spend`): its consumer's spend over the
    current calendar `period` (UTC) from the ledger, and every budget and rate limit of its key,
    consumer, groups or the gateway with the live levels of their counters. Model- and
    provider-scoped limits are left out: they depend on the call."""
    now = counters.clock()
    since, until = calendar_bounds(now, period, dt.UTC)  # type: ignore[arg-type]
    spent = await asyncio.to_thread(_consumer_spend, engine, consumer.name, since, until)
    plan = Plan(snapshot.config.limits)
    applicable = plan.applicable(key_id, consumer, "", "")
    chosen = [a for a in applicable.applied if a.rule.scope in ("key", "consumer", "group", "gateway")]
    charges = [a.charge(0, now) for a in chosen]
    levels = await counters.levels([charge.window for charge, _ in charges]) if chosen else []
    limits: list[dict[str, Any]] = []
    for a, (_, span), level in zip(chosen, charges, levels, strict=True):
        rule = a.rule
        entry: dict[str, Any] = {
            "name": rule.name,
            "kind": rule.kind,
            "scope": rule.scope,
            "value": a.value,
            "limit": rule.limit,
            "used": level.used,
            "reserved": level.reserved,
            "remaining": max(0, rule.limit - level.used - level.reserved),
        }
        if span is not None:
            entry["window"] = span.label
            entry["resets_at"] = _iso(span.resets)
        limits.append(entry)
    return {
        "consumer": consumer.name,
        "currency": snapshot.config.limits.currency,
        "period": {"name": period, "since": _iso(since), "until": _iso(until)},
        "spend": spent,
        "limits": limits,
    }


def _consumer_spend(engine: Engine, consumer: str, since: float, until: float) -> dict[str, int]:
    columns = audit_events.c
    query = sa.select(
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(columns.prompt_tokens), 0),
        sa.func.coalesce(sa.func.sum(columns.completion_tokens), 0),
        sa.func.coalesce(sa.func.sum(columns.cost_micro_usd), 0),
    ).where(columns.consumer == consumer, columns.ts >= since, columns.ts < until, columns.endpoint != "limits")
    with engine.connect() as conn:
        calls, prompt, completion, cost = conn.execute(query).one()
    return {
        "calls": int(calls),
        "prompt_tokens": int(prompt),
        "completion_tokens": int(completion),
        "cost_micro": int(cost),
    }
