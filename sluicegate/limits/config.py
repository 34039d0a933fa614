"""The `limits:` section of the config: prices, budgets, rate limits and where counters live.

Amounts are written in units of `limits.currency` (`100` is 100 USD) and prices per million
tokens; the gateway keeps money as integer micro-units (`Money`), so sums are exact.
"""

from __future__ import annotations

import re
import zoneinfo
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: what a budget or rate limit is counted per
Scope = Literal["key", "consumer", "group", "model", "provider", "gateway"]
SCOPES: tuple[Scope, ...] = ("key", "consumer", "group", "model", "provider", "gateway")
#: windows aligned to the calendar of a time zone
CALENDAR_UNITS = ("day", "week", "month")
#: fixed windows named by their length
NAMED_SECONDS = {"second": 1, "minute": 60, "hour": 3600}
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def window_seconds(window: str) -> int | None:
    """The length of a window written as `second|minute|hour` or `<N>s|m|h|d`; None for calendar units."""
    if window in NAMED_SECONDS:
        return NAMED_SECONDS[window]
    match = _DURATION.match(window)
    if match is None:
        return None
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class PriceConfig(_Strict):
    """What one call of a model costs, in currency units: per million tokens, per request, per image.

    Cached input, cache writes and reasoning tokens are priced apart when set; unset, they cost
    what input (cached input, cache writes) or output (reasoning) tokens cost."""

    input: float | None = Field(None, ge=0, description="per million input tokens")
    output: float | None = Field(None, ge=0, description="per million output tokens")
    cached_input: float | None = Field(
        None, ge=0, description="per million input tokens read from the provider's cache"
    )
    cache_write: float | None = Field(
        None, ge=0, description="per million input tokens written to the provider's cache"
    )
    reasoning: float | None = Field(None, ge=0, description="per million reasoning (thinking) tokens")
    per_request: float | None = Field(None, ge=0)
    per_image: float | None = Field(None, ge=0, description="per image in the request")


class _Window(_Strict):
    """A counting window: calendar (`day`, `week`, `month` in `timezone`), fixed (`minute`,
    `90s`, `2h`, aligned to the epoch), or `rolling` (the last such length, whatever the clock)."""

    window: str = "minute"
    rolling: bool = False
    timezone: str = "UTC"

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in CALENDAR_UNITS and window_seconds(value) is None:
            raise ValueError(
                f"'{value}' is not a window: day, week, month, second, minute, hour, "
                "or a length such as 30s, 5m, 2h, 7d"
            )
        seconds = window_seconds(value)
        if seconds is not None and not 1 <= seconds <= 366 * 86400:
            raise ValueError("a window lasts from 1 second to 366 days")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{value}' (an IANA name such as Europe/Paris)") from None
        return value


class _Scoped(_Window):
    #: a name for refusals, headers and `sluicegate spend`
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    scope: Scope
    #: which keys, consumers, groups, models or providers (names or globs); empty: each one of the
    #: scope has its own counter (`scope: consumer` with no `match`: every consumer separately)
    match: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _gateway_has_no_match(self) -> _Scoped:
        if self.scope == "gateway" and self.match:
            raise ValueError("a 'gateway' scope counts every call: it takes no 'match'")
        return self


class BudgetConfig(_Scoped):
    """At most `amount` of spend per window on a scope; every budget that applies must have room."""

    window: str = "month"
    amount: float = Field(gt=0, description="in currency units")
    #: percentages of the amount at which an alert fires (once per window and counter)
    alerts: list[float] = Field(default_factory=list)

    @field_validator("alerts")
    @classmethod
    def _alerts(cls, value: list[float]) -> list[float]:
        for pct in value:
            if not 0 < pct <= 100:
                raise ValueError("alert thresholds are percentages above 0 and at most 100")
        return sorted(set(value))


class RateLimitConfig(_Scoped):
    """Requests, tokens (input + output) and concurrent calls per window on a scope."""

    requests: int | None = Field(None, gt=0)
    tokens: int | None = Field(None, gt=0)
    concurrent: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _something(self) -> RateLimitConfig:
        if self.requests is None and self.tokens is None and self.concurrent is None:
            raise ValueError("a rate limit sets at least one of requests, tokens, concurrent")
        return self


class RedisLimitsConfig(_Strict):
    """Counters shared by every instance in a Redis server."""

    #: `redis://host:6379/0` (or `rediss://`), or a secret reference to one (it may hold a password)
    url: str = Field(min_length=1)
    key_prefix: str = Field("sluicegate", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: a counter operation slower than this counts as Redis being down
    timeout_s: float = Field(0.5, gt=0, le=30)
    #: while Redis is down, rate limits are kept in this process at 1/`instances` of their size
    instances: int = Field(1, ge=1, le=10_000)


class AlertsConfig(_Strict):
    """Where budget alerts go besides the log and the audit trail."""

    webhook: str | None = None
    #: extra headers for the webhook; values may be secret references
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(5.0, gt=0, le=60)


class LimitsConfig(_Strict):
    """Cost control: what calls cost, and what each scope may spend and send."""

    #: the currency of prices and budgets (display only: amounts are never converted)
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    backend: Literal["memory", "redis"] = "memory"
    redis: RedisLimitsConfig | None = None
    budgets: list[BudgetConfig] = Field(default_factory=list)
    rate_limits: list[RateLimitConfig] = Field(default_factory=list)
    #: the output cap inserted, for admission, in a request that names none when a budget or a
    #: token limit applies and neither the consumer's `max_tokens` nor the model sets one
    default_max_output_tokens: int = Field(4096, gt=0)
    #: how long a call may wait for calls in flight to settle when their reservations hold the
    #: room its own worst case needs (0: refuse at once)
    budget_wait_s: float = Field(10.0, ge=0, le=600)
    #: a reservation not settled within this time is settled at its estimate by the reaper
    reservation_ttl_s: float = Field(3600.0, ge=1)
    #: Redis: an instance renews its reservations this often ÷ 3; one that stops (a crash) leaves
    #: them to the reaper of another instance after this time
    reservation_lease_s: float = Field(15.0, ge=1, le=3600)
    #: how often counters are compared with the audit trail (0: never)
    reconcile_interval_s: float = Field(300.0, ge=0)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)

    @model_validator(mode="after")
    def _redis(self) -> LimitsConfig:
        if self.backend == "redis" and self.redis is None:
            raise ValueError("backend 'redis' needs a 'redis:' section with its url")
        names = [b.name for b in self.budgets] + [r.name for r in self.rate_limits]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"budget and rate limit names must be unique: {', '.join(dupes)}")
        return self
