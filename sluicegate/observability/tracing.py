"""OpenTelemetry traces of the gateway's calls, exported over OTLP/HTTP in batches off the request path.

Imported only when `observability.tracing.enabled` (it needs `sluicegate[otel]`). `Tracing` is one
gateway's tracer provider, never the process-global one; `CallTrace` is one call's span and its
children, carried by `Call.trace`:

    chat gpt-4o         SERVER    the call, from its first byte to its last, with GenAI attributes
      limits, guardrails.input  INTERNAL  the stages that may wait on a store or a service
      upstream          CLIENT    the provider request; the `traceparent` sent upstream names it
      guardrails.output INTERNAL  the output guards (on a stream: the hold-back window, to its end)

An export that fails never reaches a call: spans wait in a bounded queue, a batch that cannot be
sent is dropped, and the failure is logged once until exports succeed again.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, get_current_span, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sluicegate.errors import SluicegateError
from sluicegate.observability.genai import OPERATIONS, call_attributes, cut, error_type

if TYPE_CHECKING:
    from collections.abc import Sequence

    from yarl import URL

    from sluicegate.call import Call
    from sluicegate.observability.config import TracingConfig
    from sluicegate.vault import Vault

log = logging.getLogger("sluicegate.tracing")

#: the SDK's loggers that log every failed batch, retry and dropped span (`_FailOpenExporter` says it once)
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk._shared_internal",
)
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_ID_LIMIT = (1 << 64) - 1


class Tracing:
    """One gateway's tracer provider: sampler, resource, batch processor and OTLP/HTTP exporter.

    Usage: `tracing = await Tracing.create(config, vault)`; `call.trace = tracing.start(call)` and
    `call.trace.finish(call)` per call; `tracing.shutdown()` (blocking) flushes what is queued."""

    def __init__(self, config: TracingConfig, headers: Mapping[str, str]) -> None:
        self.config = config
        resource = Resource.create({**config.resource_attributes, "service.name": config.service_name})
        self.provider = TracerProvider(
            resource=resource,
            # `start` samples (by trace id ratio, or the client's flag) before it asks the SDK for
            # a span: an unsampled call costs no SDK span at all. What reaches the SDK is recorded.
            sampler=ParentBased(ALWAYS_ON),
            span_limits=SpanLimits(max_span_attributes=64, max_attribute_length=1024, max_events=16, max_links=4),
            shutdown_on_exit=False,
        )
        exporter = OTLPSpanExporter(endpoint=config.endpoint, headers=dict(headers), timeout=config.timeout_s)
        self.exporter = _FailOpenExporter(exporter, config.endpoint)
        self.provider.add_span_processor(
            BatchSpanProcessor(
                self.exporter,
                max_queue_size=config.max_queue_spans,
                schedule_delay_millis=config.export_interval_s * 1000.0,
                max_export_batch_size=config.max_batch_spans,
            )
        )
        self.tracer = self.provider.get_tracer("sluicegate")
        #: a root trace is sampled when its id's low 64 bits are below this (as TraceIdRatioBased)
        self._bound = round(config.sample_ratio * (_TRACE_ID_LIMIT + 1))
        #: calls whose span is open; a retired provider shuts down once none is left
        self.active = 0
        self.retired = False
        #: shut down: its spans are exported, it takes no more
        self.closed = False

    @classmethod
    async def create(cls, config: TracingConfig, vault: Vault) -> Tracing:
        """A provider for `config`, its header references read from the vault (once: a changed
        secret is read again on the next config reload)."""
        from sluicegate.vault.refs import parse_ref

        headers: dict[str, str] = {}
        for name, value in config.headers.items():
            ref = parse_ref(value, allow_prefix=True)
            if ref is None:
                headers[name] = value
            else:
                secret = await vault.aresolve(ref.ref)
                headers[name] = f"{ref.prefix} {secret}" if ref.prefix else secret
        return cls(config, headers)

    def start(self, call: Call) -> CallTrace | UnsampledTrace:
        """Open the call's span (continuing the client's trace when allowed and well formed); an
        unsampled call gets an `UnsampledTrace`, which only names its trace upstream."""
        parent: Context | None = None
        if self.config.continue_client_trace:
            parent = client_context(call.headers)
        if parent is not None:
            remote = get_current_span(parent).get_span_context()
            if not remote.trace_flags.sampled:
                self.active += 1
                return UnsampledTrace(self, remote.trace_id, remote.trace_state.to_header() or None)
        else:
            trace_id = random.getrandbits(128) or 1
            if (trace_id & _TRACE_ID_LIMIT) >= self._bound:
                self.active += 1
                return UnsampledTrace(self, trace_id, None)
        operation = OPERATIONS.get(call.endpoint)
        attributes: dict[str, Any] = {"sluicegate.request_id": call.request_id, "sluicegate.endpoint": call.endpoint}
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        span = self.tracer.start_span(
            operation or call.endpoint,
            parent,
            SpanKind.SERVER,
            attributes,
            start_time=int(call.started_wall * 1e9),
        )
        self.active += 1
        return CallTrace(self, span)

    def release(self) -> None:
        """A call's span ended; a retired provider with no call left shuts down (off the loop)."""
        self.active -= 1
        if self.retired and self.active <= 0:
            self._shutdown_in_background()

    def retire(self) -> None:
        """A config reload replaced this provider: shut it down once its calls have ended."""
        self.retired = True
        if self.active <= 0:
            self._shutdown_in_background()

    def _shutdown_in_background(self) -> None:
        threading.Thread(target=self.shutdown, name="sluicegate-tracing-shutdown", daemon=True).start()

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Export the spans still queued, then stop; blocking, for `timeout_s` at most (default: the
        export timeout), after which what is left is dropped."""
        if self.closed:
            return
        self.closed = True
        # The processor exports what it holds before it stops; against a receiver that is down the
        # exporter would retry until its timeout, batch after batch. Past the deadline the
        # exporter is stopped: its retries end and the batches left fail at once.
        timer = threading.Timer(self.config.timeout_s if timeout_s is None else timeout_s, self.exporter.shutdown)
        timer.daemon = True
        timer.start()
        try:
            self.provider.shutdown()
        finally:
            timer.cancel()


class UnsampledTrace:
    """A call the sampler dropped: no span is made; upstream it still names its trace (flag 00),
    so the trace stays one across services that sample on their own."""

    __slots__ = ("trace_id", "trace_state", "tracing")
    recording = False

    def __init__(self, tracing: Tracing, trace_id: int, trace_state: str | None) -> None:
        self.tracing = tracing
        self.trace_id = trace_id
        self.trace_state = trace_state

    def record(self, name: str, started_ns: int, error: BaseException | None = None) -> None:
        pass

    def hold(self, name: str) -> None:
        pass

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        yield None

    def upstream(self, url: URL, headers: Mapping[str, str]) -> Mapping[str, str]:
        if not self.tracing.config.propagate_upstream:
            return headers
        out = dict(headers)
        out["traceparent"] = f"00-{self.trace_id:032x}-{random.getrandbits(64) or 1:016x}-00"
        if self.trace_state:
            out["tracestate"] = self.trace_state
        return out

    def finish(self, call: Call) -> None:
        self.tracing.release()


class CallTrace:
    """One call's span, its open children, and how they are named and ended."""

    __slots__ = ("context", "held", "recording", "span", "tracing", "upstream_span", "upstream_start_ns")

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self.tracing = tracing
        self.span = span
        #: False when the sampler dropped the trace: children are made (their ids go upstream)
        #: but no attribute is computed
        self.recording = span.is_recording()
        self.context = set_span_in_context(span)
        self.upstream_span: Span | None = None
        self.upstream_start_ns = 0
        #: children that end with the call (a stream's output guards)
        self.held: list[Span] = []

    def child(self, name: str, kind: SpanKind = SpanKind.INTERNAL) -> Span:
        """Start a child span of the call's span (the caller ends it)."""
        return self.tracing.tracer.start_span(name, self.context, kind)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[Span]:
        """A child span around a block; an exception that leaves the block marks it failed."""
        span = self.child(name)
        try:
            yield span
        except BaseException as exc:
            failed(span, exc)
            raise
        finally:
            span.end()

    def record(self, name: str, started_ns: int, error: BaseException | None = None) -> None:
        """A child span that started at `started_ns` and ended now (failed by `error`, if given)."""
        span = self.tracing.tracer.start_span(name, self.context, SpanKind.INTERNAL, start_time=started_ns)
        if error is not None:
            failed(span, error)
        span.end()

    def hold(self, name: str) -> None:
        """Start a child span that ends with the call (the output guards of a stream)."""
        self.held.append(self.child(name))

    def upstream(self, url: URL, headers: Mapping[str, str]) -> Mapping[str, str]:
        """Start the upstream call's span; the request headers with `traceparent` (and the
        trace's `tracestate`) naming it when `propagate_upstream`, else `headers` unchanged."""
        previous = self.upstream_span
        if previous is not None:
            previous.end()
        attributes: dict[str, Any] | None = None
        if self.recording:
            # Scheme, host, port and path only: no query string or user info, where some
            # upstreams take credentials. Request headers are never recorded.
            attributes = {
                "http.request.method": "POST",
                "server.address": url.host or "",
                "url.full": f"{url.scheme}://{url.host}:{url.port}{url.path}",
            }
            if url.port is not None:
                attributes["server.port"] = url.port
        self.upstream_start_ns = start = time.time_ns()
        span = self.upstream_span = self.tracing.tracer.start_span(
            "upstream", self.context, SpanKind.CLIENT, attributes, start_time=start
        )
        if not self.tracing.config.propagate_upstream:
            return headers
        context = span.get_span_context()
        out = dict(headers)
        out["traceparent"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        if context.trace_state:
            out["tracestate"] = context.trace_state.to_header()
        return out

    def finish(self, call: Call) -> None:
        """End the call's spans with what the call settled: status, usage, outcome."""
        try:
            error = error_type(call)
            for span in self.held:
                if error is not None and call.outcome != "ok" and self.recording:
                    span.set_attribute("error.type", error)
                span.end()
            upstream = self.upstream_span
            if upstream is not None:
                if self.recording:
                    _upstream_result(upstream, call)
                # It ends where the upstream's answer ended (`Call.upstream_ms`), not with the call.
                took = call.upstream_ms
                upstream.end(self.upstream_start_ns + int(took * 1e6) if took is not None else None)
            span = self.span
            if self.recording:
                span.set_attributes(call_attributes(call))
                if call.model_requested and call.endpoint in OPERATIONS:
                    span.update_name(f"{OPERATIONS[call.endpoint]} {cut(call.model_requested)}")
                if error is not None:
                    span.set_attribute("error.type", error)
                if call.status >= 500:
                    span.set_status(Status(StatusCode.ERROR, error))
            span.end()
        finally:
            self.tracing.release()


def client_context(headers: Mapping[bytes, bytes]) -> Context | None:
    """The trace context a client's W3C `traceparent` (and `tracestate`) names; None when there
    is none or it is malformed (it is then ignored, and the call starts a trace of its own)."""
    raw = headers.get(b"traceparent")
    if raw is None:
        return None
    carrier = {"traceparent": raw.decode("latin-1")}
    state = headers.get(b"tracestate")
    if state is not None:
        carrier["tracestate"] = state.decode("latin-1")
    context = _PROPAGATOR.extract(carrier, Context())
    if not get_current_span(context).get_span_context().is_valid:
        # Shown raw: the log formatter neutralises control characters.
        log.debug("ignored a malformed traceparent: %s", carrier["traceparent"][:128])
        return None
    return context


def _upstream_result(span: Span, call: Call) -> None:
    status = call.upstream_status
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if status is not None and status >= 400:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
    elif call.error is not None and (status is None or call.outcome.startswith("upstream")):
        # No answer (connection, timeout), or an answer that failed on the way (a cut stream).
        span.set_attribute("error.type", call.error.code)
        span.set_status(Status(StatusCode.ERROR))


def failed(span: Span, exc: BaseException) -> None:
    """Mark a child span failed by `exc`: its error code, or its class name (never its text)."""
    if not span.is_recording():
        return
    kind = exc.code if isinstance(exc, SluicegateError) else type(exc).__name__
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, kind))


