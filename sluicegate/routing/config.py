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
        when:                                  # content-aware: the first rule that holds picks
          - name: private-data                 # the targets instead
            found: [pii, confidential]         # input guards that found something
            targets: [{provider: on-prem, model: llama3.1:70b}]

    routing:
      pins:                                    # where some calls may go, whatever the route says
        - {name: eu-data, groups: [eu-staff], regions: ["eu-*"]}
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
    #: per attempt: the time this target has to begin its answer (its response headers) before
    #: the call falls back or retries (default: the provider's timeouts alone)
    timeout_s: float | None = Field(None, gt=0, le=3600)
    #: the most output tokens a call may ask of this target: a larger request is lowered to it,
    #: and a request that names no limit is given it
    max_tokens: int | None = Field(None, gt=0)


class RetryConfig(_Strict):
    """Attempts per call, the backoff between tries of one target, and the retry budget per target."""

    #: attempts per call, first and fallbacks and retries together
    max_attempts: int = Field(3, ge=1, le=10)
    #: backoff before retrying a target: full jitter up to `base_s * 2**n`, at most `cap_s`; an
    #: upstream's `Retry-After` is honoured up to `max_retry_after_s` (past it, no retry)
    base_s: float = Field(0.25, ge=0, le=60)
    cap_s: float = Field(4.0, ge=0, le=300)
    max_retry_after_s: float = Field(60.0, ge=0, le=3600)
    #: retries of a target at most this share of its calls (or one per 10 s), so an outage is
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
#: (529: Anthropic's "overloaded")
DEFAULT_FALLBACK_STATUS = (408, 409, 429, 500, 502, 503, 504, 529)


class Condition(_Strict):
    """What a call's input holds, as the input guards found it (every listed condition must hold;
    each list holds when any of its entries does)."""

    #: names of input guards that found something in the call (a guard that could not run and
    #: let the call through counts as having found something: routing fails closed)
    found: list[str] = Field(default_factory=list)
    #: labels of what the input guards found (`email`, `credit_card`, `max_tokens` ...; globs)
    labels: list[str] = Field(default_factory=list)
    #: true: the request holds an image; false: it holds none
    images: bool | None = None

    def is_empty(self) -> bool:
        return not self.found and not self.labels and self.images is None


class RouteRule(Condition):
    """A content-aware rule of a model: when it holds, the call goes to its `targets` instead."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    targets: list[TargetConfig] = Field(min_length=1, max_length=64)
    #: how these targets are ordered (default: the model's strategy)
    strategy: Strategy | None = None


class PinConfig(Condition):
    """Where some calls may go: those of some consumers or groups, or holding some kind of data,
    are served only by the listed providers or providers of the listed regions, fallbacks
    included. A pin without `consumers` and `groups` applies to every consumer; one without
    conditions on the content, to every call of its consumers."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    consumers: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    #: the providers allowed (names or globs)
    providers: list[str] = Field(default_factory=list)
    #: the regions allowed (globs matched against each provider's `region`; a provider without a
    #: region is in none)
    regions: list[str] = Field(default_factory=list)


#: request headers that carry the client's own deadline for the whole call, in seconds; the
#: official OpenAI and Anthropic SDKs send their timeout as `x-stainless-timeout`
DEFAULT_DEADLINE_HEADERS = ("x-sluicegate-timeout", "x-stainless-timeout")


class RoutingSettings(_Strict):
    """The `routing:` section: settings of every route."""

    #: the answer header naming the target that served a multi-target call (None: no header)
    target_header: str | None = Field("x-sluicegate-target", pattern=r"^[A-Za-z0-9-]+$")
    #: where some calls may go (checked for every model, single target or several)
    pins: list[PinConfig] = Field(default_factory=list, max_length=1000)
    #: headers read for the client's deadline (the first present counts; [] ignores them all)
    deadline_headers: list[str] = Field(default_factory=lambda: list(DEFAULT_DEADLINE_HEADERS), max_length=8)
