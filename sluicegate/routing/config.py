"""How a model with several targets is routed: its targets, the strategy that orders them, which
failures fall back, retries and circuit breakers. Set on a model of `models:`:

    models:
      - name: smart
        strategy: weighted
        targets:
          - {provider: openai, model: gpt-4o, weight: 3}
          - {provider: azure-eu, model: gpt-4o, weight: 1}
          - {provider: anthropic, model: claude-sonnet-4-5, priority: 1}   # only when both fail
        fallback_on_status: [429, 500, 502, 503, 504]
        retry: {max_attempts: 3}
        breaker: {failure_rate: 0.5, min_calls: 10, open_s: 30}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: how a route orders its targets (`routing.strategies.STRATEGIES`)
Strategy = Literal["priority", "weighted", "round_robin", "least_outstanding", "lowest_latency", "lowest_cost"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetConfig(_Strict):
    """One place a model is served: a provider and its name for the model."""

    provider: str = Field(min_length=1)
    #: the upstream's name for the model; default: the model's `model`, else the name asked for
    model: str | None = None
    #: share of calls (`weighted`, `round_robin`), or preference (`priority`), among its priority
    weight: float = Field(1.0, gt=0, le=1_000_000)
    #: lower first: a target of a higher number is tried only when every lower one failed or is open
    priority: int = Field(0, ge=0, le=1000)


class RetryConfig(_Strict):
    """Attempts per call, the backoff between tries of one target, and the retry budget per target."""

    #: attempts per call, first and fallbacks and retries together
    max_attempts: int = Field(3, ge=1, le=10)
    #: backoff before retrying a target: full jitter up to `base_s * 2**n`, at most `cap_s`; an
    #: upstream's `Retry-After` is honoured up to `max_retry_after_s` (past it, no retry)
    base_s: float = Field(0.25, ge=0, le=60)
    cap_s: float = Field(4.0, ge=0, le=300)
    max_retry_after_s: float = Field(60.0, ge=0, le=3600)
    #: retries of a target at most this share of its calls (plus one a second), so an outage is
    #: not multiplied
    budget_ratio: float = Field(0.2, ge=0, le=1)


class BreakerConfig(_Strict):
    """A circuit breaker per target: open on a failure rate, probe when half open."""

    enabled: bool = True
    failure_rate: float = Field(0.5, gt=0, le=1)
    min_calls: int = Field(10, ge=1, le=100_000)
    window_s: float = Field(30.0, gt=0, le=3600)
    open_s: float = Field(30.0, gt=0, le=3600)
    half_open_probes: int = Field(1, ge=1, le=100)


#: upstream statuses that fall back (or retry) by default, besides connection failures and timeouts
DEFAULT_FALLBACK_STATUS = (408, 409, 429, 500, 502, 503, 504)


class RoutingSettings(_Strict):
    """The `routing:` section: settings of every route."""

    #: the answer header naming the target that served a multi-target call (None: no header)
    target_header: str | None = Field("x-sluicegate-target", pattern=r"^[A-Za-z0-9-]+$")
