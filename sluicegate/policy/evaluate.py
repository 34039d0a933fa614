"""One call, recorded or hypothetical, asked of a config stage by stage, as the request path asks.

Each stage's own decision code answers (`stages.access.check_access` and `check_model`, the
limits' `Plan`, the guards' `Guardrails`, the router's `chosen_route`, pins and `may_serve`, the
`PriceBook`), so a what-if cannot drift from what the gateway does. What it does not know (the
content of a call that was not captured) it says it did not evaluate, and never guesses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from sluicegate.call import Call
from sluicegate.errors import Forbidden, NotFound, SluicegateError
from sluicegate.guardrails.base import GuardContext, GuardUnavailable
from sluicegate.guardrails.engine import Blocked, CallGuards, GuardFailed, Guardrails, check_answer, check_request
from sluicegate.limits.plan import Applicable, Applied, Plan
from sluicegate.limits.prices import PriceBook, call_cost
from sluicegate.routing.service import may_serve
from sluicegate.stages.access import OUTPUT_ENDPOINTS, check_access, check_model, output_cap
from sluicegate.stages.limits import LIMITED_ENDPOINTS
from sluicegate.stages.router import chosen_route, not_permitted
from sluicegate.vault import Vault

if TYPE_CHECKING:
    from sluicegate.config.snapshot import Consumer, Route, Snapshot
    from sluicegate.guardrails.engine import GuardSet

Outcome = Literal["allow", "deny", "info", "skip"]
#: the stages a what-if asks, in the request path's order (`pipeline.STAGE_ORDER`)
STAGES = ("identity", "access", "model_access", "limits", "guardrails", "router")
#: the rule id of a model no entry serves (the config has no id for it)
NO_MODEL_RULE = "models"


@dataclass(frozen=True, slots=True)
class Decision:
    """What one stage decided, with the id of the rule that decided it (None: no rule did)."""

    stage: str
    outcome: Outcome
    detail: str
    rule: str | None = None
    #: the refusal's code, as the client and the audit would see it (`model_not_allowed`)
    code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "outcome": self.outcome,
            "rule": self.rule,
            "code": self.code,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Usage:
    """What a recorded call used (its tokens, as its upstream reported them or as counted)."""

    prompt: int | None = None
    completion: int | None = None
    cached: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None
    upstream_status: int | None = None


@dataclass(frozen=True, slots=True)
class Subject:
    """The call to evaluate: who, what, when, from where; and what is known of its content."""

    consumer: str
    model: str
    #: epoch seconds: the time window rules and the limits' windows read it
    at: float
    endpoint: str = "chat"
    client_ip: str | None = None
    key_id: str | None = None
    stream: bool = False
    request_id: str = "policy-explain"
    #: the request body as captured (None: not captured; the guards cannot run)
    body: dict[str, Any] | None = None
    #: the answer as captured, when it was a complete JSON answer (the output guards read it)
    answer: dict[str, Any] | None = None
    #: the provider that served it, as recorded: the same target serves it again where it may
    provider: str | None = None
    usage: Usage | None = None


class Limiter(Protocol):
    """Admission against counters: `policy.replay` simulates them; `explain` reads the ledger."""

    def reserve(self, call: Call, applicable: Applicable, cost: int, tokens: int) -> Decision: ...

    def settle(self, call: Call, applicable: Applicable, cost: int, tokens: int) -> None: ...


@dataclass(slots=True)
class Evaluation:
    """Every stage's decision for one call, the first refusal, and what the call would cost."""

    subject: Subject
    decisions: list[Decision] = field(default_factory=list)
    refused: Decision | None = None
    consumer: Consumer | None = None
    #: the route that serves it (after `when` rules) and the target that would answer
    route: Route | None = None
    target: Route | None = None
    #: its cost at the config's prices from its recorded usage (None: no price, or no usage)
    cost_micro: int | None = None
    #: what could not be evaluated, and why (`guardrails: no content captured`)
    unevaluated: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.refused is None

    def add(self, decision: Decision) -> Decision:
        self.decisions.append(decision)
        if decision.outcome == "deny" and self.refused is None:
            self.refused = decision
        return decision

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "refused_by": self.refused.as_dict() if self.refused is not None else None,
            "stages": [d.as_dict() for d in self.decisions],
            "cost_micro": self.cost_micro,
            "not_evaluated": self.unevaluated,
        }


def refusal(stage: str, exc: SluicegateError) -> Decision:
    """A stage's refusal as a decision; a model nobody serves has the derived rule `models`."""
    rule = exc.rule if exc.rule is not None else (NO_MODEL_RULE if exc.code == "model_not_found" else None)
    return Decision(stage, "deny", exc.message, rule, exc.code)


