"""The gateway as an ASGI app: the OpenAI data plane, health endpoints, and its lifespan.

`Gateway` owns every long-lived part (store, key index, audit writer, vault, upstream HTTP
session) and the current config snapshot with its pipeline, swapped whole on reload (file
change or SIGHUP). Routing is a dict lookup on the path; no work happens at import.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl

import aiohttp
import orjson
from sqlalchemy.engine import Engine

from sluicegate import tokens
from sluicegate.admin.server import AdminApp
from sluicegate.audit import reason
from sluicegate.audit.chain import AnchorFile, Chain, anchor_path, load_chain_key
from sluicegate.audit.sinks import AuditSinks
from sluicegate.audit.writer import AuditWriter
from sluicegate.call import Call
from sluicegate.config.loader import ConfigInvalid, load_config
from sluicegate.config.snapshot import Snapshot
from sluicegate.dialects import anthropic as anthropic_dialect
from sluicegate.dialects import openai as openai_dialect
from sluicegate.dialects import request_texts
from sluicegate.dialects import responses as responses_dialect
from sluicegate.edge.forwarded import ClientAddress
from sluicegate.edge.protocol import EXTENSION, EdgeState
from sluicegate.egress.context import EGRESS_EXTENSION
from sluicegate.errors import BadRequest, MethodNotAllowed, NotFound, ServiceUnavailable, SluicegateError
from sluicegate.guardrails.base import GuardContext, GuardUnavailable
from sluicegate.limits.counters import CountersUnavailable
from sluicegate.limits.reconcile import Reconciler
from sluicegate.limits.report import caller_view
from sluicegate.limits.service import LimitsService
from sluicegate.observability.collectors import register_collectors
from sluicegate.observability.exposition import send_metrics
from sluicegate.observability.logs import REQUEST_ID, LogSetup
from sluicegate.observability.metrics import GatewayMetrics
from sluicegate.pipeline import Endpoint, Pipeline, send_error
from sluicegate.relay import Relay
from sluicegate.settings import Settings
from sluicegate.stages.base import Services
from sluicegate.stages.identity import KeyIndex
from sluicegate.stages.tracing import tracing_for
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.types import Receive, Scope, Send
from sluicegate.vault import Vault

if TYPE_CHECKING:
    from sluicegate.store.changes import ChangeListener

log = logging.getLogger("sluicegate")
#: the collector's thresholds once the gateway runs (generation 0 allocations, then 1 and 2)
GC_THRESHOLDS = (20_000, 20, 20)


def _openai(name: str, fill: Any) -> Endpoint:
    return Endpoint(
        name,
        openai_dialect.parse_body,
        fill,
        openai_dialect.error_body,
        openai_dialect.sse_error,
        render_response=openai_dialect.render_chat,
        stream_encoder=openai_dialect.ChatStreamEncoder,
    )


_OPENAI_ENDPOINTS = {
    "/chat/completions": _openai("chat", openai_dialect.parse_chat),
    "/completions": _openai("completions", openai_dialect.parse_completions),
    "/embeddings": _openai("embeddings", openai_dialect.parse_embeddings),
}


async def _count_tokens(call: Call) -> bytes:
    """count_tokens for a model whose provider has no such endpoint: the gateway's estimate."""
    assert call.body is not None
    texts = [text for _, text in request_texts(call.endpoint, call.body)]
    model = (call.route.upstream_model if call.route is not None else None) or call.model_requested
    # The encoding's first load happens in a worker thread, not on the event loop.
    await tokens.load(model)
    return anthropic_dialect.count_tokens_body(tokens.count_tokens(texts, model))


