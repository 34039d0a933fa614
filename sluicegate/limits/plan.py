"""Which budgets and rate limits apply to a call, compiled once per config snapshot.

A rule (one budget, or one of a rate limit's `requests` / `tokens` / `concurrent`) applies to a
call when its scope's value for the call (the key id, the consumer, each of its groups, the
model, the provider, or the gateway) matches the rule's `match` (any value when it has none). It
then charges the counter of that value in the window's current bucket. What applies to a
(key, consumer, model, provider) is computed once and kept, so the request path pays a dict lookup.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from sluicegate.config.rules import NameMatcher
from sluicegate.limits.counters import Charge
from sluicegate.limits.windows import Span, Window

if TYPE_CHECKING:
    from sluicegate.config.snapshot import Consumer
    from sluicegate.limits.config import LimitsConfig
    from sluicegate.limits.counters import MemoryCounters

Kind = Literal["budget", "requests", "tokens", "concurrent"]
#: a concurrency slot is freed at the end of a call; its key still expires if a crash leaks it
CONCURRENT_TTL_S = 86400.0
#: memoised (key, consumer, model, provider) -> applicable rules, per snapshot
MAX_MEMO = 10_000


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One counted limit of a budget or a rate limit."""

    name: str
    kind: Kind
    scope: str
    matcher: NameMatcher | None
    limit: int
    #: None for `concurrent` (no window: a slot is held for the call's duration)
    window: Window | None
    #: budget alert thresholds in micro-units, with their percentages
    alerts: tuple[tuple[int, float], ...] = ()

    def matches(self, value: str) -> bool:
        return self.matcher is None or self.matcher(value)

    def rule_id(self) -> str:
        """The id refusals and the audit name it by: `limits.budgets.monthly`,
        `limits.rate_limits.per-minute.requests`."""
        if self.kind == "budget":
            return f"limits.budgets.{self.name}"
        return f"limits.rate_limits.{self.name}.{self.kind}"


#: builds a Charge without the Python-level `__new__` of a NamedTuple (one per limit of every call)
_tuple = tuple.__new__


class Applied:
    """A rule applied to one scope value: its counter, and the charge of its current bucket."""

    __slots__ = ("_base", "_bucket", "_span", "kind", "limit_text", "prefix", "rule", "value")

    def __init__(self, rule: Rule, value: str) -> None:
        self.rule = rule
        self.kind = rule.kind
        self.value = value
        #: the limit as the rate-limit headers write it (budgets in currency units)
        self.limit_text = (f"{rule.limit / 1_000_000:.6f}" if rule.kind == "budget" else str(rule.limit)).encode()
        self.prefix = f"{rule.kind[0]}:{rule.name}:{rule.scope}={value}"
        self._span: Span | None = None
        #: the in-process bucket of the current span (see `bucket`)
        self._bucket: tuple[object, Span | None, list[int]] | None = None
        #: the charge of one unit in the current bucket (built once per bucket)
        self._base = Charge(self.prefix, (self.prefix,), rule.limit, 1, CONCURRENT_TTL_S, False)

    def charge(self, amount: int, now: float) -> tuple[Charge, Span | None]:
        """This call's charge of `amount`, in the bucket `now` falls in."""
        window = self.rule.window
        if window is None:
            base = self._base
            return (base if amount == 1 else base._replace(amount=amount)), None
        span = self._span
        if span is None or not span.starts <= now < span.ends:
            span = window.span(now)
            prefix = self.prefix
            key = f"{prefix}:{span.bucket}"
            keys = (key,) if len(span.buckets) == 1 else tuple(f"{prefix}:{b}" for b in span.buckets)
            self._base = Charge(key, keys, self.rule.limit, 1, window.ttl_s(span), self.kind == "budget")
            self._span = span
        base = self._base
        if amount == 1:
            return base, span
        return _tuple(Charge, (base[0], base[1], base[2], amount, base[4], base[5])), span

    def bucket(self, counters: MemoryCounters, now: float) -> list[int]:
        """The in-process bucket `now` falls in, kept until its span ends (the fast path of
        single-bucket windows: no key built, no lookup). A concurrency slot's bucket is checked
        on each call: the reaper drops it once unused for a day."""
        cached = self._bucket
        if cached is not None and cached[0] is counters:
            span = cached[1]
            if span is None:
                if counters.is_live(self.prefix, cached[2]):
                    return cached[2]
            elif span.starts <= now < span.ends:
                return cached[2]
        charge, span = self.charge(1, now)
        bucket = counters.bucket(charge.key, charge.ttl_s)
        self._bucket = (counters, span, bucket)
        return bucket

    def current_key(self) -> str:
        """The key of the bucket `bucket` or `charge` returned last."""
        return self._base[0]

    def current_span(self) -> Span | None:
        """The span of the bucket `bucket` or `charge` returned last (None: a concurrency slot)."""
        return self._span

    def describe(self) -> str:
        """`consumer 'alice'`, `the gateway`: who the counter counts, for messages."""
        if self.rule.scope == "gateway":
            return "the gateway"
        return f"{self.rule.scope} '{self.value}'"