async def _no_model(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
    raise GuardUnavailable("a what-if asks no model")


def offline_context() -> GuardContext:
    """What guards get in a what-if: no HTTP session, no secrets, no model (remote guards do not run)."""
    return GuardContext(http=lambda: None, vault=Vault(), complete=_no_model)


class Evaluator:
    """One config's policy, compiled once, asked about calls one at a time."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        config = snapshot.config
        self.plan = Plan(config.limits)
        self.prices = PriceBook(config)
        self.currency = config.limits.currency
        self.rails = Guardrails(config, offline_context(), snapshot.pins) if config.guards else None

    async def evaluate(self, subject: Subject, limiter: Limiter | None = None) -> Evaluation:
        """Ask each stage in turn; stop at the first refusal, as the request path does."""
        ev = Evaluation(subject)
        consumer = self._identity(ev)
        if consumer is None:
            return ev
        call = self._call(subject, consumer)
        when = dt.datetime.fromtimestamp(subject.at, dt.UTC)
        try:
            check_access(consumer, subject.endpoint, subject.client_ip, when)
        except Forbidden as exc:
            ev.add(refusal("access", exc))
            return ev
        ev.add(Decision("access", "allow", _access_detail(consumer, subject)))
        try:
            route = check_model(self.snapshot, consumer, subject.model, subject.stream)
            if consumer.max_tokens is not None and subject.body is not None and subject.endpoint in OUTPUT_ENDPOINTS:
                output_cap(consumer, subject.body)
        except (Forbidden, NotFound) as exc:
            ev.add(refusal("model_access", exc))
            return ev
        ev.add(Decision("model_access", "allow", f"model '{subject.model}' allowed", consumer.models_rule))
        applicable = self._limits(ev, call, consumer, route, limiter)
        if ev.refused is not None:
            return ev
        await self._guards(ev, call, consumer, route)
        if ev.refused is None:
            self._route(ev, call, consumer, route)
        if applicable is not None and limiter is not None:
            answered = ev.refused is None
            tokens = _tokens(subject.usage) if answered else 0
            limiter.settle(call, applicable, (ev.cost_micro or 0) if answered else 0, tokens)
        return ev

    def _identity(self, ev: Evaluation) -> Consumer | None:
        name = ev.subject.consumer
        consumer = self.snapshot.consumers.get(name)
        if consumer is None:
            if name.startswith("jwt:"):
                # Made from a token's groups: the audit keeps the name, not the groups.
                ev.unevaluated.append("identity: a consumer made from a token's groups")
                ev.add(Decision("identity", "skip", f"'{name}' was mapped from a token's groups; not replayed"))
                return None
            ev.add(
                Decision(
                    "identity",
                    "deny",
                    f"This API key's consumer '{name}' is not in the configuration",
                    f"consumers.{name}",
                    "consumer_not_configured",
                )
            )
            return None
        groups = f" (groups: {', '.join(consumer.groups)})" if consumer.groups else ""
        ev.consumer = consumer
        ev.add(Decision("identity", "allow", f"consumer '{name}'{groups}", f"consumers.{name}"))
        return consumer

    def _call(self, subject: Subject, consumer: Consumer) -> Call:
        """The call as the stages see it (no headers: identity is decided above, from the name)."""
        call = Call(subject.request_id, subject.endpoint, self.snapshot, {})
        call.started_wall = subject.at
        call.consumer = consumer
        call.key_id = subject.key_id
        call.client_ip = subject.client_ip
        call.model_requested = subject.model
        call.stream = subject.stream
        call.body = subject.body
        usage = subject.usage
        if usage is not None:
            call.prompt_tokens = usage.prompt
            call.completion_tokens = usage.completion
            call.cached_tokens = usage.cached
            call.cache_write_tokens = usage.cache_write
            call.reasoning_tokens = usage.reasoning
            call.upstream_status = usage.upstream_status
        return call

    def _limits(
        self, ev: Evaluation, call: Call, consumer: Consumer, route: Route, limiter: Limiter | None
    ) -> Applicable | None:
        subject = ev.subject
        if subject.endpoint not in LIMITED_ENDPOINTS:
            ev.add(Decision("limits", "allow", f"the '{subject.endpoint}' endpoint is not limited"))
            return None
        # Counted per configured model, as the limits stage counts: a glob route is one model.
        model_name = subject.model if route.name == subject.model else route.name
        applicable = self.plan.applicable(subject.key_id, consumer, model_name, route.provider.name)
        if not applicable.applied:
            ev.add(Decision("limits", "allow", "no budget or rate limit applies"))
            return None
        if limiter is None:
            rules = "; ".join(describe_applied(a, self.currency) for a in applicable.applied)
            ev.add(Decision("limits", "info", rules))
            return applicable
        # Admission at the cost of the target that served it (the stage reserves at the route's).
        cost = self._cost(call, self._target(route, subject, (route.targets or (route,))), subject.model)
        ev.add(limiter.reserve(call, applicable, cost or 0, _tokens(subject.usage)))
        return applicable

    async def _guards(self, ev: Evaluation, call: Call, consumer: Consumer, route: Route) -> None:
        if self.rails is None:
            ev.add(Decision("guardrails", "allow", "no guard is configured"))
            return
        guards = self.rails.for_call(consumer, route)
        if guards is None:
            ev.add(Decision("guardrails", "allow", "no guard applies"))
            return
        names = ", ".join(dict.fromkeys(f"{g.name} ({g.kind}, {g.action})" for g in (*guards.input, *guards.output)))
        remote = sorted({g.name for g in (*guards.input, *guards.output) if g.remote})
        if remote:
            ev.unevaluated.append(f"guardrails: remote guards not run ({', '.join(remote)})")
        subject = ev.subject
        if subject.body is None:
            ev.unevaluated.append("guardrails: no content captured")
            ev.add(Decision("guardrails", "skip", f"would run: {names}; no content to run them on"))
            return
        local = _local(guards)
        state = call.guards = CallGuards(local)
        try:
            await check_request(call, state)
            if subject.answer is not None and local.output:
                # A copy: the guards rewrite an answer in place where they redact.
                await check_answer(call, state, json_copy(subject.answer), subject.endpoint)
        except (Blocked, GuardFailed) as exc:
            ev.add(refusal("guardrails", exc))
            return
        found = sorted({f"{r.guard}: {r.action} {r.label}" for r in state.records if r.guard})
        detail = f"ran: {names}" + (f"; {'; '.join(found)}" if found else "; nothing found")
        ev.add(Decision("guardrails", "allow", detail))

    def _route(self, ev: Evaluation, call: Call, consumer: Consumer, route: Route) -> None:
        subject = ev.subject
        route, chosen, pins = chosen_route(call, route)
        targets = route.targets or (route,)
        permitted = [t for t in targets if may_serve(t, consumer, pins)]
        if not permitted:
            ev.add(refusal("router", not_permitted(call, route, pins)))
            return
        ordered = sorted(permitted, key=lambda t: (t.priority, -t.weight, t.index))
        target = self._target(route, subject, tuple(ordered))
        ev.route, ev.target = route, target
        labels = " > ".join(f"{t.provider.name}/{t.upstream_model or subject.model}" for t in ordered)
        strategy = f" ({route.strategy})" if route.targets else ""
        rules = [r for r in (chosen, *(p.rule for p in pins)) if r]
        ev.add(Decision("router", "allow", f"{route.name} -> {labels}{strategy}", ",".join(rules) or None))
        ev.cost_micro = self._cost(call, target, subject.model)

    def _target(self, route: Route, subject: Subject, targets: tuple[Route, ...]) -> Route:
        """The target that serves the call: the one that served it, where it may; else the first."""
        if subject.provider is not None:
            for t in targets:
                if t.provider.name == subject.provider:
                    return t
        return targets[0] if route.targets else route

    def _cost(self, call: Call, target: Route, model: str) -> int | None:
        price = self.prices.price_for(target.config, target.upstream_model or model)
        if price is None:
            return None
        return call_cost(price, call)


def _local(guards: GuardSet) -> GuardSet:
    """The guard set without its remote guards (a what-if sends no content to a service)."""
    inputs = tuple(g for g in guards.input if not g.remote)
    outputs = tuple(g for g in guards.output if not g.remote)
    if len(inputs) == len(guards.input) and len(outputs) == len(guards.output):
        return guards
    return dataclasses.replace(guards, input=inputs, output=outputs)


def json_copy(data: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON object (what guards may rewrite in place)."""
    copied: dict[str, Any] = orjson.loads(orjson.dumps(data))
    return copied


def _tokens(usage: Usage | None) -> int:
    if usage is None:
        return 0
    return (usage.prompt or 0) + (usage.completion or 0)


def _access_detail(consumer: Consumer, subject: Subject) -> str:
    parts = [f"endpoint '{subject.endpoint}'"]
    if consumer.endpoints is not None:
        parts[0] += f" ({consumer.endpoints_rule})"
    if consumer.source_ips is not None:
        parts.append(f"source {subject.client_ip or 'unknown'} ({consumer.source_ips_rule})")
    if consumer.time_windows is not None:
        parts.append(f"time window ({consumer.time_windows_rule})")
    return "allowed: " + ", ".join(parts)


def describe_applied(applied: Applied, currency: str) -> str:
    """`limits.budgets.monthly: 50.00 USD per month of consumer 'alice'`."""
    rule = applied.rule
    who = applied.describe()
    if rule.kind == "concurrent":
        return f"{rule.rule_id()}: {rule.limit} calls at once of {who}"
    amount = f"{rule.limit / 1_000_000:.2f} {currency}" if rule.kind == "budget" else f"{rule.limit} {rule.kind}"
    window = rule.window.label if rule.window is not None else ""
    return f"{rule.rule_id()}: {amount} per {window} of {who}"
