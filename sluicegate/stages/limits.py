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
from typing import TYPE_CHECKING, Any, cast

import orjson

from sluicegate import tokens as tokenizer
from sluicegate.errors import RateLimited, ServiceUnavailable
from sluicegate.limits.counters import Charge, Counters, CountersUnavailable, Level, MemoryCounters, Refused
from sluicegate.limits.plan import Applicable, Applied, Held, Plan
from sluicegate.limits.prices import Price, PriceBook, count_images, worst_case
from sluicegate.limits.service import LimitsService, local_limit
from sluicegate.limits.windows import Span, retry_after
from sluicegate.providers.base import OUTPUT_LIMITS
from sluicegate.stages.accounting import INLINE_COUNT_CHARS
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Route, Snapshot

#: endpoints that call a model (and so are counted)
LIMITED_ENDPOINTS = frozenset({"chat", "completions", "responses", "messages", "embeddings"})
#: endpoints whose answer is generated text, bounded by an output cap
_OUTPUT_ENDPOINTS = frozenset({"chat", "completions", "responses", "messages"})
#: the largest amount a call reserves on a counter (a request asking for 10^12 choices gets it)
MAX_AMOUNT = 1 << 60
#: a refusal whose window resets later than this tells SDKs not to retry (`x-should-retry`)
SDK_RETRY_MAX_S = 60.0
#: builds a NamedTuple without its Python-level `__new__` (one per limited call)
_new = tuple.__new__
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
        applicable = self.plan.applicable(call.key_id, consumer, model_name, route.provider.name)
        if not applicable.applied:
            return
        service = self.service
        bounds = self._bounds(call, route) if applicable.tokens else (0, 0)
        cost, tokens = self._amounts(call, route, applicable, bounds)
        counters: Counters
        if not service.shared:
            memory = service.memory
            now = memory.clock()
            if applicable.single and self._reserve_buckets(call, memory, applicable, cost, tokens, now):
                return
            charges, spans = _charges(applicable.applied, cost, tokens, now, 1)
            result = memory.reserve_now(call.request_id, charges, self.config.reservation_ttl_s)
            counters = memory
            if isinstance(result, Refused):
                charges, spans, result, _ = await self._reserve(call, route, memory, applicable, bounds, result)
                now = memory.clock()
        else:
            try:
                counters = await service.counters()
            except CountersUnavailable:
                if applicable.budget:
                    raise _store_down() from None
                counters = service.fallback
                service.degraded()
            charges, spans, result, counters = await self._reserve(call, route, counters, applicable, bounds, None)
            now = counters.clock()
        call.limits = Held(applicable, charges, counters)
        call.limit_headers = _headers(call, applicable.applied, charges, result, spans, now)

    def _reserve_buckets(
        self, call: Call, memory: MemoryCounters, applicable: Applicable, cost: int, tokens: int, now: float
    ) -> bool:
        """The in-process fast path: check and hold the call's amounts on the buckets themselves
        (nothing awaits in between); False when one has no room (the general path then decides:
        count the prompt, wait, or refuse)."""
        refs, keys = applicable.buckets(memory, now)
        amounts = tuple([cost if k == "budget" else tokens if k == "tokens" else 1 for k in applicable.kinds])
        for bucket, amount, limit in zip(refs, amounts, applicable.limits, strict=True):
            if bucket[0] + bucket[1] + amount > limit:
                return False
        for bucket, amount in zip(refs, amounts, strict=True):
            bucket[1] += amount
        memory.hold(call.request_id, keys, amounts, refs, self.config.reservation_ttl_s)
        call.limits = _new(Held, (applicable, None, memory))
        call.limit_headers = _bucket_headers(call, applicable, refs, now)
        return True

    async def _reserve(
        self,
        call: Call,
        route: Route,
        counters: Counters,
        applicable: Applicable,
        bounds: tuple[int, int],
        refused: Refused | None,
    ) -> tuple[tuple[Charge, ...], tuple[Span | None, ...], list[Level], Counters]:
        """Reserve (again, after a first refusal `refused`): refine the input bound by counting
        the prompt's tokens, wait while the room is held by calls in flight, fall back to local
        counters while a shared store is down; raise the refusal. The charges, their spans and
        levels, and the counters that hold them."""
        service = self.service
        deadline: float | None = None
        refined = False
        applied = applicable.applied
        cost, tokens = self._amounts(call, route, applicable, bounds)
        meta = _meta(call, route, cost, tokens) if service.shared else ""
        degraded = counters is service.fallback
        instances = service.config.redis.instances if service.config.redis is not None else 1
        now = counters.clock()
        charges, spans = _charges(applied, cost, tokens, now, instances if degraded else 1)
        result: list[Level] | Refused | None = refused
        while True:
            if result is None:
                try:
                    ttl = self.config.reservation_ttl_s
                    result = await _reserve_shielded(counters, call.request_id, charges, ttl, meta)
                except CountersUnavailable:
                    service.store_errors += 1
                    if applicable.budget:
                        raise _store_down() from None
                    counters = service.fallback
                    degraded = True
                    service.degraded()
                    charges, spans = _charges(applied, cost, tokens, now, instances)
                    continue
            if not isinstance(result, Refused):
                if service.shared and not degraded:
                    service.in_flight.add(call.request_id)
                return charges, spans, result, counters
            charge = charges[result.index]
            if not refined and applied[result.index].kind in ("budget", "tokens"):
                # Near the limit: count the prompt's tokens rather than bound them by its bytes.
                refined = True
                counted = await _counted_input(call)
                if counted < bounds[0]:
                    bounds = (counted, bounds[1])
                    cost, tokens = self._amounts(call, route, applicable, bounds)
                    meta = _meta(call, route, cost, tokens) if service.shared else ""
                    charges, spans = _charges(applied, cost, tokens, now, instances if degraded else 1)
                    result = None
                    continue
            if result.may_wait and charge.wait and self.config.budget_wait_s > 0:
                clock = time.monotonic()
                if deadline is None:
                    deadline = clock + self.config.budget_wait_s
                if clock < deadline:
                    await counters.wait_settled(min(deadline - clock, 1.0))
                    now = counters.clock()
                    charges, spans = _charges(applied, cost, tokens, now, instances if degraded else 1)
                    result = None
                    continue
            raise _refusal(call, applied[result.index], charge, spans[result.index], result, now, self.config.currency)

    def _amounts(self, call: Call, route: Route, applicable: Applicable, bounds: tuple[int, int]) -> tuple[int, int]:
        """The worst-case cost and tokens of a call with these input and output bounds."""
        if not applicable.tokens:
            return 0, 0
        cost = self._worst_cost(call, route, applicable, bounds[0], bounds[1]) if applicable.budget else 0
        # Bounded so every backend counts them exactly (Redis: 64-bit integers); far above any limit.
        return min(cost, MAX_AMOUNT), min(bounds[0] + bounds[1], MAX_AMOUNT)

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

    def _worst_cost(
        self, call: Call, route: Route, applicable: Applicable, input_tokens: int, output_tokens: int
    ) -> int:
        upstream = route.upstream_model or call.model_requested or ""
        price = cast(
            "Price | None", applicable.price(route, upstream, lambda: self.prices.price_for(route.config, upstream))
        )
        if price is None:
            return 0
        images = count_images(call.body) if price.per_image and call.body is not None else 0
        return worst_case(price, input_tokens, output_tokens, images)

    async def on_finish(self, call: Call) -> None:
        held = call.limits
        if held is None:
            return
        call.limits = None
        applicable = held.applicable
        cost = call.cost_micro_usd or 0
        used = (call.prompt_tokens or 0) + (call.completion_tokens or 0)
        cache = call.cache
        if cache is not None and cache.hit and not cache.charged:
            used = 0  # a cache hit's tokens were not spent (`cache` policy `charge: none`)
        actual = tuple(
            [cost if k == "budget" else used if k == "tokens" else int(k == "requests") for k in applicable.kinds]
        )
        counters = held.counters
        if held.charges is None:  # reserved on in-process buckets (single-bucket windows)
            assert isinstance(counters, MemoryCounters)
            buckets = counters.settle_held(call.request_id, actual)
            if buckets is not None and applicable.alerts:
                info = {"request_id": call.request_id, "consumer": call.consumer and call.consumer.name}
                self.service.alerts(applicable.applied, [Level(b[0], b[1]) for b in buckets], actual, info)
            return
        windows = tuple([c.window for c in held.charges]) if applicable.alerts else ()
        levels: list[Level] | None
        if isinstance(counters, MemoryCounters):
            # Nothing in it waits: it completes even in a task being cancelled.
            levels = counters.settle_now(call.request_id, actual, windows)
        else:
            # Shielded: a cancelled call still settles (and frees its concurrency slot).
            levels = await asyncio.shield(self.service.settle(held, call.request_id, actual, windows))
        if levels and applicable.alerts:
            info = {"request_id": call.request_id, "consumer": call.consumer and call.consumer.name}
            self.service.alerts(applicable.applied, levels, actual, info)


