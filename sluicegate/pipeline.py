"""The request path, top to bottom. The stage order is the policy.

    identity      key or JWT -> consumer                  (headers only: before the body is read)
    access        endpoint, source address, time window   403 (headers only too)
    [parse]       the body, once, by the client's dialect
    model_access  model, provider, streaming, max_tokens  403 / 404
    guardrails    input guards: block / redact / flag     400 content_blocked
    router        model -> provider + upstream model      404
    audit         (strict mode: refuse while the audit store is down)
    [send]        provider request (the client's body, or translated through the neutral model),
                  then relay of the answer (as sent, or rendered in the client's dialect)
    accounting    tokens and cost                         (finally, always)
    audit         one event per call                      (finally, always)

With `audit.durability: before_response`, accounting and audit run just before the response's
last body message is sent (`FinishingSend`), so the event is committed before the client has
the whole answer; the `finally` then has nothing left to do.

Output guards run inside the relay (on the JSON answer, or on the stream's hold-back window).
Later stages slot into `STAGE_ORDER` (limits after access, cache before the router) by name; a
stage whose factory returns None for this config is not in the list at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sluicegate.audit.writer import AuditNotDurable
from sluicegate.errors import BodyTooLarge, SluicegateError
from sluicegate.stages.base import Services, Stage, stage_factories

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot
    from sluicegate.dialects.base import StreamEncoder
    from sluicegate.relay import Relay
    from sluicegate.types import Message, Receive, Send

log = logging.getLogger("sluicegate.pipeline")

#: where each registered stage runs; names not registered are skipped
STAGE_ORDER = (
    "identity",
    "access",
    "model_access",
    "limits",
    "guardrails",
    "cache",
    "router",
    "audit",
    "accounting",
)
#: `on_finish` runs in this order (audit last: it records what the others settled)
FINISH_ORDER = ("accounting", "limits", "cache", "audit")


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


class ClientGone(Exception):
    """The client disconnected before the gateway answered."""


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
        self.finishers = [stages[n] for n in FINISH_ORDER if n in stages]
        #: `audit.durability: before_response`: finish (and commit the event) before the last byte
        self.finish_before_last_byte = snapshot.audit.durability == "before_response"

    def finishing_send(self, call: Call, send: Send) -> FinishingSend | None:
        """The `send` that finishes the call before its last byte, when the config asks for it."""
        return FinishingSend(self, call, send) if self.finish_before_last_byte else None

    async def run(self, call: Call, endpoint: Endpoint, relay: Relay, receive: Receive, send: Send) -> None:
        """Take one call through every stage; always finish with accounting and audit."""
        from sluicegate.relay import relay_answer

        finishing = self.finishing_send(call, send)
        if finishing is not None:
            send = finishing
        started = False
        watcher: asyncio.Future[Any] | None = None
        gone = False
        streaming = False

        def client_gone() -> bool:
            return gone

        try:
            for stage in self.header_stages:
                await stage.on_request(call)
            raw = await read_body(receive, call.snapshot.server.max_body_bytes, call.headers.get(b"content-length"))
            body = endpoint.parse_body(raw)
            call.body = body
            endpoint.fill_call(call, body)
            for stage in self.body_stages:
                await stage.on_request(call)
            if endpoint.local is not None and (call.route is None or not _native(call)):
                # Nothing goes upstream: the gateway answers (count_tokens for other providers).
                await _send_local(call, send, await endpoint.local(call))
                return
            resp = await relay.open(call, endpoint.to_chat)
            if call.stream:
                task = asyncio.current_task()
                assert task is not None

                def on_disconnect(fut: asyncio.Future[Any]) -> None:
                    nonlocal gone
                    if streaming and not fut.cancelled() and fut.result().get("type") == "http.disconnect":
                        gone = True
                        task.cancel()

                watcher = asyncio.ensure_future(receive())
                watcher.add_done_callback(on_disconnect)
                started = streaming = True
                try:
                    # The relay picks the answer's path (see `relay.relay_answer`).
                    await relay_answer(call, resp, send, endpoint, client_gone)
                except asyncio.CancelledError:
                    if not gone:
                        raise
                    task.uncancel()
                    resp.close()
                finally:
                    streaming = False
                if gone:
                    call.outcome = "client_disconnected"
                    call.status = 499
            else:
                # A complete answer is relayed whole: errors are raised before anything is sent.
                await relay_answer(call, resp, send, endpoint)
        except SluicegateError as exc:
            call.fail(exc)
            if not started:
                await send_error(call, send, exc, endpoint.render_error)
        except ClientGone:
            call.outcome = "client_disconnected"
            call.status = 499
        except asyncio.CancelledError:
            call.outcome = "cancelled"
            call.status = call.status or 499
            raise
        except Exception:
            log.exception("unexpected error on request %s", call.request_id)
            error = SluicegateError("The gateway failed to handle this request", code="internal_error")
            call.fail(error)
            if not started:
                await send_error(call, send, error, endpoint.render_error)
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
            if finishing is None or not finishing.finished:
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
        if not self.finished and message["type"] == "http.response.body" and not message.get("more_body"):
            self.finished = True
            if not await self.pipeline.finish(self.call):
                return
        await self.send(message)


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


async def read_body(receive: Receive, limit: int, content_length: bytes | None) -> bytes:
    """The whole request body, refusing (413) past `limit` bytes before reading more."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            declared = 0
        if declared > limit:
            raise BodyTooLarge(f"The request body is {declared} bytes; the limit is {limit} bytes")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes")
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def send_error(
    call: Call, send: Send, error: SluicegateError, render: Callable[[SluicegateError], bytes]
) -> None:
    """Answer with the error in the client's dialect and status."""
    headers = [(b"content-type", b"application/json"), (b"x-request-id", call.request_id.encode())]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(error.retry_after))).encode()))
    if error.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="sluicegate"'))
    body = render(error)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