class _FailOpenExporter(SpanExporter):
    """The OTLP exporter, its failures logged once (and its recovery once), never raised.

    The batch processor calls it on its own thread; a batch that cannot be sent is dropped."""

    def __init__(self, exporter: OTLPSpanExporter, endpoint: str) -> None:
        self.exporter = exporter
        self.endpoint = endpoint
        self.failing = False
        self.failures = 0
        self.stopped = False
        self._lock = threading.Lock()
        for name in _EXPORTER_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _Silenced) for f in logger.filters):
                logger.addFilter(_Silenced())

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception as exc:  # an exporter bug must not stop the batch thread
            log.debug("span export raised %s", type(exc).__name__)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            if self.failing:
                self.failing = False
                log.warning(
                    "tracing: spans are exported to %s again (%d batches were dropped)", self.endpoint, self.failures
                )
                self.failures = 0
            return result
        self.failures += 1
        if not self.failing:
            self.failing = True
            log.warning(
                "tracing: spans cannot be exported to %s; they are dropped until it answers (calls are not "
                "affected; this is logged once)",
                self.endpoint,
            )
        return result

    def shutdown(self) -> None:
        with self._lock:
            if self.stopped:
                return
            self.stopped = True
        self.exporter.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class _Silenced(logging.Filter):
    """Drops the OTLP exporter's own per-batch failure lines (`_FailOpenExporter` logs once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


__all__ = ["CallTrace", "Tracing", "client_context", "failed"]
