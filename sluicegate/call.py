"""`Call`: the per-request state every pipeline stage reads and writes.

One object per request, created by the app, filled top to bottom by the stages, and turned into
exactly one audit event at the end. Slotted: it is made on every request.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sluicegate.scrub import MAX_MESSAGE_CHARS, NOTHING, Scrubber

if TYPE_CHECKING:
    from sluicegate.audit.content import AnswerTap
    from sluicegate.cache.state import CacheState
    from sluicegate.config.snapshot import Consumer, Route, Snapshot
    from sluicegate.errors import SluicegateError
    from sluicegate.guardrails.engine import CallGuards
    from sluicegate.limits.plan import Held
    from sluicegate.observability.tracing import CallTrace, UnsampledTrace
    from sluicegate.routing.service import RoutePlan


class Call:
    """Everything known about one request: who, what, where it went, what came back."""

    __slots__ = (
        "answer_tap",
        "body",
        "body_size",
        "cache",
        "cache_write_tokens",
        "cached_tokens",
        "client_ip",
        "client_request_id",
        "completion_tokens",
        "consumer",
        "cost_micro_usd",
        "deadline",
        "decision",
        "dialect",
        "egress_host",
        "endpoint",
        "error",
        "guards",
        "headers",
        "include_usage",
        "key_id",
        "limit_headers",
        "limits",
        "model_requested",
        "model_served",
        "outcome",
        "output_cap",
        "path_model",
        "plan",
        "prompt_tokens",
        "provider",
        "raw_body",
        "reasoning_tokens",
        "request_id",
        "route",
        "routed_by",
        "scrub",
        "snapshot",
        "started",
        "started_wall",
        "status",
        "stream",
        "total_tokens",
        "trace",
        "translated",
        "ttft_ms",
        "upstream_ms",
        "upstream_started",
        "upstream_status",
        "usage_source",
        "usage_text",
    )

    def __init__(
        self,
        request_id: str,
        endpoint: str,
        snapshot: Snapshot,
        headers: dict[bytes, bytes],
        dialect: str = "openai",
    ) -> None:
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self.request_id = request_id
        self.endpoint = endpoint
        #: the client's wire format: openai | anthropic | responses
        self.dialect = dialect
        #: the provider does not speak the client's dialect: request and answer are translated
        self.translated = False
        self.snapshot = snapshot
        #: request headers the gateway reads (lower-case names); not the whole set
        self.headers = headers
        self.client_ip: str | None = None
        #: the host an egress-intercepted call was for (None: the call came by the data plane)
        self.egress_host: str | None = None
        #: the model the request's path names (an Azure OpenAI deployment), which wins over the body's
        self.path_model: str | None = None
        self.client_request_id: str | None = None
        self.consumer: Consumer | None = None
        self.key_id: str | None = None
        #: the parsed request body; stages read it, nobody mutates it (retries rebuild from it)
        self.body: dict[str, Any] | None = None
        #: the request body's size in bytes, as decoded (the limits' input estimate)
        self.body_size = 0
        #: the request body as received (decoded), for the audit's HMAC of it
        self.raw_body: bytes | None = None
        #: sees every response body message (the audit's HMAC of the answer; `audit.content`)
        self.answer_tap: AnswerTap | None = None
        self.model_requested: str | None = None
        self.stream = False
        #: whether the client itself asked for the usage chunk of a stream
        self.include_usage = False
        #: output tokens (per choice) the gateway asks for when the request names no limit: the
        #: consumer's `max_tokens` rule shared among the choices; None: no rule
        self.output_cap: int | None = None
        self.route: Route | None = None
        self.provider: str | None = None
        self.model_served: str | None = None
        self.status = 0
        self.upstream_status: int | None = None
        self.decision = "allowed"
        #: ok | rejected | denied | upstream_error | client_disconnected | ...
        self.outcome = "ok"
        self.error: SluicegateError | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.total_tokens: int | None = None
        #: of the prompt tokens, those read from / written to the provider's cache; of the
        #: completion tokens, the reasoning ones (None: the upstream did not say)
        self.cached_tokens: int | None = None
        self.cache_write_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        #: upstream | counted | none
        self.usage_source = "none"
        #: the answer's texts, kept to count its tokens when the upstream sent no usage
        self.usage_text: list[str] | None = None
        self.cost_micro_usd: int | None = None
        self.ttft_ms: float | None = None
        #: `perf_counter()` when the request went upstream (0.0: it did not), and how long the
        #: upstream took, in ms, until its answer was read to the end or failed (for a stream: until
        #: its last chunk arrived); the rest of the call's time is the gateway's own
        self.upstream_started = 0.0
        self.upstream_ms: float | None = None
        #: guard state when guards apply to this call (see `guardrails.engine`)
        self.guards: CallGuards | None = None
        #: removes the credentials this call sent upstream from upstream text (set by `Relay.open`)
        self.scrub: Scrubber = NOTHING
        #: what the limits stage reserved for this call, to settle at its end (`limits.plan.Held`)
        self.limits: Held | None = None
        #: rate-limit headers of the tightest scopes, sent with the answer
        self.limit_headers: list[tuple[bytes, bytes]] | None = None
        #: the call's span and its children, while tracing is enabled (`stages.tracing`)
        self.trace: CallTrace | UnsampledTrace | None = None
        #: what the response cache decided, on an endpoint and route it covers (`stages.cache`)
        self.cache: CacheState | None = None
        #: a multi-target route's way through its targets, and its attempts (`stages.router`)
        self.plan: RoutePlan | None = None
        #: the rules that chose or narrowed the call's targets (a `when` rule's id, pins' ids)
        self.routed_by: str | None = None
        #: `time.monotonic()` by which the whole call must be done (the route's
        #: timeout, the client's deadline header; None: the provider's own timeouts alone)
        self.deadline: float | None = None

    def fail(self, error: SluicegateError) -> None:
        """Record a refusal or failure: its status, audit decision and outcome. The error's message
        is scrubbed of the call's credentials and cut here, before anything renders or records it
        (it may quote the upstream)."""
        if self.scrub or len(error.message) > MAX_MESSAGE_CHARS:
            error.message = self.scrub(error.message)
            error.args = (error.message,)
        self.error = error
        self.status = error.status
        self.decision = error.decision
        if self.outcome == "ok":
            self.outcome = error.code

    def upstream_done(self) -> None:
        """Record that the upstream's answer ended (read to its end, cut, or failed) now."""
        if self.upstream_started:
            self.upstream_ms = (time.perf_counter() - self.upstream_started) * 1000.0

    def elapsed_ms(self) -> float:
        """Milliseconds since the request arrived."""
        return (time.perf_counter() - self.started) * 1000.0
