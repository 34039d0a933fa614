"""Reconciliation: budget counters against the durable ledger (the audit trail); the ledger wins.

Every `limits.reconcile_interval_s`, for each budget counter of the current calendar or fixed
window, the settled spend the counter holds is compared with the sum of the costs the audit
trail recorded for the same scope value and window. A difference is drift: it is logged and
kept in `LimitsService.drift` (reported by `/readyz`). Spend still on its way to the store (an
audit event queued on another instance) looks like drift for a moment, so a counter is only
corrected when the same drift is seen on two rounds in a row and nothing settled into it while
it was read. Rolling windows are not reconciled: their buckets are finer than the trail's reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sluicegate.limits.ledger import ledger_total, spend_by
from sluicegate.limits.plan import Applied, Plan

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from sluicegate.audit.writer import AuditWriter
    from sluicegate.config.snapshot import Snapshot
    from sluicegate.limits.service import LimitsService

log = logging.getLogger("sluicegate.limits")


class Reconciler:
    """Compares budget counters with the audit trail; corrects the counters that stay off."""

    def __init__(
        self, engine: Engine, audit: AuditWriter, service: LimitsService, snapshot: Callable[[], Snapshot]
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.service = service
        self.snapshot = snapshot
        self._last: dict[str, int] = {}

    async def seed(self, snapshot: Snapshot | None = None) -> int:
        """Load the budgets' settled spend of their current windows from the audit trail into
        in-process counters that do not exist yet: all of them at startup (a restart must not
        give budgets back), a new or changed budget's on a reload; the counters seeded. Shared
        counters (Redis) outlive instances: untouched here (see `spent` for a Redis found empty)."""
        snapshot = snapshot or self.snapshot()
        if snapshot.config.limits.backend != "memory":
            return 0
        counters = self.service.memory
        seeded = 0
        for key, spent, ttl_s in await self.spent(counters.clock(), snapshot):
            if counters.has(key):  # counting already: what it holds is newer than the trail
                continue
            await counters.adjust(key, spent, ttl_s)
            seeded += 1
        if seeded:
            log.info("budget counters seeded from the audit trail: %d", seeded)
        return seeded

    async def spent(self, now: float, snapshot: Snapshot | None = None) -> list[tuple[str, int, float]]:
        """Every budget counter of the current window that the audit trail holds spend for: its
        key, the spend, and how long it must live. A rolling window's whole spend goes into its
        current bucket, so it leaves the window late rather than early."""
        snapshot = snapshot or self.snapshot()
        plan = Plan(snapshot.config.limits)
        members = {g: [c for c, cfg in snapshot.consumers.items() if g in cfg.groups] for g in snapshot.groups}
        found: list[tuple[str, int, float]] = []
        for rule in plan.rules:
            if rule.kind != "budget" or rule.window is None:
                continue
            span = rule.window.span(now)
            since = now - rule.window.length if rule.window.rolling else span.starts
            values = await asyncio.to_thread(_spenders, self.engine, rule.scope, since, now + 1, list(members))
            for value in values:
                if not rule.matches(value):
                    continue
                spent = await asyncio.to_thread(
                    ledger_total, self.engine, rule.scope, value, since, now + 1, members.get(value, ())
                )
                if spent > 0:
                    charge, _ = Applied(rule, value).charge(0, now)
                    found.append((charge.key, spent, charge.ttl_s))
        return found

    async def __call__(self) -> None:
        snapshot = self.snapshot()
        plan = Plan(snapshot.config.limits)
        counters = await self.service.counters()
        members = {g: [c for c, cfg in snapshot.consumers.items() if g in cfg.groups] for g in snapshot.groups}
        # What this instance queued reaches the store first.
        await asyncio.to_thread(self.audit.wait_idle, 5.0)
        total = 0
        seen: dict[str, int] = {}
        for rule in plan.rules:
            if rule.kind != "budget" or rule.window is None or rule.window.rolling:
                continue
            span = rule.window.span(counters.clock())
            prefix = f"b:{rule.name}:{rule.scope}="
            suffix = f":{span.bucket}"
            before = {k: v for k, v in (await counters.buckets(prefix)).items() if k.endswith(suffix)}
            for key, level in before.items():
                value = key[len(prefix) : -len(suffix)]
                ledger = await asyncio.to_thread(
                    ledger_total, self.engine, rule.scope, value, span.starts, span.ends, members.get(value, ())
                )
                [after] = await counters.levels([(key,)])
                if after.used != level.used or level.reserved or after.reserved:
                    continue  # calls are settling into it: compare on a quiet round
                drift = after.used - ledger
                if not drift:
                    continue
                total += drift
                seen[key] = drift
                log.warning(
                    "budget counter %s holds %d micro-units, the audit trail %d (drift %+d)%s",
                    key,
                    after.used,
                    ledger,
                    drift,
                    "; corrected to the trail" if self._last.get(key) == drift else "",
                )
                if self._last.get(key) == drift:
                    await counters.adjust(key, -drift, rule.window.ttl_s(span))
                    seen.pop(key)
        self._last = seen
        self.service.drift = total


def _spenders(engine: Engine, scope: str, since: float, until: float, groups: list[str]) -> list[str]:
    """The values of a scope that spent in [since, until) (every group; the gateway itself)."""
    if scope == "gateway":
        return ["*"]
    if scope == "group":
        return groups
    return [row.name for row in spend_by(engine, scope, since, until) if row.cost_micro > 0 and row.name != "-"]
