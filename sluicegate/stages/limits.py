"""Limits: budgets and rate limits, reserved before the call and settled after it.

Admission reserves the call's worst case on every counter that applies, all or nothing:
- budgets: the most the call can cost: its input (at most one token per byte of the request
  body) and its output cap (the limit it asks for, or the one the gateway inserts) times its
  choices, at the model's price;
- `tokens`: the same input and output bound; `requests`: 1; `concurrent`: 1 (a slot).
A refusal is a 429 naming the limit, its scope and window, with `Retry-After`. A budget whose
room is held only by calls in flight makes the call wait (up to `limits.budget_wait_s`) for them
to settle instead of refusing it: refusals are decided on settled spend.

`on_finish` (always, shielded from cancellation) replaces the reservation with what the call
used: its cost, its tokens, its request; the concurrency slot is freed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.errors import RateLimited, ServiceUnavailable
from sluicegate.limits.counters import Charge, Counters, CountersUnavailable, Level, MemoryCounters, Refused
from sluicegate.limits.plan import Applied, Held, Plan
from sluicegate.limits.prices import PriceBook, count_images, worst_case
from sluicegate.limits.service import LimitsService, local_limit
from sluicegate.limits.windows import Span, retry_after
from sluicegate.providers.base import OUTPUT_LIMITS
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Route, Snapshot

#: endpoints that call a model (and so are counted)
LIMITED_ENDPOINTS = frozenset({"chat", "completions", "responses", "messages", "embeddings"})
#: endpoints whose answer is generated text, bounded by an output cap
_OUTPUT_ENDPOINTS = frozenset({"chat", "completions", "responses", "messages"})
#: a refusal whose window resets later than this tells SDKs not to retry (`x-should-retry`)
SDK_RETRY_MAX_S = 60.0
#: releases of reservations whose call was cancelled while the store answered
_RELEASING: set[asyncio.Future[Any]] = set()


class BudgetExceeded(RateLimited):
    """A budget has no room for the call's worst case."""

    code = "budget_exceeded"
    type = "insufficient_quota"


