"""The request path, top to bottom. The stage order is the policy.

    tracing       opens the call's span (when enabled); limits and guards run in child spans
    identity      key or JWT -> consumer                  (headers only: before the body is read)
    access        endpoint, source address, time window   403 (headers only too)
    [parse]       the body (bounded, within its deadline, decoded), once, by the client's dialect;
                  from here a client that leaves cancels the call   408 / 413 / 415 / 499
    model_access  model, provider, streaming, max_tokens  403 / 404
    limits        budgets and rate limits: reserve the worst case   429 / 503
    guardrails    input guards: block / redact / flag     400 content_blocked
    router        model -> provider + upstream model      404
    cache         a stored answer for the same request (exact, then semantic): answered here,
                  through the output guards; a miss records its answer as it passes
    audit         (strict mode: refuse while the audit store is down)
    [send]        provider request (the client's body, or translated through the neutral model),
                  then relay of the answer (as sent, or rendered in the client's dialect)
    accounting    tokens and cost                         (finally, always)
    limits        settle the reservation with the actual use   (finally, always)
    cache         stores a whole, successful answer of a miss      (finally, always)
    audit         one event per call                      (finally, always)
    metrics       counts the call in the Prometheus metrics   (finally, always)
    tracing       ends the call's span with what the others settled   (finally, always)

Accounting and audit run just before the response's last body message is sent
(`FinishingSend`): a call is not reported complete until its audit event is queued, and with
`audit.durability: before_response` until it is committed. The `finally` runs them only for a
call that sent no last message (a client that left, a failure mid-stream).

Output guards run inside the relay (on the JSON answer, or on the stream's hold-back window).
Later stages slot into `STAGE_ORDER` by name; a stage whose factory returns None for this
config is not in the list at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sluicegate.audit.writer import AuditNotDurable
from sluicegate.edge.body import ClientGone, read_body
from sluicegate.errors import SluicegateError
from sluicegate.relay import relay_answer
from sluicegate.relay.cached import relay_cached
from sluicegate.stages.base import Services, Stage, stage_factories
from sluicegate.stages.tracing import TracingStage

if TYPE_CHECKING:
    import aiohttp

    from sluicegate.call import Call
    from sluicegate.config.snapshot import Route, Snapshot
    from sluicegate.dialects.base import StreamEncoder
    from sluicegate.edge.protocol import EdgeRequest
    from sluicegate.relay import Relay
    from sluicegate.types import Message, Receive, Send

log = logging.getLogger("sluicegate.pipeline")

#: where each registered stage runs; names not registered are skipped
STAGE_ORDER = (
    "tracing",
    "identity",
    "access",
    "model_access",
    "limits",
    "guardrails",
    "router",
    "cache",
    "audit",
    "accounting",
    "metrics",
)
#: `on_finish` runs in this order (audit last: it records what the others settled)
FINISH_ORDER = ("accounting", "limits", "router", "cache", "audit", "metrics", "tracing")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A data-plane endpoint of a dialect: how its body is parsed, translated and rendered."""

    name: str
    parse_body: Callable[[bytes], dict[str, Any]]
    fill_call: Callable[[Call, dict[str, Any]], None]
    render_error: Callable[[SluicegateError], bytes]
    render_stream_error: Callable[[SluicegateError], bytes]
    #: the client's wire format (a provider whose `native_dialect` is this one gets passthrough)
    dialect: str = "openai"
    #: the neutral chat body of a request (None: the body already is one)
    to_chat: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    #: a neutral completion as this endpoint's JSON answer
    render_response: Callable[[dict[str, Any], Call], dict[str, Any]] | None = None
    #: neutral chunks as this endpoint's stream events
    stream_encoder: Callable[[Call], StreamEncoder] | None = None
    #: answers the call without an upstream when the provider cannot (count_tokens elsewhere)
    local: Callable[[Call], Awaitable[bytes]] | None = None