_ANTHROPIC: dict[str, Any] = {
    "dialect": "anthropic",
    "to_chat": anthropic_dialect.to_chat,
    "render_response": anthropic_dialect.render_response,
    "stream_encoder": anthropic_dialect.MessagesStreamEncoder,
}
#: the Responses and Anthropic Messages endpoints: translated for every provider but their own
_DIALECT_ENDPOINTS = {
    "/responses": Endpoint(
        "responses",
        openai_dialect.parse_body,
        responses_dialect.parse_responses,
        openai_dialect.error_body,
        openai_dialect.sse_error,
        dialect="responses",
        to_chat=responses_dialect.to_chat,
        render_response=responses_dialect.render_response,
        stream_encoder=responses_dialect.ResponsesStreamEncoder,
    ),
    "/messages": Endpoint(
        "messages",
        anthropic_dialect.parse_body,
        anthropic_dialect.parse_messages,
        anthropic_dialect.error_body,
        anthropic_dialect.sse_error,
        **_ANTHROPIC,
    ),
    "/messages/count_tokens": Endpoint(
        "count_tokens",
        anthropic_dialect.parse_body,
        anthropic_dialect.parse_count_tokens,
        anthropic_dialect.error_body,
        anthropic_dialect.sse_error,
        local=_count_tokens,
        **_ANTHROPIC,
    ),
}
_ROUTES = {**_OPENAI_ENDPOINTS, **_DIALECT_ENDPOINTS}
#: POST routes of the data plane; each also answers without the `/v1` prefix, as clients vary
ENDPOINTS: dict[str, Endpoint] = {
    **{f"/v1{path}": ep for path, ep in _ROUTES.items()},
    **_ROUTES,
}
_JSON = (b"content-type", b"application/json")
#: `/v1/models` runs the header stages only; it has no body to parse
_MODELS = _openai("models", lambda call, body: None)
_SPEND = _openai("spend", lambda call, body: None)
#: a path the gateway does not serve (404), audited under this endpoint name
_UNKNOWN = _openai("unknown", lambda call, body: None)
_ANTHROPIC_UNKNOWN = Endpoint(
    "unknown",
    anthropic_dialect.parse_body,
    lambda call, body: None,
    anthropic_dialect.error_body,
    anthropic_dialect.sse_error,
    dialect="anthropic",
)
#: the paths answered to GET, with the methods they allow (their `Allow` header on a 405)
#: Azure OpenAI's paths, as its clients in the official SDKs call them: a deployment's operation
#: (the deployment names the model; `?api-version=` is not read) and the v1 API under `/openai`
AZURE_DEPLOYMENTS = "/openai/deployments/"
AZURE_V1 = "/openai/v1/"
#: the longest deployment name taken from a path
MAX_DEPLOYMENT = 256


def azure_route(path: str) -> tuple[Endpoint, str | None] | None:
    """The endpoint of an Azure OpenAI path and the deployment it names (None: the v1 API, whose
    body names the model), or None when it is no such path."""
    if path.startswith(AZURE_V1):
        endpoint = ENDPOINTS.get(path[len("/openai") :])
        return (endpoint, None) if endpoint is not None else None
    if path.startswith(AZURE_DEPLOYMENTS):
        deployment, _, operation = path[len(AZURE_DEPLOYMENTS) :].partition("/")
        endpoint = _OPENAI_ENDPOINTS.get("/" + operation)
        if endpoint is not None and deployment and len(deployment) <= MAX_DEPLOYMENT:
            return endpoint, deployment
    return None


_GET_PATHS = {
    "/v1/models": b"GET",
    "/models": b"GET",
    "/v1/spend": b"GET",
    "/healthz": b"GET, HEAD",
    "/readyz": b"GET, HEAD",
}


class Door(Protocol):
    """Another way in for calls (the egress proxy): the gateway stops it before its own parts."""

    async def stop(self) -> None:
        """Take no new call, let those in flight finish (within a bound), and close."""