class LimitsStage:
    """Reserves every applicable budget and rate limit before the call; settles them after."""

    name = "limits"
    needs_body = True

    def __init__(self, snapshot: Snapshot, service: LimitsService) -> None:
        self.config = snapshot.config.limits
        self.plan = Plan(self.config)
        self.service = service
        self.prices = PriceBook(snapshot.config)
        self._caps: dict[str, int] = {}

    async def on_request(self, call: Call) -> None:
        consumer = call.consumer
        model = call.model_requested
        if consumer is None or model is None or call.endpoint not in LIMITED_ENDPOINTS:
            return
        route = call.snapshot.route_for(model)
        if route is None:
            return
        # Counted per configured model: a glob route counts as one model, whatever name is asked.
        model_name = model if route.name == model else route.name
        applied = self.plan.applicable(call.key_id, consumer, model_name, route.provider.name)
        if not applied:
            return
        service = self.service
        try:
            counters = await service.counters()
        except CountersUnavailable:
            counters = None
        kinds = {a.rule.kind for a in applied}
        input_tokens = output_tokens = cost = 0
        if "budget" in kinds or "tokens" in kinds:
            input_tokens, output_tokens = self._bounds(call, route)
            if "budget" in kinds:
                cost = self._worst_cost(call, route, input_tokens, output_tokens)
        tokens = input_tokens + output_tokens
        meta = ""
        if counters is not None and service.shared:
            meta = orjson.dumps(
                {
                    "consumer": consumer.name,
                    "key": call.key_id,
                    "model": model,
                    "provider": route.provider.name,
                    "endpoint": call.endpoint,
                    "cost": cost,
                    "tokens": tokens,
                }
            ).decode()
        if counters is None:
            if "budget" in kinds:
                raise _store_down()
            counters = service.fallback
            service.degraded()
        charges, spans, levels = await self._reserve(call, counters, applied, cost, tokens, meta)
        call.limits = Held(applied, charges, cost, tokens, counters)
        call.limit_headers = _headers(call, applied, charges, levels, spans, counters.clock())

    async def _reserve(
        self, call: Call, counters: Counters, applied: tuple[Applied, ...], cost: int, tokens: int, meta: str
    ) -> tuple[tuple[Charge, ...], tuple[Span | None, ...], list[Level]]:
        service = self.service
        deadline: float | None = None
        degraded = counters is service.fallback
        while True:
            now = counters.clock()
            charges, spans = _charges(applied, cost, tokens, now, degraded, service)
            try:
                result = await _reserve_shielded(
                    counters, call.request_id, charges, self.config.reservation_ttl_s, meta
                )
            except CountersUnavailable:
                service.store_errors += 1
                if any(a.rule.kind == "budget" for a in applied):
                    raise _store_down() from None
                counters = service.fallback
                degraded = True
                service.degraded()
                continue
            if not isinstance(result, Refused):
                if service.shared and not degraded:
                    service.in_flight.add(call.request_id)
                return charges, spans, result
            charge = charges[result.index]
            if result.may_wait and charge.wait and self.config.budget_wait_s > 0:
                clock = time.monotonic()
                if deadline is None:
                    deadline = clock + self.config.budget_wait_s
                if clock < deadline:
                    await counters.wait_settled(min(deadline - clock, 1.0))
                    continue
            raise _refusal(call, applied[result.index], charge, spans[result.index], result, now, self.config.currency)

    def _bounds(self, call: Call, route: Route) -> tuple[int, int]:
        """The most input and output tokens this call can use: one token per body byte at most
        (a token is at least one byte of text; JSON only adds bytes), and the output it asks for,
        or the cap the gateway inserts for it, times its choices."""
        body = call.body or {}
        input_tokens = max(1, call.body_size)
        if call.endpoint not in _OUTPUT_ENDPOINTS:
            return input_tokens, 0
        choices = 1
        for name in ("n", "best_of"):
            value = body.get(name)
            if type(value) is int and value > choices:
                choices = value
        asked: int | None = None
        for name in OUTPUT_LIMITS:
            value = body.get(name)
            if type(value) is int and value >= 0 and (asked is None or value > asked):
                asked = value
        if asked is None:
            cap = call.output_cap
            if cap is None:
                cap = self._default_cap(call, route)
                # Inserted upstream, so the answer cannot outgrow what was reserved.
                call.output_cap = cap
            asked = cap
        return input_tokens, asked * choices

    def _default_cap(self, call: Call, route: Route) -> int:
        """The model's own `max_output_tokens`, else `limits.default_max_output_tokens` (no more
        than the model can write, where the price table knows it)."""
        if route.config.max_output_tokens is not None:
            return route.config.max_output_tokens
        key = route.upstream_model or call.model_requested or ""
        cap = self._caps.get(key)
        if cap is None:
            most = self.prices.max_output_tokens_for(route.config, key)
            cap = self.config.default_max_output_tokens
            if most is not None:
                cap = min(cap, most)
            if len(self._caps) < 10_000:
                self._caps[key] = cap
        return cap

    def _worst_cost(self, call: Call, route: Route, input_tokens: int, output_tokens: int) -> int:
        upstream = route.upstream_model or call.model_requested or ""
        price = self.prices.price_for(route.config, upstream)
        if price is None:
            return 0
        images = count_images(call.body) if price.per_image and call.body is not None else 0
        return worst_case(price, input_tokens, output_tokens, images)

    async def on_finish(self, call: Call) -> None:
        held = call.limits
        if held is None:
            return
        call.limits = None
        actual = tuple(_actual(a.rule.kind, call) for a in held.applied)
        # Shielded: a cancelled call still settles (and frees its concurrency slot).
        levels = await asyncio.shield(self.service.settle(held, call.request_id, actual))
        if levels is not None and self.plan.budgets:
            self.service.alerts(
                held, levels, actual, {"request_id": call.request_id, "consumer": call.consumer and call.consumer.name}
            )


async def _reserve_shielded(
    counters: Counters, request_id: str, charges: tuple[Charge, ...], ttl_s: float, meta: str
) -> list[Level] | Refused:
    """Reserve; a call cancelled while a shared store answers releases what was reserved."""
    if isinstance(counters, MemoryCounters):  # nothing awaits inside: it cannot be cut halfway
        return await counters.reserve(request_id, charges, ttl_s, meta)
    task = asyncio.ensure_future(counters.reserve(request_id, charges, ttl_s, meta))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda done: _release_cancelled(counters, request_id, charges, done))
        raise


def _release_cancelled(
    counters: Counters, request_id: str, charges: tuple[Charge, ...], done: asyncio.Future[Any]
) -> None:
    if done.cancelled() or done.exception() is not None or isinstance(done.result(), Refused):
        return
    windows = tuple(c.window for c in charges)
    release = asyncio.ensure_future(counters.settle(request_id, tuple(0 for _ in charges), windows))  # noqa: RUF006
    _RELEASING.add(release)
    release.add_done_callback(_RELEASING.discard)


def _charges(
    applied: tuple[Applied, ...], cost: int, tokens: int, now: float, degraded: bool, service: LimitsService
) -> tuple[tuple[Charge, ...], tuple[Span | None, ...]]:
    charges: list[Charge] = []
    spans: list[Span | None] = []
    instances = service.config.redis.instances if degraded and service.config.redis is not None else 1
    for a in applied:
        kind = a.rule.kind
        amount = cost if kind == "budget" else tokens if kind == "tokens" else 1
        charge, span = a.charge(amount, now, kind == "budget")
        if instances > 1:
            charge = Charge(
                charge.key, charge.window, local_limit(charge.limit, instances), amount, charge.ttl_s, charge.wait
            )
        charges.append(charge)
        spans.append(span)
    return tuple(charges), tuple(spans)