class Applicable:
    """What applies to one (key, consumer, model, provider): the rules, and what they need."""

    __slots__ = (
        "_keys",
        "_owner",
        "_price",
        "_refs",
        "_until",
        "alerts",
        "applied",
        "budget",
        "distinct",
        "kinds",
        "limits",
        "single",
        "tokens",
        "windowed",
    )

    def __init__(self, applied: tuple[Applied, ...]) -> None:
        self.applied = applied
        self.kinds = tuple(a.kind for a in applied)
        self.limits = tuple(a.rule.limit for a in applied)
        self.budget = "budget" in self.kinds
        #: the call's input and output must be bounded (a budget or a token limit applies)
        self.tokens = self.budget or "tokens" in self.kinds
        #: levels are read back at settlement, for alert thresholds
        self.alerts = any(a.rule.alerts for a in applied)
        #: every counter is one bucket (no rolling window): the in-process fast path applies
        self.single = not any(a.rule.window is not None and a.rule.window.rolling for a in applied)
        #: the counters with a window (their figures go to the rate-limit headers)
        self.windowed = tuple(i for i, a in enumerate(applied) if a.rule.window is not None)
        #: no two of them of one kind: each is the tightest of its kind
        self.distinct = len({applied[i].kind for i in self.windowed}) == len(self.windowed)
        #: the in-process buckets of the current spans, for `buckets`
        self._owner: tuple[object, int] | None = None
        self._refs: list[list[int]] = []
        self._keys: tuple[str, ...] = ()
        self._until = 0.0
        #: the last price looked up (see `price`)
        self._price: tuple[object, str, object] | None = None

    def buckets(self, counters: MemoryCounters, now: float) -> tuple[list[list[int]], tuple[str, ...]]:
        """The in-process bucket of each counter for `now`, and their keys: kept until the first of
        their spans ends or the counters drop buckets."""
        owner = self._owner
        if owner is not None and owner[0] is counters and owner[1] == counters.generation and now < self._until:
            return self._refs, self._keys
        applied = self.applied
        refs = [a.bucket(counters, now) for a in applied]
        ends = [span.ends for a in applied if (span := a.current_span()) is not None]
        self._refs, self._keys = refs, tuple([a.current_key() for a in applied])
        self._until = min(ends) if ends else math.inf
        self._owner = (counters, counters.generation)
        return refs, self._keys

    def price(self, route: object, upstream: str, lookup: Callable[[], object]) -> object:
        """The price of `route` serving `upstream`, from `lookup` once per route and name in a row."""
        last = self._price
        if last is not None and last[0] is route and last[1] == upstream:
            return last[2]
        price = lookup()
        self._price = (route, upstream, price)
        return price


class Held(NamedTuple):
    """What the limits stage reserved for one call, settled at its end."""

    applicable: Applicable
    #: the charges (None: reserved on in-process buckets directly, `MemoryCounters.hold`)
    charges: tuple[Charge, ...] | None
    #: the backend that holds it (a shared store, or this process's fallback)
    counters: object


class Plan:
    """The rules of one config, and what applies to whom."""

    def __init__(self, config: LimitsConfig) -> None:
        rules: list[Rule] = []
        for b in config.budgets:
            limit = money(b.amount)
            alerts = tuple((-(-limit * round(pct * 1000) // 100_000), pct) for pct in b.alerts)
            rules.append(
                Rule(
                    b.name, "budget", b.scope, _matcher(b.match), limit, Window(b.window, b.rolling, b.timezone), alerts
                )
            )
        for r in config.rate_limits:
            window = Window(r.window, r.rolling, r.timezone)
            matcher = _matcher(r.match)
            if r.requests is not None:
                rules.append(Rule(r.name, "requests", r.scope, matcher, r.requests, window))
            if r.tokens is not None:
                rules.append(Rule(r.name, "tokens", r.scope, matcher, r.tokens, window))
            if r.concurrent is not None:
                rules.append(Rule(r.name, "concurrent", r.scope, matcher, r.concurrent, None))
        self.rules = tuple(rules)
        self.budgets = any(r.kind == "budget" for r in rules)
        self._memo: dict[tuple[str | None, str, str, str], Applicable] = {}

    def applicable(self, key_id: str | None, consumer: Consumer, model: str, provider: str) -> Applicable:
        """The rules that apply to a call, each with its scope value (memoised)."""
        memo_key = (key_id, consumer.name, model, provider)
        found = self._memo.get(memo_key)
        if found is not None:
            return found
        out: list[Applied] = []
        for rule in self.rules:
            for value in _values(rule.scope, key_id, consumer, model, provider):
                if rule.matches(value):
                    out.append(Applied(rule, value))
        applicable = Applicable(tuple(out))
        if len(self._memo) >= MAX_MEMO:
            self._memo.clear()
        self._memo[memo_key] = applicable
        return applicable


def is_slot(key: str) -> bool:
    """Whether a counter key is a concurrency slot (freed at the end of a call, never spent)."""
    return key.startswith("c:")


def _values(scope: str, key_id: str | None, consumer: Consumer, model: str, provider: str) -> tuple[str, ...]:
    if scope == "consumer":
        return (consumer.name,)
    if scope == "group":
        return consumer.groups
    if scope == "model":
        return (model,)
    if scope == "provider":
        return (provider,)
    if scope == "key":
        return (key_id,) if key_id is not None else ()
    return ("*",)


def _matcher(patterns: list[str]) -> NameMatcher | None:
    return NameMatcher(patterns) if patterns else None


def money(amount: float) -> int:
    """An amount in currency units as integer micro-units."""
    return round(amount * 1_000_000)
