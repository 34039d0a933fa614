"""Accounting: tokens of every call (upstream usage, or counted when there is none) and cost.

A cache hit is priced as the answer it served (what it saved), and costs its caller that or
nothing, as its cache policy says (`charge`).

Cost is kept in integer micro-units of `limits.currency` (the audit's `cost_micro_usd`), at the
route's price (`limits.prices`: the model's `price:`, its legacy per-token fields, or the
built-in table), with cached, cache-write and reasoning tokens at their own prices. A call with
no price has no cost (None); so has one that neither reached its upstream nor has tokens.
Counting with the tokenizer is the fallback; large texts are counted in a worker thread so the
event loop is not held, and so is every count until the encoding is loaded (its first load).
The relay counts with `count_usage` before it ends an answer (so the client is told the same
count); this stage then finds the count done and only prices it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sluicegate import tokens
from sluicegate.limits.prices import PriceBook, call_cost, reached_upstream
from sluicegate.stages.base import Services, register_stage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot

#: texts shorter than this are counted inline; longer ones in a thread
INLINE_COUNT_CHARS = 4000
#: endpoints that do not call a model: never priced (Anthropic does not bill token counting)
UNPRICED_ENDPOINTS = frozenset({"models", "count_tokens"})


class AccountingStage:
    """Fills `call`'s token counts and cost at the end of the call."""

    name = "accounting"
    needs_body = False

    def __init__(self, prices: PriceBook) -> None:
        self.prices = prices

    async def on_request(self, call: Call) -> None:
        return None

    async def on_finish(self, call: Call) -> None:
        if call.usage_source == "none":
            await count_usage(call)
        if call.prompt_tokens is not None or call.completion_tokens is not None:
            if call.total_tokens is None:
                call.total_tokens = (call.prompt_tokens or 0) + (call.completion_tokens or 0)
        route = call.route
        if route is not None and call.endpoint not in UNPRICED_ENDPOINTS and reached_upstream(call):
            price = self.prices.price_for(route.config, route.upstream_model or call.model_requested)
            if price is not None:
                call.cost_micro_usd = call_cost(price, call)
                cache = call.cache
                if cache is not None and cache.hit:
                    # A cache hit saved what the upstream would have cost; it costs its caller
                    # that (`charge: full`) or nothing.
                    cache.saved_micro_usd = call.cost_micro_usd
                    if not cache.charged:
                        call.cost_micro_usd = 0


async def count_usage(call: Call) -> bool:
    """Count the call's tokens with the tokenizer (prompt from its body, answer from
    `call.usage_text`) and record them with usage source `counted`; False when there is nothing
    to count (no answer kept, or no body)."""
    if call.usage_text is None or call.body is None:
        return False
    prompt_texts, messages = tokens.prompt_texts(call.body)
    answer = call.usage_text
    model = call.model_served or call.model_requested
    size = sum(map(len, prompt_texts)) + sum(map(len, answer))
    if size <= INLINE_COUNT_CHARS and tokens.is_loaded(tokens.encoding_name(model)):
        counts = _count(prompt_texts, messages, answer, model)
    else:
        # Shielded: the count must land even if the request task is being cancelled.
        counts = await asyncio.shield(asyncio.to_thread(_count, prompt_texts, messages, answer, model))
    call.prompt_tokens, call.completion_tokens = counts
    call.total_tokens = counts[0] + counts[1]
    call.usage_source = "counted"
    return True


def _count(prompt_texts: list[str], messages: int, answer: list[str], model: str | None) -> tuple[int, int]:
    prompt = tokens.count_tokens(prompt_texts, model)
    if messages:
        prompt += messages * tokens.TOKENS_PER_MESSAGE + tokens.TOKENS_PER_REPLY
    return prompt, tokens.count_tokens(answer, model)


def _factory(snapshot: Snapshot, services: Services) -> AccountingStage:
    return AccountingStage(PriceBook(snapshot.config.models))


register_stage("accounting", _factory)