class Pipeline:
    """The stages for one config snapshot, in order; built once per snapshot."""

    def __init__(self, snapshot: Snapshot, services: Services) -> None:
        factories = stage_factories()
        stages: dict[str, Stage] = {}
        for name in STAGE_ORDER:
            factory = factories.get(name)
            if factory is not None:
                stage = factory(snapshot, services)
                if stage is not None:
                    stages[name] = stage
        unplaced = set(factories) - set(STAGE_ORDER)
        if unplaced:
            raise ValueError(f"stages registered but not placed in STAGE_ORDER: {sorted(unplaced)}")
        ordered = list(stages.values())
        self.stages = ordered
        self.names = [s.name for s in ordered]
        # Stages that decide on headers alone run before the body is read and parsed.
        split = next((i for i, s in enumerate(ordered) if s.needs_body), len(ordered))
        self.header_stages = ordered[:split]
        self.body_stages = ordered[split:]
        tracing = stages.get("tracing")
        if isinstance(tracing, TracingStage):
            # Stages run in child spans of the call's; an untraced pipeline has no wrapper at all.
            self.header_stages = tracing.traced(self.header_stages)
            self.body_stages = tracing.traced(self.body_stages)
        self.finishers = [stages[n] for n in FINISH_ORDER if n in stages]
        #: who is calling, for answers outside the request path (an unknown URL names its caller)
        self.identity = stages.get("identity")

    def finishing_send(self, call: Call, send: Send) -> FinishingSend:
        """The `send` that finishes the call (accounting, audit) before its last byte."""
        return FinishingSend(self, call, send)

    async def run(
        self,
        call: Call,
        endpoint: Endpoint,
        relay: Relay,
        receive: Receive,
        send: Send,
        edge: EdgeRequest | None = None,
    ) -> None:
        """Take one call through every stage; always finish with accounting and audit.

        `edge` is the request's handle on `EdgeProtocol` (None under another server): it enforces
        the body and write deadlines and reports a disconnect without a task of our own."""
        send = finishing = FinishingSend(self, call, send)
        started = False
        watcher: asyncio.Future[Any] | None = None
        gone = watching = False
        resp: aiohttp.ClientResponse | None = None
        task = asyncio.current_task()
        assert task is not None

        def client_gone() -> bool:
            return gone

        def on_gone() -> None:
            # The client left: stop the call wherever it is (a stage, the upstream call, the relay).
            nonlocal gone
            if watching and not gone:
                gone = True
                task.cancel()

        try:
            for stage in self.header_stages:
                await stage.on_request(call)
            raw = await read_body(receive, call.snapshot.server, call.headers, edge)
            # From now on a client that leaves is noticed at once, before the first byte of an answer too.
            watching = True
            if edge is not None:
                edge.on_gone = on_gone
            else:
                watcher = asyncio.ensure_future(receive())
                watcher.add_done_callback(lambda fut: on_gone() if _disconnected(fut) else None)
            call.body_size = len(raw)
            call.raw_body = raw
            body = endpoint.parse_body(raw)
            if call.path_model is not None:
                body["model"] = call.path_model  # the deployment in an Azure OpenAI path names the model
            call.body = body
            endpoint.fill_call(call, body)
            for stage in self.body_stages:
                await stage.on_request(call)
            cached = call.cache
            if cached is not None and cached.entry is not None:
                # A cache hit: the stored answer, in the client's dialect; nothing goes upstream.
                await relay_cached(call, cached.entry, send, endpoint)
                return
            if endpoint.local is not None and (call.route is None or not _native(call)):
                # Nothing goes upstream: the gateway answers (count_tokens for other providers).
                await _send_local(call, send, await endpoint.local(call))
                return
            plan = call.plan
            if plan is None:
                if edge is not None and call.route is not None:
                    # No write to the client waits past the provider's total time for the whole call.
                    edge.deadline = _write_deadline(call, call.route)
                resp = await relay.open(call, endpoint.to_chat)
            else:
                # A route of several targets: tried in turn until one answers (`routing.service`);
                # the write deadline counts from the answer of the one that served.
                resp = await plan.open(call, relay, endpoint.to_chat)
                if edge is not None and call.route is not None:
                    edge.deadline = _write_deadline(call, call.route)
            # The relay picks the answer's path (see `relay.relay_answer`): complete or streamed,
            # passed through or translated; a complete answer's errors are raised before anything
            # is sent, a stream's end it in-band.
            started = call.stream
            await relay_answer(call, resp, send, endpoint, client_gone)
        except SluicegateError as exc:
            watching = False  # the answer is an error now; a client leaving changes nothing
            call.fail(exc)
            if not started:
                await send_error(call, send, exc, endpoint.render_error)
        except ClientGone:
            call.outcome = "client_disconnected"
            call.status = 499
        except asyncio.CancelledError:
            if not gone:
                call.outcome = "cancelled"
                call.status = call.status or 499
                raise
            # Our own cancellation: the client left. The upstream connection is closed with it.
            task.uncancel()
            if resp is not None:
                resp.close()
            _client_left(call, edge)
        except Exception:
            watching = False
            log.exception("unexpected error on request %s", call.request_id)
            error = SluicegateError("The gateway failed to handle this request", code="internal_error")
            call.fail(error)
            if not started:
                await send_error(call, send, error, endpoint.render_error)
        finally:
            watching = False
            if edge is not None:
                edge.on_gone = None
                if edge.stalled:
                    _client_left(call, edge)
            if watcher is not None and not watcher.done():
                watcher.cancel()
            if not finishing.finished:
                await self.finish(call)

    async def finish(self, call: Call) -> bool:
        """Run every finisher (accounting, audit ...), even when the task is being cancelled.

        False when the audit event could not be made durable (`before_response` only)."""
        cancelled = False
        durable = True
        for stage in self.finishers:
            try:
                await stage.on_finish(call)
            except asyncio.CancelledError:
                cancelled = True
            except AuditNotDurable:
                durable = False
            except Exception:
                log.exception("stage %s failed to finish request %s", stage.name, call.request_id)
        if cancelled:
            raise asyncio.CancelledError
        return durable