class Gateway:
    """The running gateway: one per process, made by `build_app` or the CLI."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        settings: Settings | None = None,
        config_path: str | Path | None = None,
        engine: Engine | None = None,
        watch_interval_s: float = 1.0,
        key_refresh_s: float = 0.25,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.config_path = Path(config_path) if config_path else None
        self.engine = engine or create_engine(self.settings.db_url(snapshot.config.database_url))
        audit_cfg = snapshot.audit
        self.vault = Vault(snapshot.config.vault, engine=self.engine)
        chain_key = load_chain_key(audit_cfg.chain, self.vault, self.settings.data_dir)
        #: copies of stored events to files, webhooks and OTLP (`audit.sinks`), kept across reloads
        self.audit_sinks = AuditSinks(list(audit_cfg.sinks), self.vault, self.settings.data_dir)
        self.audit = AuditWriter(
            self.engine,
            batch_size=audit_cfg.batch_size,
            flush_interval_s=audit_cfg.flush_interval_s,
            retry_s=audit_cfg.retry_s,
            max_queue_events=audit_cfg.max_queue_events,
            spill_dir=self.settings.data_dir,
            chain=Chain(chain_key) if audit_cfg.chain.enabled else None,
            anchors=AnchorFile(anchor_path(audit_cfg.chain, self.settings.data_dir)),
            anchor_interval_s=audit_cfg.chain.anchor_interval_s,
            sinks=self.audit_sinks,
            instance=self.settings.instance(),
        )
        self.keys = KeyIndex(KeyStore(self.engine), refresh_s=key_refresh_s)
        #: the change listener on the limits Redis, and the (url, key prefix) it listens on
        self.changes: ChangeListener | None = None
        self._changes_from: tuple[str, str] | None = None
        self.services = Services(
            keys=self.keys,
            audit=self.audit,
            vault=self.vault,
            limits=LimitsService(self.audit, self.vault),
            audit_key=chain_key,
        )
        self.services.cache.data_dir = self.settings.data_dir
        self.services.cache.embed = self.embed
        self.services.limits.reconciler = Reconciler(
            self.engine, self.audit, self.services.limits, lambda: self.snapshot
        )
        #: the `server:` settings the HTTP protocol reads (`edge.protocol`), swapped on reload
        self.edge = EdgeState(snapshot.server)
        self._clients = ClientAddress(snapshot.server.trusted_proxies, snapshot.server.forwarded_header)
        self.services.guard_context = GuardContext(
            http=lambda: self.services.http, vault=self.vault, complete=self.complete
        )
        #: Prometheus metrics, in this gateway's own registry, kept across reloads
        self.metrics = self.services.metrics = GatewayMetrics()
        self.audit.on_commit = self.metrics.observe_audit_write
        self._state = (snapshot, Pipeline(snapshot, self.services))
        self.watch_interval_s = watch_interval_s
        self.relay: Relay | None = None
        self.started = False
        #: set once the startup is done (the egress proxy takes connections from then on)
        self.ready = asyncio.Event()
        #: doors other than the data plane that serve calls (the egress proxy), stopped first
        self.doors: list[Door] = []
        #: stopping: `/readyz` says so while calls are still served (`server.drain_s`)
        self.draining = False
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload_error: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._config_stamp = self._stamp()
        #: the `created` time `/v1/models` reports for configured models
        self.created = int(time.time())
        self._id_prefix = "req_" + secrets.token_hex(7)
        #: HTTP requests being handled (their audit events not queued yet)
        self.in_flight = 0
        self._ids = itertools.count(1)
        #: the process's log setup when the gateway owns it (`sluicegate serve`): reapplied on reload
        self.logs: LogSetup | None = None
        register_collectors(
            self.metrics,
            self,
            self.audit,
            self.services.limits,
            lambda: self.snapshot,
            lambda: self.services.cache.status() if self.snapshot.config.cache.enabled else None,
            self.services.routing.status,
        )

    @property
    def snapshot(self) -> Snapshot:
        """The config snapshot new requests use."""
        return self._state[0]

    @property
    def pipeline(self) -> Pipeline:
        """The stage list of the current snapshot."""
        return self._state[1]

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # Counted until the call's audit event is queued, which is after its last byte went out.
            self.in_flight += 1
            try:
                await self._route(scope, receive, send)
            finally:
                self.in_flight -= 1
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        endpoint = ENDPOINTS.get(path)
        deployment: str | None = None
        if endpoint is None and path.startswith("/openai/"):
            azure = azure_route(path)
            if azure is not None:
                endpoint, deployment = azure
        if endpoint is not None:
            if method != "POST":
                await self._unknown(scope, send, endpoint, MethodNotAllowed(f"Use POST for {_shown(path)}"))
                return
            await self._handle(scope, receive, send, endpoint, deployment)
        elif path in _GET_PATHS and method.encode() not in _GET_PATHS[path]:
            await self._unknown(scope, send, None, MethodNotAllowed(f"Use GET for {_shown(path)}"))
        elif path in ("/v1/models", "/models"):
            await self._models(scope, receive, send)
        elif path == "/v1/spend":
            await self._spend(scope, send)
        elif path == "/healthz":
            await _send_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            await self._ready(send)
        elif path == "/metrics" and self.snapshot.config.observability.metrics.on_data_port:
            await self._metrics(scope, send)
        else:
            unknown = NotFound(f"Unknown path: {_shown(method)} {_shown(path)}", code="unknown_url")
            await self._unknown(scope, send, None, unknown)

    async def _unknown(self, scope: Scope, send: Send, endpoint: Endpoint | None, error: SluicegateError) -> None:
        """A 404 (unknown path) or 405 (wrong method), in the client's dialect with a request id,
        and audited: with the consumer and key id when the request carried a valid key; without
        one, aggregated per source as failed authentications are, so a scanner cannot flood the
        audit."""
        snapshot, pipeline = self._state
        if endpoint is None:
            # Anthropic's SDKs send `anthropic-version` on every request.
            anthropic = scope["path"].startswith(("/v1/messages", "/messages")) or any(
                name == b"anthropic-version" for name, _ in scope["headers"]
            )
            endpoint = _ANTHROPIC_UNKNOWN if anthropic else _UNKNOWN
        call = self._new_call(scope, endpoint, snapshot)
        send = finishing = pipeline.finishing_send(call, send)
        try:
            if pipeline.identity is not None:
                try:
                    await pipeline.identity.on_request(call)
                except SluicegateError:
                    pass  # no key, or a bad one: the answer is still the 404 / 405
            call.fail(error)
            # A 405 says which methods the path takes.
            allow = (
                (b"POST" if scope["path"] in ENDPOINTS else _GET_PATHS.get(scope["path"]))
                if error.status == 405
                else None
            )
            await send_error(call, send, error, endpoint.render_error, [(b"allow", allow)] if allow else None)
        finally:
            if not finishing.finished:
                await pipeline.finish(call)

    def _new_call(self, scope: Scope, endpoint: Endpoint, snapshot: Snapshot) -> Call:
        # A random per-process prefix and a counter: unique across restarts, no syscall per request.
        call = Call(
            f"{self._id_prefix}{next(self._ids):010x}",
            endpoint.name,
            snapshot,
            dict(scope["headers"]),
            endpoint.dialect,
        )
        client = scope.get("client")
        peer = client[0] if client else None
        # The peer's address, or behind a trusted proxy the client's it forwarded.
        clients = self._clients
        call.client_ip = clients.resolve(peer, scope["headers"]) if clients.networks else peer
        extensions = scope.get("extensions")
        egress = extensions.get(EGRESS_EXTENSION) if extensions else None
        if egress is not None:
            # Intercepted by the egress proxy: audited with its host, maybe identified by its network.
            call.egress_host = egress.host
            if egress.network_consumer is not None:
                call.consumer = snapshot.consumers.get(egress.network_consumer)
        # Every line logged while this request's task handles the call names it.
        REQUEST_ID.set(call.request_id)
        return call

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint, deployment: str | None = None
    ) -> None:
        snapshot, pipeline = self._state
        call = self._new_call(scope, endpoint, snapshot)
        call.path_model = deployment
        relay = self.relay
        if relay is None:
            raise RuntimeError("the gateway serves requests only after its lifespan startup")
        extensions = scope.get("extensions")
        edge = extensions.get(EXTENSION) if extensions else None
        await pipeline.run(call, endpoint, relay, receive, send, edge)

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        snapshot, pipeline = self._state
        call = self._new_call(scope, _MODELS, snapshot)
        # Anthropic clients (they send `anthropic-version`) get Anthropic's list and errors.
        anthropic = b"anthropic-version" in call.headers
        send = finishing = pipeline.finishing_send(call, send)
        try:
            if scope["method"] != "GET":
                raise MethodNotAllowed("Use GET for /v1/models")
            for stage in pipeline.header_stages:
                await stage.on_request(call)
            names = snapshot.models_for(call.consumer) if call.consumer is not None else []
            call.status = 200
            body = (anthropic_dialect.models_list if anthropic else openai_dialect.models_list)(names, self.created)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [_JSON, (b"x-request-id", call.request_id.encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        except SluicegateError as exc:
            call.fail(exc)
            await send_error(call, send, exc, anthropic_dialect.error_body if anthropic else openai_dialect.error_body)
        finally:
            if not finishing.finished:
                await pipeline.finish(call)

    async def _spend(self, scope: Scope, send: Send) -> None:
        """`GET /v1/spend[?period=day|week|month]`: the caller's own spend and limits."""
        snapshot, pipeline = self._state
        call = self._new_call(scope, _SPEND, snapshot)
        send = finishing = pipeline.finishing_send(call, send)
        try:
            for stage in pipeline.header_stages:
                await stage.on_request(call)
            assert call.consumer is not None
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            period = query.get("period", "month")
            if period not in ("day", "week", "month"):
                raise BadRequest("'period' is day, week or month", param="period")
            limits = self.services.limits
            counters = limits.memory if not limits.shared else await limits.counters()
            report = await caller_view(self.engine, snapshot, call.consumer, call.key_id, counters, period)
            call.status = 200
            body = orjson.dumps(report)
            headers = [_JSON, (b"x-request-id", call.request_id.encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except CountersUnavailable:
            error = ServiceUnavailable("The limits' counter store is unavailable", code="budget_store_unavailable")
            call.fail(error)
            await send_error(call, send, error, openai_dialect.error_body)
        except SluicegateError as exc:
            call.fail(exc)
            await send_error(call, send, exc, openai_dialect.error_body)
        finally:
            if not finishing.finished:
                await pipeline.finish(call)

    async def _ready(self, send: Send) -> None:
        audit = self.audit
        problems = []
        if self.draining:
            problems.append("draining: the gateway is stopping")
        elif not self.started:
            problems.append("starting")
        if not audit.healthy:
            problems.append(f"audit store failing ({audit.last_error}); events go to the spill file")
        if audit.spill_error is not None:
            problems.append(f"audit spill file cannot be written ({audit.spill_error})")
        details = {"durability": self.snapshot.audit.durability, **audit.status()}
        if len(self.audit_sinks):
            # Shown, not judged: the store holds the trail, a sink's copy failing is not unreadiness.
            details["sinks"] = self.audit_sinks.status()
        body: dict[str, Any] = {"audit": details, "limits": self.services.limits.status()}
        # Shown, not judged: a cache store that fails makes misses, never failed calls.
        cache = self.services.cache.status() if self.snapshot.config.cache.enabled else None
        if cache is not None:
            body["cache"] = cache
        routing = self.services.routing.status()
        if routing:
            # Each target's circuit and load: shown, not judged (a route falls back around an open one).
            body["routing"] = routing
        body["pid"] = os.getpid()
        if problems:
            status = "draining" if self.draining else "unavailable"
            await _send_json(send, 503, {"status": status, "problems": problems, **body})
        else:
            await _send_json(send, 200, {"status": "ready", "audit_pending": audit.pending, **body})

    async def answer_health(self, path: str, send: Send) -> None:
        """`/healthz` (the process answers) or `/readyz` (it serves calls), for the admin listener."""
        if path == "/healthz":
            await _send_json(send, 200, {"status": "ok"})
        else:
            await self._ready(send)

    async def _metrics(self, scope: Scope, send: Send) -> None:
        """`/metrics` on the data port (`observability.metrics.on_data_port`); a 404 while metrics are off."""
        if self.snapshot.config.observability.metrics.enabled:
            await send_metrics(self.metrics, scope, send)
        else:
            unknown = NotFound(f"Unknown path: {_shown(scope['method'])} /metrics", code="unknown_url")
            await self._unknown(scope, send, None, unknown)

    @property
    def admin_app(self) -> AdminApp:
        """The admin plane's ASGI app: `/metrics`, `/healthz`, `/readyz` (see `admin.server`)."""
        return AdminApp(self)

    async def complete(self, model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
        """Ask a configured model directly through its route, with no stage (guards use this:
        no recursion into guards, no consumer policy); returns the answer's text."""
        snapshot = self.snapshot
        route = snapshot.route_for(model)
        if route is None or self.relay is None:
            raise GuardUnavailable(f"model '{model}' is not configured")
        call = Call(f"{self._id_prefix}{next(self._ids):010x}", "chat", snapshot, {})
        call.model_requested = model
        call.route = route
        call.body = {"model": model, "messages": messages, "max_tokens": max_tokens}
        try:
            resp = await self.relay.open(call)
            data = await resp.json(content_type=None)
            if call.translated:
                data = route.provider.parse_response(data, call)
        except (SluicegateError, aiohttp.ClientError, ValueError) as exc:
            raise GuardUnavailable(f"model '{model}' failed: {type(exc).__name__}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise GuardUnavailable(f"model '{model}' gave no answer") from None
        return content if isinstance(content, str) else ""

    async def embed(self, model: str, text: str) -> list[float]:
        """Embed a text with a configured embeddings model, directly through its route (the
        semantic cache uses this: no stage, no consumer policy); returns the vector."""
        snapshot = self.snapshot
        route = snapshot.route_for(model)
        if route is None or self.relay is None:
            raise ValueError(f"model '{model}' is not configured")
        call = Call(f"{self._id_prefix}{next(self._ids):010x}", "embeddings", snapshot, {})
        call.model_requested = model
        call.route = route
        call.body = {"model": model, "input": text}
        resp = await self.relay.open(call)
        try:
            data = await resp.json(content_type=None)
        finally:
            resp.release()
        vector = data["data"][0]["embedding"]
        if not isinstance(vector, list) or not all(isinstance(v, int | float) for v in vector):
            raise ValueError(f"model '{model}' gave no embedding")
        return [float(v) for v in vector]

    # -- lifespan -------------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Start the background parts and open the upstream session.

        Audit events an earlier run spilled are replayed into the store first, when it answers."""
        # The sinks run before the writer, which offers them what it stores (replayed events too).
        self.audit_sinks.start()
        await asyncio.to_thread(self.audit.start)
        await asyncio.to_thread(self.keys.start)
        await self._follow_changes()
        connector = aiohttp.TCPConnector(
            limit=self.snapshot.server.max_upstream_connections, ttl_dns_cache=300, keepalive_timeout=30
        )
        session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False)
        self.services.http = session
        self.relay = Relay(session, self.vault, self.snapshot.server.max_error_body_bytes)
        self.services.limits.http = lambda: self.services.http
        # Budgets resume from the audit trail (spilled events were replayed into it above).
        await self.services.limits.seed()
        self.services.limits.start()
        # Failed calls' audit reasons are redacted by built-in guards: built off the event loop.
        await asyncio.to_thread(reason.preload)
        if tokens.needed_by(self.snapshot.config):
            # This config counts tokens on the request path: load the encoding before the first
            # call, off the event loop. Otherwise it loads on first use (an upstream without usage).
            await asyncio.to_thread(tokens.preload)
        # The semantic cache's model loads in the background, not in its first call's time.
        self.services.cache.warm()
        # A tracing config that cannot start (a header's secret unreadable) stops the startup.
        self.services.tracing = await tracing_for(self.snapshot.config.observability.tracing, None, self.vault)
        if self.config_path is not None:
            self._tasks.append(asyncio.create_task(self._watch_config()))
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
            except (NotImplementedError, RuntimeError, ValueError):
                log.info("SIGHUP reload is not available here; the config file is still watched")
        # Everything loaded so far (config, libraries, tokenizer ranks) lives for the whole process:
        # keep it out of the collector's way, so full collections stay short under load.
        gc.collect()
        gc.freeze()
        # Calls in flight hold many young containers (coroutines, futures, parsed bodies): at the
        # default threshold (700) the collector runs every few calls and re-scans them, measured
        # at about 15 % of the CPU per call at concurrency 16. Every call's garbage is freed by
        # reference counting; cycles wait a little longer (a few MB at most).
        gc.set_threshold(*GC_THRESHOLDS)
        self.started = True
        self.ready.set()

    async def shutdown(self) -> None:
        """Stop taking work, close the upstream session, and flush the audit queue."""
        self.started = False
        # Other doors first (the egress proxy): their calls finish while the pipeline still runs.
        for door in self.doors:
            await door.stop()
        for task in self._tasks:
            task.cancel()
        await self.services.limits.stop()
        await self.services.cache.close()
        if self.relay is not None:
            await self.relay.session.close()
        await asyncio.to_thread(self.keys.stop)
        if self.changes is not None:
            await asyncio.to_thread(self.changes.stop)
        for aggregator in (self.services.auth_failures, self.services.unknown_urls):
            for summary in aggregator.due(all_=True):
                self.audit.submit(summary)
        await asyncio.to_thread(self.audit.close)
        # After the writer: its last batches were offered to the sinks, which deliver them now.
        await asyncio.to_thread(self.audit_sinks.close)
        tracing, self.services.tracing = self.services.tracing, None
        if tracing is not None:
            # Spans still queued are exported, within the export timeout.
            await asyncio.to_thread(tracing.shutdown)

    # -- config reload --------------------------------------------------------------------------

    def _stamp(self) -> tuple[float, int] | None:
        if self.config_path is None:
            return None
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.config_path)
        self._tasks.append(asyncio.create_task(self.reload()))

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval_s)
            stamp = self._stamp()
            if stamp is not None and stamp != self._config_stamp:
                self._config_stamp = stamp
                await self.reload()

    async def _follow_changes(self) -> None:
        """Hear of key changes from the other instances, on the limits Redis when the config has
        one (`store.changes`); the listener follows the config's Redis across reloads."""
        limits = self.snapshot.config.limits
        redis = limits.redis if limits.backend == "redis" else None
        wanted = (redis.url, redis.key_prefix) if redis is not None else None
        if wanted == self._changes_from:
            return
        if self.changes is not None:
            await asyncio.to_thread(self.changes.stop)
            self.changes = None
        self._changes_from = wanted
        if redis is None:
            return
        try:
            url = await self.services.limits.redis_url(redis.url)
        except CountersUnavailable as exc:
            log.error("no change notifications from Redis (%s); key changes are polled", exc)
            return
        from sluicegate.store.changes import ChangeListener

        self.changes = ChangeListener(url, redis.key_prefix, self._on_change)
        self.changes.start()

    def _on_change(self, what: str) -> None:
        """A change notification (in the listener's thread)."""
        if what == "keys":
            self.keys.reload()

    async def reload(self) -> bool:
        """Load the config file again and swap it in whole; keep the old one if it is invalid."""
        assert self.config_path is not None
        try:
            snapshot = await asyncio.to_thread(load_config, self.config_path)
            # Off the event loop too: guards compile their pattern databases (and may load models).
            pipeline = await asyncio.to_thread(Pipeline, snapshot, self.services)
            if tokens.needed_by(snapshot.config) and not tokens.is_loaded():
                await asyncio.to_thread(tokens.preload)
        except ConfigInvalid as exc:
            self.reload_failures += 1
            self.last_reload_error = str(exc)
            log.error("config reload refused, the previous config keeps serving:\n%s", exc)
            return False
        # New budgets start from what the audit trail holds of their window, before they serve.
        await self.services.limits.seed(snapshot)
        self._state = (snapshot, pipeline)
        self.services.cache.warm()
        self.edge.server = snapshot.server
        self._clients = ClientAddress(snapshot.server.trusted_proxies, snapshot.server.forwarded_header)
        self.vault.configure(snapshot.config.vault)
        await asyncio.to_thread(self.audit_sinks.configure, list(snapshot.audit.sinks))
        await self._retrace(snapshot)
        if self.started:
            await self._follow_changes()
        if self.logs is not None:
            self.logs.apply(snapshot.config.observability.logging)
        self.reloads += 1
        self.last_reload_error = None
        log.info(
            "config reloaded from %s (%d models, %d consumers)",
            self.config_path,
            len(snapshot.config.models),
            len(snapshot.consumers),
        )
        return True

    async def _retrace(self, snapshot: Snapshot) -> None:
        """Keep the tracer provider when the tracing settings did not change; else start the new
        one and retire the old (it exports its calls' spans, then shuts down). A new one that
        cannot start leaves the old one serving: traces are not worth refusing a reload."""
        old = self.services.tracing
        try:
            tracing = await tracing_for(snapshot.config.observability.tracing, old, self.vault)
        except Exception as exc:
            log.error("tracing: the reloaded settings cannot start (%s); the previous ones stay", exc)
            return
        self.services.tracing = tracing
        if old is not None and old is not tracing:
            old.retire()


def _shown(text: str) -> str:
    """Client-chosen text (a path, a method) as error messages and the audit show it: bounded,
    control characters replaced."""
    text = text[:200]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


async def _send_json(send: Send, status: int, data: Any) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [_JSON]})
    await send({"type": "http.response.body", "body": orjson.dumps(data)})


def build_app(config_path: str | Path, settings: Settings | None = None) -> Gateway:
    """A gateway for a config file (raises `ConfigInvalid` listing every error)."""
    return Gateway(load_config(config_path), settings=settings, config_path=config_path)


__all__ = ["ENDPOINTS", "Gateway", "build_app"]