def _meta(call: Call, route: Route, cost: int, tokens: int) -> str:
    """What a shared store keeps with a reservation, for the audit event of its reaping."""
    return orjson.dumps(
        {
            "consumer": call.consumer.name if call.consumer is not None else None,
            "key": call.key_id,
            "model": call.model_requested,
            "provider": route.provider.name,
            "endpoint": call.endpoint,
            "cost": cost,
            "tokens": tokens,
        }
    ).decode()


async def _counted_input(call: Call) -> int:
    """The prompt's tokens counted with the model's encoding (o200k_base for models it does not
    know): every text of the body, and the chat format's overhead per message. Large bodies are
    counted in a worker thread, and so is any body while the encoding is not loaded yet."""
    texts: list[str] = []
    _texts(call.body, texts, 0)
    messages = call.body.get("messages") if call.body is not None else None
    overhead = (
        len(messages) * tokenizer.TOKENS_PER_MESSAGE + tokenizer.TOKENS_PER_REPLY if isinstance(messages, list) else 0
    )
    model = call.model_served or call.model_requested
    if sum(map(len, texts)) <= INLINE_COUNT_CHARS and tokenizer.is_loaded(tokenizer.encoding_name(model)):
        return tokenizer.count_tokens(texts, model) + overhead
    return await asyncio.to_thread(tokenizer.count_tokens, texts, model) + overhead


