"""`sluicegate policy replay`: the calls recorded over a period, asked again of another config.

Each recorded call (consumer, key, model, endpoint, time, source, tokens, captured content) is
evaluated stage by stage (`policy.evaluate`) and its new outcome compared with what the audit
recorded: calls newly refused (by which rule), newly allowed, refused by another rule, and each
consumer's spend at the recorded prices and at the new ones.

Budgets and rate limits are simulated on in-process counters (`limits.counters.MemoryCounters`,
the gateway's own) whose clock is the recorded time: the recorded calls are the demand, each
charged its cost at the new prices from its recorded tokens, in the order the audit recorded
them, so a new budget refuses from the call that no longer fits. A budget whose window began
before the period starts from the spend the ledger recorded in that part of the window.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

import orjson

from sluicegate.audit.content import CUT_MARK
from sluicegate.audit.search import iso_time
from sluicegate.config.model import Endpoint
from sluicegate.limits.counters import Charge, MemoryCounters, Refused
from sluicegate.limits.ledger import ledger_total
from sluicegate.limits.report import group_members
from sluicegate.policy.evaluate import Decision, Evaluation, Evaluator, Subject, Usage

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from sluicegate.call import Call
    from sluicegate.limits.plan import Applicable, Applied

#: the endpoints of calls (events of other kinds are not replayed)
CALL_ENDPOINTS = frozenset(get_args(Endpoint))
#: recorded decisions that are policy refusals; `model_not_found` is one too (a 404 `rejected`)
REFUSED_DECISIONS = frozenset({"denied", "limited", "blocked"})
REFUSED_OUTCOMES = frozenset({"model_not_found"})
#: recorded decisions of calls the policy let through (`error`: the upstream failed them)
ALLOWED_DECISIONS = frozenset({"allowed", "error"})
#: outcomes of `error` calls that failed inside the policy (a store or guard down), not upstream
POLICY_FAILURES = frozenset({"guard_unavailable", "budget_store_unavailable", "audit_unavailable"})
#: per-call changes the JSON report lists at most
MAX_CHANGES = 10_000
#: calls between two sweeps of the simulated counters' ended buckets
REAP_EVERY = 10_000
#: a simulated reservation lives this long (it is settled at once)
_TTL_S = 3600.0


def recorded_verdict(event: dict[str, Any]) -> bool | None:
    """Whether the recorded call passed the policy (True), was refused by it (False), or neither
    can be said (None: a malformed request, a policy store that was down)."""
    decision, outcome = event["decision"], event["outcome"]
    if decision in REFUSED_DECISIONS or outcome in REFUSED_OUTCOMES:
        return False
    if decision in ALLOWED_DECISIONS and outcome not in POLICY_FAILURES:
        return True
    return None


def content_of(event: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The captured request body and complete JSON answer of an event (None where not captured,
    cut to its size bound, or a stream)."""
    raw = event.get("content")
    if not raw:
        return None, None
    try:
        content = orjson.loads(raw)
        request, response = content.get("request"), content.get("response")
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    return _json_object(request), None if event.get("stream") else _json_object(response)


def _json_object(text: object) -> dict[str, Any] | None:
    if not isinstance(text, str) or text.endswith(CUT_MARK):
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def subject_of(event: dict[str, Any]) -> Subject:
    """The recorded call as a subject of evaluation."""
    body, answer = content_of(event)
    return Subject(
        consumer=event["consumer"],
        model=event["model_requested"],
        at=event["ts"],
        endpoint=event["endpoint"],
        client_ip=event["client_ip"],
        key_id=event["key_id"],
        stream=bool(event["stream"]),
        request_id=event["request_id"],
        body=body,
        answer=answer,
        provider=event["provider"],
        usage=Usage(
            event["prompt_tokens"],
            event["completion_tokens"],
            event["cached_tokens"],
            event["cache_write_tokens"],
            event["reasoning_tokens"],
            event["upstream_status"],
        ),
    )


