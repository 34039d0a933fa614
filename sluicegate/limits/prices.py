"""Prices, and what a call costs, in integer micro-units of `limits.currency`.

One currency unit is 1_000_000 micro-units. A token price is kept as micro-units per million
tokens (0.15 USD per million tokens is 150_000), so a cost is exact integer arithmetic with one
rounding at the end. Where a price comes from, first match wins (`PriceBook.price_for`):

1. the model entry's `price:` (with the `input_cost_per_mtok` / `output_cost_per_mtok`
   shorthands for its `input` / `output`); a field it leaves out is taken from the built-in entry
   of the upstream model, when there is one, except that cache prices follow the entry's `input`
   and the reasoning price its `output` when it sets those (`{input: 0, output: 2}` makes every
   input token free, cached or not, whatever the table says of cached tokens);
2. the shorthands alone: input and output, nothing else (cached and reasoning tokens cost what
   input and output tokens cost, as in configs written before cached prices existed);
3. the built-in table (`data/prices.json`: list prices as of its `as_of` date), by the upstream
   model's name: exactly; without a provider prefix (`openai/gpt-4o`, `models/gemini-2.5-pro`,
   `us.anthropic.claude-...`); else the longest name in the table followed by `-` or `@` and a
   date or version (`gpt-4o-2024-08-06`, `claude-sonnet-4-5-20250929`, `gemini-2.0-flash-001`,
   `claude-opus-4-0`, `...-latest`, `...-preview`). Anything else after the name (`-mini`,
   `-pro`, `-audio`, a new minor version `-5`) is another model with its own price: no match.

No price: the call has no cost (None), which is not the same as a cost of 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from sluicegate.config.model import GatewayConfig, ModelConfig
from sluicegate.limits.config import PriceConfig

if TYPE_CHECKING:
    from sluicegate.call import Call

#: micro-units in one currency unit
MICRO = 1_000_000
#: token prices are per this many tokens
PER_MTOK = 1_000_000
_HALF = PER_MTOK // 2
#: upstream names remembered by a `PriceBook` before it forgets them all and starts again
MAX_MEMO = 4096
#: image parts `count_images` looks at, at most (a body is bounded; this bounds the walk)
MAX_IMAGE_PARTS = 10_000

_TOKEN_FIELDS = ("input", "output", "cached_input", "cache_write", "reasoning")
_IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})
#: what may follow a table name for a dated or versioned name of the same model: a date or a
#: snapshot number (3+ digits), minor version 0, or a release channel
_VERSION_SUFFIX = re.compile(r"(?:\d{3,}|0|latest|preview|exp)(?:$|[-_.:@])")
#: a provider prefix: `openai/`, `models/`, Bedrock's `anthropic.` and `us.anthropic.`
_DOTTED_VENDOR = re.compile(r"^(?:[a-z]{2,6}\.)?[a-z]+\.")


def micro(amount: float | int) -> int:
    """An amount in currency units as integer micro-units, rounded half up (from its shortest
    decimal form, so 0.075 is 75_000 exactly)."""
    return int((Decimal(repr(amount)) * MICRO).to_integral_value(ROUND_HALF_UP))


@dataclass(frozen=True, slots=True)
class Price:
    """What a model's calls cost: token prices in micro-units per million tokens, `per_request`
    and `per_image` in micro-units.

    `cached_input` and `cache_write` left negative (the default) cost what `input` costs;
    `reasoning` left negative what `output` costs."""

    input: int = 0
    output: int = 0
    cached_input: int = -1
    cache_write: int = -1
    reasoning: int = -1
    per_request: int = 0
    per_image: int = 0

    def __post_init__(self) -> None:
        if self.cached_input < 0:
            object.__setattr__(self, "cached_input", self.input)
        if self.cache_write < 0:
            object.__setattr__(self, "cache_write", self.input)
        if self.reasoning < 0:
            object.__setattr__(self, "reasoning", self.output)
        for name in ("input", "output", "per_request", "per_image"):
            if getattr(self, name) < 0:
                raise ValueError(f"a price's {name} is not negative")

    @classmethod
    def from_config(cls, cfg: PriceConfig) -> Price:
        """The price a config's `price:` block (in currency units) describes; unset fields as
        the class says (token prices 0 or their input / output price, per request / image 0)."""

        def token(value: float | None) -> int:
            return -1 if value is None else micro(value)

        return cls(
            input=micro(cfg.input or 0),
            output=micro(cfg.output or 0),
            cached_input=token(cfg.cached_input),
            cache_write=token(cfg.cache_write),
            reasoning=token(cfg.reasoning),
            per_request=micro(cfg.per_request or 0),
            per_image=micro(cfg.per_image or 0),
        )


def cost(
    price: Price,
    prompt: int,
    completion: int,
    cached: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
    images: int = 0,
    requests: int = 1,
) -> int:
    """What a call costs in micro-units, exactly: `prompt` counts every input token (`cached`
    read from the provider's cache and `cache_write` written to it among them), `completion`
    every output token (`reasoning` among them). The token parts are summed, then rounded once,
    half up; per request and per image prices are added. Negative counts are 0, and details
    larger than what they are part of are cut to it (cache reads first, then cache writes)."""
    prompt = max(prompt, 0)
    completion = max(completion, 0)
    cached = min(max(cached, 0), prompt)
    cache_write = min(max(cache_write, 0), prompt - cached)
    reasoning = min(max(reasoning, 0), completion)
    tokens = (
        (prompt - cached - cache_write) * price.input
        + cached * price.cached_input
        + cache_write * price.cache_write
        + (completion - reasoning) * price.output
        + reasoning * price.reasoning
    )
    return (tokens + _HALF) // PER_MTOK + price.per_request * max(requests, 0) + price.per_image * max(images, 0)


def worst_case(price: Price, input_tokens: int, output_tokens: int, images: int = 0) -> int:
    """The most one request with these token counts can cost, in micro-units, rounded up: every
    input token at the dearest input price (plain, cache read or cache write), every output token
    at the dearer of output and reasoning. Never less than `cost` of any split of the counts."""
    tokens = max(input_tokens, 0) * max(price.input, price.cached_input, price.cache_write) + max(
        output_tokens, 0
    ) * max(price.output, price.reasoning)
    return -(-tokens // PER_MTOK) + price.per_request + price.per_image * max(images, 0)


def reached_upstream(call: Call) -> bool:
    """Whether a call was answered by its upstream: usage was recorded (reported or counted), or
    the upstream's status was a success. A call refused before it was sent, or one the upstream
    refused or failed (providers do not bill those), was not."""
    if call.prompt_tokens is not None or call.completion_tokens is not None:
        return True
    status = call.upstream_status
    return status is not None and 200 <= status < 300


def call_cost(price: Price, call: Call) -> int:
    """What a finished call cost at `price`: its recorded tokens and their details (absent ones
    0), the images of its request when the price has a per-image part, and the per-request part;
    images and the request are charged only when the call `reached_upstream`."""
    reached = reached_upstream(call)
    images = count_images(call.body) if reached and price.per_image and call.body is not None else 0
    return cost(
        price,
        call.prompt_tokens or 0,
        call.completion_tokens or 0,
        cached=call.cached_tokens or 0,
        cache_write=call.cache_write_tokens or 0,
        reasoning=call.reasoning_tokens or 0,
        images=images,
        requests=1 if reached else 0,
    )


def count_images(body: dict[str, Any]) -> int:
    """Image parts in a request body: OpenAI chat `image_url` and Responses `input_image` parts,
    Anthropic `image` blocks (tool results' too). Looks at `MAX_IMAGE_PARTS` parts at most."""
    budget = MAX_IMAGE_PARTS
    count = 0
    stack: list[Any] = []
    for key in ("messages", "input"):
        items = body.get(key)
        if isinstance(items, list):
            stack.append(items)
    while stack and budget > 0:
        items = stack.pop()
        for item in items:
            budget -= 1
            if budget <= 0:
                break
            if not isinstance(item, dict):
                continue
            if item.get("type") in _IMAGE_TYPES:
                count += 1
                continue
            content = item.get("content")
            if isinstance(content, list):
                stack.append(content)
    return count


@dataclass(frozen=True, slots=True)
class TableEntry:
    """One model of the built-in table."""

    price: PriceConfig
    max_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class PriceTable:
    """List prices by model name, as published on `as_of`, in `currency` units per million tokens."""

    as_of: date
    currency: str
    models: dict[str, TableEntry]

    def find(self, model: str) -> tuple[str, TableEntry] | None:
        """The entry of an upstream model name and its name in the table (rules in the module's
        docstring), or None."""
        name = model.strip().lower()
        for candidate in _unprefixed(name):
            entry = self.models.get(candidate)
            if entry is not None:
                return candidate, entry
        for candidate in _unprefixed(name):
            best: str | None = None
            for known in self.models:
                if (
                    len(candidate) > len(known) + 1
                    and candidate.startswith(known)
                    and candidate[len(known)] in "-@"
                    and _VERSION_SUFFIX.match(candidate, len(known) + 1)
                    and (best is None or len(known) > len(best))
                ):
                    best = known
            if best is not None:
                return best, self.models[best]
        return None


def _unprefixed(name: str) -> list[str]:
    """The name, then without a provider prefix (if it has one)."""
    out = [name]
    bare = name.rsplit("/", 1)[-1]
    bare = _DOTTED_VENDOR.sub("", bare, count=1)
    if bare and bare != name:
        out.append(bare)
    return out


def parse_table(data: dict[str, Any]) -> PriceTable:
    """A price table from its JSON form (`data/prices.json`); ValueError when it is malformed."""
    try:
        as_of = date.fromisoformat(data["as_of"])
        currency = data["currency"]
        raw = data["models"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"a price table has 'as_of', 'currency' and 'models': {exc}") from None
    if not isinstance(currency, str) or not isinstance(raw, dict):
        raise ValueError("a price table's 'currency' is a string and 'models' an object")
    models: dict[str, TableEntry] = {}
    for name, fields in raw.items():
        if not isinstance(fields, dict):
            raise ValueError(f"price table entry '{name}' is not an object")
        fields = dict(fields)
        cap = fields.pop("max_output_tokens", None)
        if cap is not None and (type(cap) is not int or cap <= 0):
            raise ValueError(f"price table entry '{name}': max_output_tokens is a positive integer")
        models[name.lower()] = TableEntry(PriceConfig.model_validate(fields), cap)
    return PriceTable(as_of, currency, models)


@cache
def builtin_table() -> PriceTable:
    """The table shipped with the gateway, read at first use."""
    text = resources.files("sluicegate.limits").joinpath("data", "prices.json").read_text("utf-8")
    return parse_table(json.loads(text))


class PriceBook:
    """The prices of one config snapshot's models: built once per snapshot, asked per call."""

    __slots__ = ("_memo", "_models", "_table")

    def __init__(self, models: GatewayConfig | Iterable[ModelConfig] = (), table: PriceTable | None = None) -> None:
        """`models`: a config (its `models`), or model entries."""
        if isinstance(models, GatewayConfig):
            models = models.models
        self._models = {m.name: m for m in models}
        self._table = table if table is not None else builtin_table()
        self._memo: dict[tuple[str, str], Price | None] = {}

    @property
    def table(self) -> PriceTable:
        return self._table

    def price_for(self, model: ModelConfig | str | None, upstream_model: str | None) -> Price | None:
        """The price of a call of `model` (a model entry, or its name in the config; None: none)
        served upstream as `upstream_model` (None: the entry's `model`, else its name)."""
        cfg = self._config(model)
        upstream = upstream_model or (cfg.model or cfg.name if cfg is not None else "")
        # A model entry this book was not built from is priced, not remembered under its name.
        if cfg is not None and self._models.get(cfg.name) is not cfg:
            return self._resolve(cfg, upstream)
        key = (cfg.name if cfg is not None else "", upstream)
        try:
            return self._memo[key]
        except KeyError:
            pass
        price = self._resolve(cfg, upstream)
        if len(self._memo) >= MAX_MEMO:
            self._memo.clear()
        self._memo[key] = price
        return price

    def max_output_tokens_for(self, model: ModelConfig | str | None, upstream_model: str | None) -> int | None:
        """The most a model writes in one answer: its entry's `max_output_tokens`, else the
        table's for the upstream model, else None."""
        cfg = self._config(model)
        if cfg is not None and cfg.max_output_tokens is not None:
            return cfg.max_output_tokens
        upstream = upstream_model or (cfg.model or cfg.name if cfg is not None else "")
        found = self._table.find(upstream) if upstream else None
        return found[1].max_output_tokens if found is not None else None

    def _config(self, model: ModelConfig | str | None) -> ModelConfig | None:
        if model is None or isinstance(model, str):
            return self._models.get(model) if model else None
        return model

    def _resolve(self, cfg: ModelConfig | None, upstream: str) -> Price | None:
        if cfg is not None and cfg.price is not None:
            own = cfg.price.model_dump(exclude_none=True)
            if cfg.input_cost_per_mtok is not None:
                own.setdefault("input", cfg.input_cost_per_mtok)
            if cfg.output_cost_per_mtok is not None:
                own.setdefault("output", cfg.output_cost_per_mtok)
            found = self._table.find(upstream) if upstream else None
            base = found[1].price.model_dump(exclude_none=True) if found is not None else {}
            # A price set here also sets what derives from it (cached input and cache writes
            # from input, reasoning from output) unless those are set here too.
            if "input" in own:
                base.pop("cached_input", None)
                base.pop("cache_write", None)
            if "output" in own:
                base.pop("reasoning", None)
            return Price.from_config(PriceConfig(**{**base, **own}))
        if cfg is not None and (cfg.input_cost_per_mtok is not None or cfg.output_cost_per_mtok is not None):
            return Price(input=micro(cfg.input_cost_per_mtok or 0), output=micro(cfg.output_cost_per_mtok or 0))
        found = self._table.find(upstream) if upstream else None
        return Price.from_config(found[1].price) if found is not None else None