class FinishingSend:
    """An ASGI `send` that runs the pipeline's finishers before the response's last body message.

    Every answer path (JSON, stream end, error, local answer) has settled the call's status,
    outcome and usage before that message, so the audit event is complete. When the event could
    not be made durable, the last message is withheld: the client sees an incomplete response,
    never a complete one that left no record.
    """

    __slots__ = ("call", "finished", "pipeline", "send")

    def __init__(self, pipeline: Pipeline, call: Call, send: Send) -> None:
        self.pipeline = pipeline
        self.call = call
        self.send = send
        #: the finishers have run (the caller's `finally` must not run them again)
        self.finished = False

    async def __call__(self, message: Message) -> None:
        tap = self.call.answer_tap
        if tap is not None and message["type"] == "http.response.body":
            tap.update(message.get("body", b""))
        if not self.finished and message["type"] == "http.response.body" and not message.get("more_body"):
            self.finished = True
            if not await self.pipeline.finish(self.call):
                return
        await self.send(message)


def _disconnected(received: asyncio.Future[Any]) -> bool:
    """Whether a `receive()` that completed says the client disconnected."""
    return not received.cancelled() and received.exception() is None and received.result()["type"] == "http.disconnect"


def _client_left(call: Call, edge: EdgeRequest | None) -> None:
    """Record a client that disconnected, or stopped reading until its connection was cut."""
    call.outcome = "client_stalled" if edge is not None and edge.stalled else "client_disconnected"
    call.status = 499


def _native(call: Call) -> bool:
    """Whether the call's provider speaks the client's dialect."""
    return call.route is not None and call.route.provider.native_dialect == call.dialect


async def _send_local(call: Call, send: Send, body: bytes) -> None:
    call.status = 200
    call.ttft_ms = call.elapsed_ms()
    headers = [
        (b"content-type", b"application/json"),
        (b"x-request-id", call.request_id.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    call: Call,
    send: Send,
    error: SluicegateError,
    render: Callable[[SluicegateError], bytes],
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer with the error in the client's dialect and status (`extra`: more headers)."""
    headers = [(b"content-type", b"application/json"), (b"x-request-id", call.request_id.encode())]
    if extra:
        headers += extra
    if call.limit_headers:
        headers += call.limit_headers
    if error.retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(error.retry_after))).encode()))
    if error.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="sluicegate"'))
    body = render(error)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _write_deadline(call: Call, route: Route) -> float:
    """The loop time past which no write to the client waits: the provider's total time for the
    call, or the call's own deadline (its route's timeout, the client's header) when sooner."""
    now = asyncio.get_running_loop().time()
    total_s = route.provider.timeouts.total_s
    deadline = call.deadline
    if deadline is not None:
        # The call's deadline is on `time.monotonic()`; the loop keeps its own clock.
        total_s = min(total_s, deadline - time.monotonic())
    return now + total_s