#: body fields whose strings the model does not read as text
_NOT_TEXT = frozenset({"model", "role", "type", "id", "tool_call_id", "stream", "user", "metadata"})


def _texts(value: Any, out: list[str], depth: int) -> None:
    """Every string of a request body but the ones naming things (model, roles, types, ids)."""
    if depth > 64:
        return
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in _NOT_TEXT:
                _texts(item, out, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _texts(item, out, depth + 1)


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
    applied: tuple[Applied, ...], cost: int, tokens: int, now: float, instances: int
) -> tuple[tuple[Charge, ...], tuple[Span | None, ...]]:
    """The call's charge on each counter; `instances` > 1: this instance's share of each limit
    (the shared store is down)."""
    charges: list[Charge] = []
    spans: list[Span | None] = []
    for a in applied:
        kind = a.kind
        charge, span = a.charge(cost if kind == "budget" else tokens if kind == "tokens" else 1, now)
        if instances > 1:
            charge = charge._replace(limit=local_limit(charge.limit, instances))
        charges.append(charge)
        spans.append(span)
    return tuple(charges), tuple(spans)


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
            rule=rule.rule_id(),
        )
    elif rule.kind == "concurrent":
        error = RateLimited(
            f"Rate limit '{rule.name}' of {who}: at most {rule.limit} concurrent calls. Try again when one ends.",
            retry_after=wait,
            rule=rule.rule_id(),
        )
    else:
        what = "requests" if rule.kind == "requests" else "tokens"
        asked = f" (this call may use up to {charge.amount})" if rule.kind == "tokens" else ""
        error = RateLimited(
            f"Rate limit '{rule.name}' of {who} reached: {rule.limit} {what} per {window}{asked}. "
            f"Try again in {_duration(wait)}.",
            retry_after=wait,
            rule=rule.rule_id(),
        )
    headers = _headers(call, (applied,), (charge,), [Level(level.used, level.reserved + charge.amount)], (span,), now)
    if wait > SDK_RETRY_MAX_S or (rule.kind == "budget" and not refused.may_wait):
        # The official SDKs retry a 429 unless told not to; a retry cannot help before the reset.
        headers.append((b"x-should-retry", b"false"))
    call.limit_headers = headers
    return error


