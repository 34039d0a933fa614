"""Fake upstream LLM server for tests, benchmarks and demo mode: `FakeUpstream`, a raw ASGI app
(no framework, orjson) scripted with ``enqueue()`` and inspected through ``requests``.

It dispatches each request to a wire format: the routes the format modules register in
`wire.FORMAT_ROUTES` (Anthropic, Bedrock, Cohere, Gemini, Ollama), else the OpenAI API
(`fake_openai`, Azure paths rewritten onto it). `servers.py` runs it under uvicorn.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Sequence

import orjson

# The other wire formats register their routes in `wire.FORMAT_ROUTES` when imported.
from sluicegate.testing import fake_anthropic, fake_bedrock, fake_cohere, fake_gemini, fake_ollama  # noqa: F401
from sluicegate.testing.fake_openai import ROUTES, BadRequest, get_model, list_models, mask_key, send_error
from sluicegate.testing.servers import run_server, serve_in_thread, start_server
from sluicegate.testing.wire import (
    DEFAULT_TEXT,
    FORMAT_ROUTES,
    RECEIVED_KEY,
    Receive,
    ReceivedRequest,
    Reply,
    Request,
    Scope,
    Send,
    install_log_filter,
    read_body,
)

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_TEXT",
    "FakeUpstream",
    "ReceivedRequest",
    "Reply",
    "mask_key",
    "run_server",
    "serve_in_thread",
    "start_server",
]

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")

# Azure OpenAI: /openai/deployments/{deployment}/{operation}?api-version=..., key in `api-key`
# (https://learn.microsoft.com/azure/ai-services/openai/reference)
_AZURE_PATH = re.compile(r"^/openai/deployments/[^/]+/(?P<operation>chat/completions|completions|embeddings)$")


class FakeUpstream:
    """ASGI app speaking the OpenAI HTTP API (and the other formats); scripted with enqueue(), inspected with requests.

    Token counts are deterministic, not tiktoken: prompt_tokens is the number of whitespace-separated words in all
    message text contents plus 3 per message (legacy completions: words of the prompt; embeddings: words of each
    string input or length of each token array); completion_tokens is the number of stream pieces of the answer
    (per choice) or, for tool calls, the number of argument fragments plus 1 per call.
    """

    def __init__(
        self,
        *,
        default: Reply | None = None,
        record: bool = True,
        max_recorded: int = 1000,
        required_key: str | None = None,
        require_auth: bool = True,
        models: Sequence[str] = DEFAULT_MODELS,
    ) -> None:
        self.default = default
        self.record = record
        self.max_recorded = max_recorded
        self.required_key = required_key
        #: False: answer without any Authorization header, as local servers (Ollama, vLLM) do
        self.require_auth = require_auth
        self.models = list(models)
        self.requests: list[ReceivedRequest] = []
        self.calls = 0
        self.calls_by_path: dict[str, int] = {}
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        install_log_filter()

    # ----------------------------------------------------------------------------------------- scripting

    def enqueue(self, *replies: Reply) -> None:
        """Queue replies (FIFO); each model request pops one, then ``default`` (or ``Reply()``) answers."""
        self._queue.extend(replies)

    def reset(self) -> None:
        """Clear the queue, the recorded requests and the counters."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.calls = 0
            self.calls_by_path.clear()

    @property
    def pending(self) -> int:
        """Number of scripted replies not yet consumed."""
        return len(self._queue)

    def _next_reply(self) -> Reply:
        try:
            return self._queue.popleft()
        except IndexError:
            return self.default if self.default is not None else Reply()

    def _note(self, method: str, path: str, scope: Scope, headers: dict[str, str], body: bytes) -> None:
        with self._lock:
            self.calls += 1
            self.calls_by_path[path] = self.calls_by_path.get(path, 0) + 1
            if self.record:
                query = scope.get("query_string", b"").decode("latin-1")
                self.requests.append(ReceivedRequest(method, path, query, headers, body))
                if len(self.requests) > self.max_recorded:
                    del self.requests[: len(self.requests) - self.max_recorded]

    # ----------------------------------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point (http and lifespan)."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = await read_body(receive)
        self._note(method, path, scope, headers, body or b"")
        if body is None:
            return
        # The credential as sent, for scripted messages that echo it (`Reply.error_message`).
        RECEIVED_KEY.set(_credential(headers))
        for pattern, format_handler in FORMAT_ROUTES:
            match = pattern.fullmatch(path)
            if match is not None:
                query = scope.get("query_string", b"").decode("latin-1")
                raw_path = (scope.get("raw_path") or path.encode()).decode("latin-1")
                request = Request(method, path, query, headers, body, match, raw_path)
                await format_handler(self, request, receive, send)
                return
        azure = _AZURE_PATH.match(path)
        if azure is not None:
            if "api-version=" not in scope.get("query_string", b"").decode("latin-1"):
                await send_error(send, 404, "Resource not found", code="404")
                return
            path = "/v1/" + azure.group("operation")
            headers = dict(headers)  # the recorded request keeps what was sent
            key = headers.pop("api-key", None)
            headers.pop("authorization", None)
            if key:
                headers["authorization"] = f"Bearer {key}"
        await self._openai(method, path, headers, body, receive, send)

    async def _openai(
        self, method: str, path: str, headers: dict[str, str], body: bytes, receive: Receive, send: Send
    ) -> None:
        """Serve a path of the OpenAI API: method and auth checked, the JSON body parsed for the handler."""
        route = ROUTES.get(path)
        if route is None:
            if path.startswith("/v1/models/") and method == "GET":
                if await self._check_auth(headers, send):
                    await get_model(self, path[len("/v1/models/") :], send)
                return
            await send_error(send, 404, f"Invalid URL ({method} {path})", code=None)
            return
        allowed, handler = route
        if method != allowed:
            await send_error(send, 405, f"Invalid method for URL ({method} {path})", extra={"allow": allowed})
            return
        if not await self._check_auth(headers, send):
            return
        if handler is None:
            await list_models(self, send)
            return
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            await send_error(
                send,
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            )
            return
        if not isinstance(data, dict):
            await send_error(send, 400, "The request body must be a JSON object.", code="invalid_type")
            return
        try:
            await handler(self, data, receive, send)
        except BadRequest as exc:
            await send_error(send, 400, exc.message, param=exc.param, code=exc.code)

    async def _check_auth(self, headers: dict[str, str], send: Send) -> bool:
        """OpenAI's Bearer auth (optional when ``require_auth`` is False), against ``required_key`` when set."""
        auth = headers.get("authorization", "")
        if not auth and not self.require_auth:
            return True
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            await send_error(
                send,
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
            return False
        if self.required_key is not None and key != self.required_key:
            await send_error(
                send,
                401,
                f"Incorrect API key provided: {mask_key(key)}. "
                "You can find your API key at https://platform.openai.com/account/api-keys.",
            )
            return False
        return True


def _credential(headers: dict[str, str]) -> str:
    """The credential of a request, in whichever header its format puts it."""
    for name in ("x-api-key", "x-goog-api-key", "api-key"):
        if headers.get(name):
            return headers[name]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