class SimulatedLimits:
    """A `Limiter` on the gateway's in-process counters, with the recorded time as their clock.

    Concurrency limits are not simulated: the audit records when a call started and how long it
    took, not which calls overlapped at the gateway."""

    def __init__(self, evaluator: Evaluator, engine: Engine | None = None, since: float | None = None) -> None:
        self.now = 0.0
        self.counters = MemoryCounters(clock=lambda: self.now)
        self.currency = evaluator.currency
        self.members = group_members(evaluator.snapshot)
        self.engine = engine
        self.since = since
        self._ids = itertools.count()
        self._held: str | None = None

    def reserve(self, call: Call, applicable: Applicable, cost: int, tokens: int) -> Decision:
        self.now = now = call.started_wall
        applied = [a for a in applicable.applied if a.kind != "concurrent"]
        charges: list[Charge] = []
        windows: list[str] = []
        for a in applied:
            charge, span = a.charge(cost if a.kind == "budget" else tokens if a.kind == "tokens" else 1, now)
            if a.kind == "budget":
                self._carry_in(a, charge)
            charges.append(charge)
            windows.append(span.label if span is not None else "")
        held = f"r{next(self._ids)}"
        result = self.counters.reserve_now(held, charges, _TTL_S)
        if isinstance(result, Refused):
            a = applied[result.index]
            level = result.level
            return Decision(
                "limits",
                "deny",
                f"{a.describe()} {_used(a, level.used, self.currency)} per {windows[result.index]}",
                a.rule.rule_id(),
                "budget_exceeded" if a.kind == "budget" else "rate_limit_exceeded",
            )
        self._held = held
        names = ", ".join(a.rule.rule_id() for a in applied) or "none simulated"
        return Decision("limits", "allow", f"within {names}")

    def settle(self, call: Call, applicable: Applicable, cost: int, tokens: int) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        kinds = [a.kind for a in applicable.applied if a.kind != "concurrent"]
        actual = [cost if k == "budget" else tokens if k == "tokens" else 1 for k in kinds]
        self.counters.settle_now(held, actual, ())

    def _carry_in(self, applied: Applied, charge: Charge) -> None:
        """A budget bucket first charged in the period starts from what the ledger recorded in it
        before the period (a month's budget replayed over its last week)."""
        rule = applied.rule
        if self.engine is None or self.since is None or self.counters.has(charge.key) or rule.window is None:
            return
        span = rule.window.span(self.now)
        if rule.window.rolling or span.starts >= self.since:
            return
        members = self.members.get(applied.value, ()) if rule.scope == "group" else ()
        spent = ledger_total(self.engine, rule.scope, applied.value, span.starts, self.since, members)
        self.counters.bucket(charge.key, charge.ttl_s)[0] += spent


def _used(applied: Applied, used: int, currency: str) -> str:
    rule = applied.rule
    if rule.kind == "budget":
        return f"has spent {used / 1_000_000:.6f} of {rule.limit / 1_000_000:.2f} {currency}"
    return f"has used {used} of {rule.limit} {rule.kind}"


@dataclass(slots=True)
class Tally:
    """One consumer's replay: its calls, what changed, its spend before and after."""

    consumer: str
    calls: int = 0
    newly_refused: Counter[str] = field(default_factory=Counter)
    newly_allowed: int = 0
    #: refused before and now, by another rule
    rule_changed: int = 0
    spend_old_micro: int = 0
    spend_new_micro: int = 0
    #: newly allowed calls: never answered, so their cost is not known (counted as 0)
    cost_unknown: int = 0
    not_evaluated: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "calls": self.calls,
            "newly_refused": sum(self.newly_refused.values()),
            "newly_refused_by": dict(self.newly_refused.most_common()),
            "newly_allowed": self.newly_allowed,
            "rule_changed": self.rule_changed,
            "spend_old_micro": self.spend_old_micro,
            "spend_new_micro": self.spend_new_micro,
            "cost_unknown": self.cost_unknown,
            "not_evaluated": dict(self.not_evaluated.most_common()),
        }


@dataclass(slots=True)
class Replay:
    """The report of a replay: per consumer, per changed call, and what was not replayed."""

    config: str
    since: float
    until: float
    currency: str
    consumers: dict[str, Tally] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    changes_cut: bool = False
    #: recorded events not replayed, by reason
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        tallies = [self.consumers[name].as_dict() for name in sorted(self.consumers)]
        totals = {
            key: sum(t[key] for t in tallies)
            for key in ("calls", "newly_refused", "newly_allowed", "rule_changed", "spend_old_micro", "spend_new_micro")
        }
        return {
            "config": self.config,
            "since": iso_time(self.since),
            "until": iso_time(self.until),
            "currency": self.currency,
            "totals": totals,
            "consumers": tallies,
            "changes": self.changes,
            "changes_cut": self.changes_cut,
            "skipped": dict(self.skipped.most_common()),
        }