def _actual(kind: str, call: Call) -> int:
    if kind == "budget":
        return call.cost_micro_usd or 0
    if kind == "tokens":
        return (call.prompt_tokens or 0) + (call.completion_tokens or 0)
    if kind == "requests":
        return 1
    return 0  # concurrent: the slot is freed


def _store_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The gateway cannot check this call's budget: its counter store is unavailable. Try again shortly.",
        code="budget_store_unavailable",
        retry_after=1.0,
    )


def _refusal(
    call: Call, applied: Applied, charge: Charge, span: Span | None, refused: Refused, now: float, currency: str
) -> RateLimited:
    rule = applied.rule
    wait = retry_after(span, now) if span is not None else 1.0
    window = span.label if span is not None else ""
    who = applied.describe()
    level = refused.level
    error: RateLimited
    if rule.kind == "budget":
        left = max(0, rule.limit - level.used - level.reserved)
        error = BudgetExceeded(
            f"Budget '{rule.name}' of {who}, per {window}, has {money_text(left)} {currency} left of "
            f"{money_text(rule.limit)} {currency}; this call may cost up to {money_text(charge.amount)} {currency}. "
            f"It resets in {_duration(wait)}.",
            retry_after=wait,
            rule=f"limits.budgets.{rule.name}",
        )
    elif rule.kind == "concurrent":
        error = RateLimited(
            f"Rate limit '{rule.name}' of {who}: at most {rule.limit} concurrent calls. Try again when one ends.",
            retry_after=wait,
            rule=f"limits.rate_limits.{rule.name}.concurrent",
        )
    else:
        what = "requests" if rule.kind == "requests" else "tokens"
        asked = f" (this call may use up to {charge.amount})" if rule.kind == "tokens" else ""
        error = RateLimited(
            f"Rate limit '{rule.name}' of {who} reached: {rule.limit} {what} per {window}{asked}. "
            f"Try again in {_duration(wait)}.",
            retry_after=wait,
            rule=f"limits.rate_limits.{rule.name}.{rule.kind}",
        )
    headers = _headers(call, (applied,), (charge,), [Level(level.used, level.reserved + charge.amount)], (span,), now)
    if wait > SDK_RETRY_MAX_S or (rule.kind == "budget" and not refused.may_wait):
        # The official SDKs retry a 429 unless told not to; a retry cannot help before the reset.
        headers.append((b"x-should-retry", b"false"))
    call.limit_headers = headers
    return error


_KIND_HEADER = {"requests": "requests", "tokens": "tokens", "budget": "budget"}


def _headers(
    call: Call,
    applied: tuple[Applied, ...],
    charges: tuple[Charge, ...],
    levels: list[Level],
    spans: tuple[Span | None, ...],
    now: float,
) -> list[tuple[bytes, bytes]]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens,budget}` of the tightest counter of
    each kind (the least left), as OpenAI sends them; Anthropic's names for Anthropic clients."""
    tightest: dict[str, tuple[int, int, float]] = {}
    for a, charge, level, span in zip(applied, charges, levels, spans, strict=True):
        kind = _KIND_HEADER.get(a.rule.kind)
        if kind is None or span is None:
            continue
        left = max(0, charge.limit - level.used - level.reserved)
        best = tightest.get(kind)
        if best is None or left < best[1]:
            tightest[kind] = (charge.limit, left, span.resets)
    headers: list[tuple[bytes, bytes]] = []
    anthropic = call.dialect == "anthropic"
    for kind, (limit, left, resets) in tightest.items():
        if kind == "budget":
            headers += [
                (b"x-ratelimit-limit-budget", _amount(limit)),
                (b"x-ratelimit-remaining-budget", _amount(left)),
                (b"x-ratelimit-reset-budget", _duration(max(0.0, resets - now)).encode()),
            ]
            continue
        headers += [
            (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(left).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), _duration(max(0.0, resets - now)).encode()),
        ]
        if anthropic:
            stamp = dt.datetime.fromtimestamp(resets, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
            headers += [
                (f"anthropic-ratelimit-{kind}-limit".encode(), str(limit).encode()),
                (f"anthropic-ratelimit-{kind}-remaining".encode(), str(left).encode()),
                (f"anthropic-ratelimit-{kind}-reset".encode(), stamp),
            ]
    return headers


def money_text(micro: int) -> str:
    """Micro-units as an amount: `12.50`, `0.000207` (at least two decimals, at most six)."""
    text = f"{micro / 1_000_000:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _amount(micro: int) -> bytes:
    return f"{micro / 1_000_000:.6f}".encode()


def _duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers write it: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    frac = seconds - whole
    sec_text = f"{secs + frac:.3f}".rstrip("0").rstrip(".") if frac >= 0.001 and not hours else str(secs)
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"


def _factory(snapshot: Snapshot, services: Services) -> LimitsStage | None:
    limits = snapshot.config.limits
    services.limits.configure(limits)
    if not limits.budgets and not limits.rate_limits:
        return None
    return LimitsStage(snapshot, services.limits)


register_stage("limits", _factory)
