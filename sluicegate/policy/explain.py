"""`sluicegate policy explain`: one hypothetical call's decisions, with the budgets' headroom.

The headroom of a budget is its limit less the spend the ledger (the audit trail) holds in the
window the call falls in, as `sluicegate spend` reads it; calls in flight are not seen from
another process. Rate limits are shown as configured: their counters live in the gateway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sluicegate.limits.ledger import ledger_total
from sluicegate.limits.report import group_members
from sluicegate.policy.evaluate import Decision, describe_applied

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot
    from sluicegate.limits.plan import Applicable
    from sluicegate.policy.evaluate import Evaluation


class LedgerHeadroom:
    """A `Limiter` that reads each budget's spend from the ledger; refuses where none is left."""

    def __init__(self, engine: Engine, snapshot: Snapshot) -> None:
        self.engine = engine
        self.snapshot = snapshot
        self.currency = snapshot.config.limits.currency
        #: the ledger could not be read: the limits are shown as configured
        self.unreachable = False

    def reserve(self, call: Call, applicable: Applicable, cost: int, tokens: int) -> Decision:
        at = call.started_wall
        parts: list[str] = []
        members = group_members(self.snapshot)
        for applied in applicable.applied:
            rule = applied.rule
            text = describe_applied(applied, self.currency)
            if rule.kind != "budget" or rule.window is None or self.unreachable:
                parts.append(text)
                continue
            span = rule.window.span(at)
            since = span.starts if not rule.window.rolling else at - rule.window.length
            values = members.get(applied.value, ()) if rule.scope == "group" else ()
            try:
                used = ledger_total(self.engine, rule.scope, applied.value, since, at + 1, values)
            except sa.exc.SQLAlchemyError:
                self.unreachable = True
                parts.append(text)
                continue
            left = max(0, rule.limit - used)
            if left <= 0:
                return Decision(
                    "limits",
                    "deny",
                    f"{text}: spent {_money(used)} {self.currency}, nothing left until {span.label} resets",
                    rule.rule_id(),
                    "budget_exceeded",
                )
            parts.append(f"{text}: {_money(left)} {self.currency} left")
        suffix = " (the store is unreachable: limits as configured)" if self.unreachable else ""
        return Decision("limits", "allow", "; ".join(parts) + suffix)

    def settle(self, call: Call, applicable: Applicable, cost: int, tokens: int) -> None:
        return None


def _money(micro: int) -> str:
    return f"{micro / 1_000_000:.2f}"


#: how each outcome reads in the table
_MARKS = {"allow": "allow", "deny": "DENY", "info": "info", "skip": "skip"}


def explain_lines(ev: Evaluation, config: str) -> list[str]:
    """The human form: one line per stage, then the verdict."""
    s = ev.subject
    lines = [f"call: consumer '{s.consumer}', model '{s.model}', endpoint '{s.endpoint}', config {config}"]
    for d in ev.decisions:
        rule = f" [{d.rule}]" if d.rule else ""
        lines.append(f"  {d.stage:<13} {_MARKS[d.outcome]:<5} {d.detail}{rule}")
    if ev.refused is not None:
        code = f" ({ev.refused.code})" if ev.refused.code else ""
        lines.append(f"verdict: refused by {ev.refused.stage}{code}, rule {ev.refused.rule or '-'}")
    else:
        lines.append("verdict: allowed")
    for note in ev.unevaluated:
        lines.append(f"not evaluated: {note}")
    return lines


def explain_json(ev: Evaluation, config: str) -> dict[str, Any]:
    """The JSON form."""
    s = ev.subject
    return {
        "config": config,
        "call": {
            "consumer": s.consumer,
            "model": s.model,
            "endpoint": s.endpoint,
            "at": s.at,
            "from": s.client_ip,
            "stream": s.stream,
        },
        **ev.as_dict(),
    }