async def replay(
    evaluator: Evaluator,
    events: Iterable[dict[str, Any]],
    config: str,
    since: float,
    until: float,
    engine: Engine | None = None,
    key_owners: Mapping[str, str] | None = None,
) -> Replay:
    """Evaluate every recorded call of `events` (oldest first) under `evaluator`'s config.

    `key_owners` (key id -> consumer, from the key store) names the consumer of a call refused
    because its key's consumer was not configured then: the new config may configure it."""
    report = Replay(config, since, until, evaluator.currency)
    limits = SimulatedLimits(evaluator, engine, since)
    owners = key_owners or {}
    replayed = 0
    for event in events:
        if event["endpoint"] not in CALL_ENDPOINTS:
            continue
        if event["consumer"] is None:
            owner = owners.get(event["key_id"] or "")
            if owner is None or event["outcome"] != "consumer_not_configured":
                report.skipped["no consumer identified (refused before the policy knew who called)"] += 1
                continue
            event = {**event, "consumer": owner}
        if event["model_requested"] is None:
            report.skipped["no model named"] += 1
            continue
        old = recorded_verdict(event)
        if old is None:
            report.skipped["not a policy decision (a malformed request, a policy store down)"] += 1
            continue
        ev = await evaluator.evaluate(subject_of(event), limits)
        _count(report, event, old, ev)
        replayed += 1
        if replayed % REAP_EVERY == 0:
            # Buckets of windows long past (a minute's, on a week's replay) are dropped as they end.
            await limits.counters.reap()
    return report


def _guards_unread(ev: Evaluation) -> bool:
    return any(d.stage == "guardrails" and d.outcome == "skip" for d in ev.decisions)


def _count(report: Replay, event: dict[str, Any], old: bool, ev: Evaluation) -> None:
    name = event["consumer"]
    tally = report.consumers.get(name)
    if tally is None:
        tally = report.consumers[name] = Tally(name)
    tally.calls += 1
    for note in ev.unevaluated:
        tally.not_evaluated[note] += 1
    old_cost = event["cost_micro_usd"] or 0
    tally.spend_old_micro += old_cost
    skipped = any(d.outcome == "skip" and d.stage == "identity" for d in ev.decisions)
    if skipped:
        tally.spend_new_micro += old_cost
        return
    new_cost = 0
    if ev.allowed:
        new_cost = ev.cost_micro or 0
        if event["cache"] in ("hit", "semantic_hit") and not old_cost:
            new_cost = 0  # a cache hit that cost its caller nothing still does
        tally.spend_new_micro += new_cost
    refused = ev.refused
    if not old and refused is None and event["decision"] == "blocked" and _guards_unread(ev):
        # Blocked calls keep no content: whether the new guards would block it too is not known.
        tally.not_evaluated["blocked by a guard then; no content to run the new guards on"] += 1
        return
    change: str | None = None
    if old and refused is not None:
        change = "newly_refused"
        tally.newly_refused[refused.rule or refused.code or refused.stage] += 1
    elif not old and refused is None:
        change = "newly_allowed"
        tally.newly_allowed += 1
        if event["prompt_tokens"] is None and event["completion_tokens"] is None:
            tally.cost_unknown += 1
    elif refused is not None and refused.rule != event["rule"]:
        change = "rule_changed"
        tally.rule_changed += 1
    elif old and new_cost != old_cost:
        change = "cost_changed"
    if change is None:
        return
    if len(report.changes) >= MAX_CHANGES:
        report.changes_cut = True
        return
    report.changes.append(
        {
            "request_id": event["request_id"],
            "time": iso_time(event["ts"]),
            "consumer": name,
            "model": event["model_requested"],
            "change": change,
            "old": {"decision": event["decision"], "rule": event["rule"], "cost_micro": event["cost_micro_usd"]},
            "new": {
                "allowed": refused is None,
                "stage": refused.stage if refused is not None else None,
                "rule": refused.rule if refused is not None else None,
                "code": refused.code if refused is not None else None,
                "cost_micro": new_cost if refused is None else None,
            },
        }
    )