#: header names per kind: OpenAI's, and Anthropic's for Anthropic clients
_OPENAI_NAMES = {
    kind: (
        f"x-ratelimit-limit-{kind}".encode(),
        f"x-ratelimit-remaining-{kind}".encode(),
        f"x-ratelimit-reset-{kind}".encode(),
    )
    for kind in ("requests", "tokens", "budget")
}
_ANTHROPIC_NAMES = {
    kind: (
        f"anthropic-ratelimit-{kind}-limit".encode(),
        f"anthropic-ratelimit-{kind}-remaining".encode(),
        f"anthropic-ratelimit-{kind}-reset".encode(),
    )
    for kind in ("requests", "tokens")
}


def _headers(
    call: Call,
    applied: tuple[Applied, ...],
    charges: tuple[Charge, ...],
    levels: list[Level],
    spans: tuple[Span | None, ...],
    now: float,
) -> list[tuple[bytes, bytes]]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens,budget}` of the tightest counter of
    each kind (the least left, this call's reservation held), as OpenAI sends them; Anthropic's
    names too for Anthropic clients. Budget amounts are in currency units."""
    tightest: dict[str, tuple[Applied, int, Span]] = {}
    for a, charge, level, span in zip(applied, charges, levels, spans, strict=True):
        if span is None:  # a concurrency slot: no window to report
            continue
        left = charge[2] - level[0] - level[1]
        best = tightest.get(a.kind)
        if best is None or left < best[1]:
            tightest[a.kind] = (a, left, span)
    return _header_lines(call, tightest, now)


def _header_lines(call: Call, tightest: dict[str, tuple[Applied, int, Span]], now: float) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for kind, (a, left, span) in tightest.items():
        limit_name, left_name, reset_name = _OPENAI_NAMES[kind]
        reset = _reset_text(span.resets - now)
        left_text = (_amount(left) if kind == "budget" else str(left).encode()) if left > 0 else b"0"
        headers += ((limit_name, a.limit_text), (left_name, left_text), (reset_name, reset))
        if kind != "budget" and call.dialect == "anthropic":
            limit_name, left_name, reset_name = _ANTHROPIC_NAMES[kind]
            stamp = dt.datetime.fromtimestamp(span.resets, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
            headers += ((limit_name, a.limit_text), (left_name, left_text), (reset_name, stamp))
    return headers


def money_text(micro: int) -> str:
    """Micro-units as an amount: `12.50`, `0.000207` (at least two decimals, at most six)."""
    text = f"{micro / 1_000_000:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _bucket_headers(call: Call, applicable: Applicable, refs: list[list[int]], now: float) -> list[tuple[bytes, bytes]]:
    """`_headers` for a reservation held on in-process buckets (each window one bucket)."""
    applied = applicable.applied
    if applicable.distinct and call.dialect != "anthropic":
        # One counter per kind (the usual case): each is its kind's tightest.
        headers: list[tuple[bytes, bytes]] = []
        limits = applicable.limits
        for i in applicable.windowed:
            a, bucket = applied[i], refs[i]
            left = limits[i] - bucket[0] - bucket[1]
            limit_name, left_name, reset_name = _OPENAI_NAMES[a.kind]
            if left <= 0:
                left_text = b"0"
            else:
                left_text = _amount(left) if a.kind == "budget" else str(left).encode()
            span = a.current_span()
            assert span is not None
            reset = _reset_text(span.resets - now)
            headers += ((limit_name, a.limit_text), (left_name, left_text), (reset_name, reset))
        return headers
    tightest: dict[str, tuple[Applied, int, Span]] = {}
    for a, bucket in zip(applied, refs, strict=True):
        span = a.current_span()
        if span is None:
            continue
        left = a.rule.limit - bucket[0] - bucket[1]
        best = tightest.get(a.kind)
        if best is None or left < best[1]:
            tightest[a.kind] = (a, left, span)
    return _header_lines(call, tightest, now)


def _amount(micro: int) -> bytes:
    return f"{micro / 1_000_000:.6f}".encode()


_RESETS: dict[int, bytes] = {}


def _reset_text(seconds: float) -> bytes:
    """`_duration` to the tenth of a second, remembered (calls in the same tenth share it)."""
    tenths = round(seconds * 10)
    text = _RESETS.get(tenths)
    if text is None:
        if len(_RESETS) >= 4096:
            _RESETS.clear()
        text = _RESETS[tenths] = _duration(tenths / 10).encode()
    return text


def _duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers write it: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60 and seconds == int(seconds):
        return f"{int(seconds)}s"
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
