"""Fake upstream LLM server speaking the OpenAI HTTP API (JSON and SSE streaming), for tests, benchmarks and demo mode.

A raw ASGI app (no framework, orjson) scripted with ``FakeUpstream.enqueue()`` and inspected through ``requests``;
``serve_in_thread``, ``start_server`` and ``run_server`` run it (or any ASGI app) under uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import math
import re
import socket
import struct
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import orjson
import uvicorn

from sluicegate.testing.wire import (  # noqa: F401  (re-exported names)
    ARG_FRAGMENT,
    DEFAULT_TEXT,
    FORMAT_ROUTES,
    ASGIApp,
    InjectedFault,
    Receive,
    ReceivedRequest,
    Reply,
    Request,
    Scope,
    Send,
    begin,
    drop_connection,
    echo,
    install_log_filter,
    rand,
    read_body,
    send_bytes,
    stream_events,
    text_of,
    tool_call,
    wait_disconnect,
    words,
)
from sluicegate.testing.wire import (
    pieces as split_pieces,
)

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
SYSTEM_FINGERPRINT = "fp_f4ke0c0ffee"
MODELS_CREATED = 1715367049
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
#: the categories `omni-moderation` scores
MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
#: a moderation input containing one of these words (any case) is flagged in its category with score 0.9
MODERATION_TRIGGERS: dict[str, str] = {"kill": "violence", "hate": "hate", "bully": "harassment"}

# --------------------------------------------------------------------------------------------- wire helpers


def _chat_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _plain_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# (type, code, default message) by status, as OpenAI answers them.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", "permission_denied", "You are not allowed to access this resource."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    405: ("invalid_request_error", "method_not_allowed", "Method not allowed."),
    409: ("invalid_request_error", "conflict", "Another request is in progress."),
    413: ("invalid_request_error", "request_too_large", "Request too large."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    504: ("server_error", None, "Gateway timeout."),
}

_UNSET: Any = object()


def error_body(status: int, message: str | None = None, *, param: str | None = None, code: Any = _UNSET) -> bytes:
    """An OpenAI error body for ``status`` (type and code chosen the way OpenAI does)."""
    kind, default_code, default_message = _ERRORS.get(
        status, ("server_error", None, "Server error.") if status >= 500 else ("invalid_request_error", None, "Error.")
    )
    return orjson.dumps(
        {
            "error": {
                "message": default_message if message is None else message,
                "type": kind,
                "param": param,
                "code": default_code if code is _UNSET else code,
            }
        }
    )


def mask_key(key: str) -> str:
    """Mask an API key like OpenAI does in its messages: first 3 and last 2 characters kept (``sk-ab***yz``)."""
    keep = 5 if key.startswith("sk-") else 3  # the "sk-" prefix does not count: "sk-abcdefyz" -> "sk-ab***yz"
    if len(key) < keep + 2 + 3:  # too short to show anything without giving most of it away
        return "***"
    return f"{key[:keep]}***{key[-2:]}"


async def _send_error(
    send: Send,
    status: int,
    message: str | None = None,
    *,
    param: str | None = None,
    code: Any = _UNSET,
    extra: dict[str, str] | None = None,
    retry_after: float | None = None,
) -> None:
    headers = dict(extra or {})
    if retry_after is not None:
        headers["retry-after"] = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
    await send_bytes(send, status, error_body(status, message, param=param, code=code), headers)


@functools.lru_cache(maxsize=4096)
def _embedding(text: str, dims: int) -> tuple[list[float], str]:
    """A deterministic unit vector for ``text`` (from SHAKE-256) as float32 values and as base64 little-endian."""
    raw = struct.unpack(f"<{dims}I", hashlib.shake_256(text.encode()).digest(4 * dims))
    values = [x / 2147483648.0 - 1.0 for x in raw]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    vec = array("f", [v / norm for v in values])
    floats = vec.tolist()
    if sys.byteorder != "little":
        vec.byteswap()
    return floats, base64.b64encode(vec.tobytes()).decode()


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _opt_int(data: dict[str, Any], name: str, minimum: int = 1) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadRequest(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if value < minimum:
        raise _BadRequest(f"Invalid '{name}': integer below minimum value {minimum}.", name, "integer_below_min_value")
    return value


def _require_model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if model is None:
        raise _BadRequest("You must provide a model parameter.", "model", None)
    if not isinstance(model, str):
        raise _BadRequest("Invalid type for 'model': expected a string.", "model", "invalid_type")
    return model


def _include_usage(data: dict[str, Any]) -> bool:
    options = data.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


# --------------------------------------------------------------------------------------------- the app


async def _send_openai_error(send: Send, status: int, message: str | None, extra: dict[str, str]) -> None:
    await send_bytes(send, status, error_body(status, message), extra)


def _tool_call(raw: dict[str, Any]) -> dict[str, Any]:
    tc = tool_call(raw)
    return {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}


class FakeUpstream:
    """ASGI app speaking the OpenAI HTTP API; scripted with enqueue(), inspected with requests.

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
            # Azure OpenAI: /openai/deployments/{deployment}/{operation}?api-version=..., key in `api-key`
            # (https://learn.microsoft.com/azure/ai-services/openai/reference)
            if "api-version=" not in scope.get("query_string", b"").decode("latin-1"):
                await _send_error(send, 404, "Resource not found", code="404")
                return
            path = "/v1/" + azure.group("operation")
            headers = dict(headers)  # the recorded request keeps what was sent
            key = headers.pop("api-key", None)
            headers.pop("authorization", None)
            if key:
                headers["authorization"] = f"Bearer {key}"
        route = _ROUTES.get(path)
        if route is None:
            if path.startswith("/v1/models/") and method == "GET":
                if await self._check_auth(headers, send):
                    await self._model(path[len("/v1/models/") :], send)
                return
            await _send_error(send, 404, f"Invalid URL ({method} {path})", code=None)
            return
        allowed, handler = route
        if method != allowed:
            await _send_error(send, 405, f"Invalid method for URL ({method} {path})", extra={"allow": allowed})
            return
        if not await self._check_auth(headers, send):
            return
        if handler is None:
            await self._models(send)
            return
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            await _send_error(
                send,
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            )
            return
        if not isinstance(data, dict):
            await _send_error(send, 400, "The request body must be a JSON object.", code="invalid_type")
            return
        try:
            await handler(self, data, receive, send)
        except _BadRequest as exc:
            await _send_error(send, 400, exc.message, param=exc.param, code=exc.code)

    async def _check_auth(self, headers: dict[str, str], send: Send) -> bool:
        auth = headers.get("authorization", "")
        if not auth and not self.require_auth:
            return True
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            await _send_error(
                send,
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
            return False
        if self.required_key is not None and key != self.required_key:
            await _send_error(
                send,
                401,
                f"Incorrect API key provided: {mask_key(key)}. "
                "You can find your API key at https://platform.openai.com/account/api-keys.",
            )
            return False
        return True

    async def _begin(self, reply: Reply, stream: bool, receive: Receive, send: Send) -> bool:
        """Apply delay, faults and error statuses; True when the normal answer should follow."""
        return await begin(reply, stream, receive, send, _send_openai_error)

    async def _stream(self, reply: Reply, head: list[bytes], body: list[bytes], tail: list[bytes], send: Send) -> None:
        await stream_events(reply, head, body, tail, send)

    # ----------------------------------------------------------------------------------------- endpoints

    async def _mistral_chat(self, data: dict[str, Any], receive: Receive, send: Send) -> None:
        """Mistral's chat completions (https://docs.mistral.ai/api/#tag/chat): the OpenAI shape, but
        unknown fields are refused (422) and a stream's last chunk always carries the usage."""
        extra = [k for k in ("stream_options", "max_completion_tokens", "seed") if k in data]
        if extra:
            detail = [
                {
                    "type": "extra_forbidden",
                    "loc": ["body", k],
                    "msg": "Extra inputs are not permitted",
                    "input": data[k],
                }
                for k in extra
            ]
            body = {"object": "error", "message": {"detail": detail}, "type": "invalid_request_error", "param": None}
            await send_bytes(send, 422, orjson.dumps({**body, "code": None}))
            return
        await self._chat(data, receive, send, usage_on_finish=True)

    async def _chat(self, data: dict[str, Any], receive: Receive, send: Send, usage_on_finish: bool = False) -> None:
        model = _require_model(data)
        messages = data.get("messages")
        if messages is None:
            raise _BadRequest("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
        if not isinstance(messages, list):
            raise _BadRequest("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
        if not messages:
            raise _BadRequest(
                "Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages", "empty_array"
            )
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _BadRequest(
                    f"Invalid type for 'messages[{i}]': expected an object with a role.",
                    f"messages[{i}]",
                    "invalid_type",
                )
        n = _opt_int(data, "n") or 1
        max_tokens = _opt_int(data, "max_completion_tokens") or _opt_int(data, "max_tokens")
        stream = data.get("stream") is True

        reply = self._next_reply()
        if not await self._begin(reply, stream, receive, send):
            return

        tool_calls = [_tool_call(tc) for tc in reply.tool_calls] if reply.tool_calls else None
        content = reply.content
        if content is None and tool_calls is None:
            last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
            echoed = echo(text_of(last_user.get("content"))) if last_user is not None else None
            content = DEFAULT_TEXT if echoed is None else echoed
        pieces = split_pieces(content) if content is not None else []
        finish = "tool_calls" if tool_calls else "stop"
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces = pieces[:max_tokens]
            content = "".join(pieces)
            finish = "length"
        fragments = [ARG_FRAGMENT.findall(tc["function"]["arguments"]) for tc in tool_calls or []]
        per_choice = len(pieces) + sum(len(f) + 1 for f in fragments)
        prompt_tokens = reply.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = sum(words(text_of(m.get("content"))) + 3 for m in messages)
        completion_tokens = reply.completion_tokens if reply.completion_tokens is not None else per_choice * n
        usage = (
            _chat_usage(prompt_tokens, completion_tokens, reply.cached_tokens or 0, reply.reasoning_tokens or 0)
            if reply.usage
            else None
        )
        cid = "chatcmpl-" + rand(29)
        created = int(time.time())
        model_name = reply.model or model

        if not stream:
            choices = []
            for i in range(n):
                message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
                if tool_calls:
                    message["tool_calls"] = (
                        tool_calls if i == 0 else [dict(tc, id=f"call_{rand(24)}") for tc in tool_calls]
                    )
                choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": choices,
            }
            if usage is not None:
                obj["usage"] = usage
            obj["service_tier"] = "default"
            obj["system_fingerprint"] = SYSTEM_FINGERPRINT
            await send_bytes(send, 200, orjson.dumps(obj), reply.headers)
            return

        include_usage = _include_usage(data) and usage is not None

        def event(choices: list[dict[str, Any]], last_usage: dict[str, Any] | None = None) -> bytes:
            chunk: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            }
            if include_usage:
                chunk["usage"] = last_usage
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        def choice(i: int, delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
            return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

        first_content = "" if content is not None else None
        head = [event(choice(i, {"role": "assistant", "content": first_content, "refusal": None})) for i in range(n)]
        body = [event(choice(i, {"content": piece})) for piece in pieces for i in range(n)]
        for i in range(n):
            for t, (tc, frags) in enumerate(zip(tool_calls or [], fragments, strict=True)):
                call_id = tc["id"] if i == 0 else f"call_{rand(24)}"
                opening = {
                    "index": t,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": tc["function"]["name"], "arguments": ""},
                }
                body.append(event(choice(i, {"tool_calls": [opening]})))
                body.extend(
                    event(choice(i, {"tool_calls": [{"index": t, "function": {"arguments": f}}]})) for f in frags
                )
        tail = [event(choice(i, {}, finish)) for i in range(n)]
        if usage_on_finish and usage is not None:
            last = orjson.loads(tail[-1][6:])
            last["usage"] = usage
            tail[-1] = b"data: " + orjson.dumps(last) + b"\n\n"
        elif include_usage:
            tail.append(event([], usage))
        tail.append(b"data: [DONE]\n\n")
        await self._stream(reply, head, body, tail, send)

    async def _completions(self, data: dict[str, Any], receive: Receive, send: Send) -> None:
        model = _require_model(data)
        prompt = data.get("prompt")
        if prompt is None:
            raise _BadRequest("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
        if isinstance(prompt, str):
            prompts = [prompt]
            prompt_words = words(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
            prompt_words = sum(words(p) for p in prompt)
        elif isinstance(prompt, list) and prompt:  # token arrays
            prompts = [""] * (1 if all(isinstance(p, int) for p in prompt) else len(prompt))
            prompt_words = _token_count(prompt)
        else:
            raise _BadRequest("Invalid type for 'prompt': expected a string or an array.", "prompt", "invalid_type")
        n = _opt_int(data, "n") or 1
        max_tokens = _opt_int(data, "max_tokens")
        stream = data.get("stream") is True

        reply = self._next_reply()
        if not await self._begin(reply, stream, receive, send):
            return

        texts: list[tuple[str, str]] = []  # (text, finish_reason) per prompt
        for p in prompts:
            text = reply.content
            if text is None:
                echoed = echo(p)
                text = DEFAULT_TEXT if echoed is None else echoed
            pieces = split_pieces(text)
            finish = "stop"
            if max_tokens is not None and len(pieces) > max_tokens:
                text = "".join(pieces[:max_tokens])
                finish = "length"
            texts.append((text, finish))
        prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else prompt_words
        completion_tokens = reply.completion_tokens
        if completion_tokens is None:
            completion_tokens = sum(len(split_pieces(t)) for t, _ in texts) * n
        usage = _plain_usage(prompt_tokens, completion_tokens) if reply.usage else None
        cid = "cmpl-" + rand(29)
        created = int(time.time())
        model_name = reply.model or model

        if not stream:
            choices = [
                {"text": text, "index": k * n + j, "logprobs": None, "finish_reason": finish}
                for k, (text, finish) in enumerate(texts)
                for j in range(n)
            ]
            obj: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model_name,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            }
            if usage is not None:
                obj["usage"] = usage
            await send_bytes(send, 200, orjson.dumps(obj), reply.headers)
            return

        include_usage = _include_usage(data) and usage is not None

        def event(choices: list[dict[str, Any]], last_usage: dict[str, Any] | None = None) -> bytes:
            chunk: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model_name,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices,
            }
            if include_usage:
                chunk["usage"] = last_usage
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        body: list[bytes] = []
        tail: list[bytes] = []
        for k, (text, finish) in enumerate(texts):
            for j in range(n):
                index = k * n + j
                body.extend(
                    event([{"text": piece, "index": index, "logprobs": None, "finish_reason": None}])
                    for piece in split_pieces(text)
                )
                tail.append(event([{"text": "", "index": index, "logprobs": None, "finish_reason": finish}]))
        if include_usage:
            tail.append(event([], usage))
        tail.append(b"data: [DONE]\n\n")
        await self._stream(reply, [], body, tail, send)

    async def _embeddings(self, data: dict[str, Any], receive: Receive, send: Send) -> None:
        model = _require_model(data)
        raw = data.get("input")
        if raw is None:
            raise _BadRequest("Missing required parameter: 'input'.", "input", "missing_required_parameter")
        inputs: list[str]
        if isinstance(raw, str):
            inputs = [raw]
            tokens = words(raw)
        elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
            inputs = raw
            tokens = sum(words(x) for x in raw)
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = ["tokens:" + ",".join(map(str, raw))]
            tokens = len(raw)
        elif isinstance(raw, list) and raw and all(isinstance(x, list) and x for x in raw):
            inputs = ["tokens:" + ",".join(map(str, x)) for x in raw]
            tokens = _token_count(raw)
        else:
            raise _BadRequest("'$.input' is invalid. Please check the API reference.", "input", "invalid_value")
        if any(x == "" for x in inputs):
            raise _BadRequest("'$.input' is invalid: empty strings are not allowed.", "input", "invalid_value")
        dims = _opt_int(data, "dimensions") or 8
        fmt = data.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise _BadRequest(f"Invalid value for 'encoding_format': {fmt!r}.", "encoding_format", "invalid_value")

        reply = self._next_reply()
        if not await self._begin(reply, False, receive, send):
            return
        slot = 1 if fmt == "base64" else 0
        items = [
            {"object": "embedding", "index": i, "embedding": _embedding(text, dims)[slot]}
            for i, text in enumerate(inputs)
        ]
        prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else tokens
        obj: dict[str, Any] = {"object": "list", "data": items, "model": reply.model or model}
        if reply.usage:
            obj["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        await send_bytes(send, 200, orjson.dumps(obj), reply.headers)

    async def _moderations(self, data: dict[str, Any], receive: Receive, send: Send) -> None:
        """Flags an input in a category when it holds that category's word of ``MODERATION_TRIGGERS``.

        A scripted ``Reply`` applies its status, fault, delay, model and headers; its content is not used.
        """
        raw = data.get("input")
        if raw is None:
            raise _BadRequest("Missing required parameter: 'input'.", "input", "missing_required_parameter")
        inputs: list[str]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
            inputs = raw
        elif isinstance(raw, list) and raw and all(isinstance(x, dict) for x in raw):
            inputs = [text_of(raw)]  # multi-modal parts moderate as one input
        else:
            raise _BadRequest("'$.input' is invalid. Please check the API reference.", "input", "invalid_value")
        model = data.get("model", DEFAULT_MODERATION_MODEL)
        if not isinstance(model, str):
            raise _BadRequest("Invalid type for 'model': expected a string.", "model", "invalid_type")

        reply = self._next_reply()
        if not await self._begin(reply, False, receive, send):
            return
        results = []
        for text in inputs:
            lowered = text.lower()
            hits = {category for word, category in MODERATION_TRIGGERS.items() if word in lowered}
            results.append(
                {
                    "flagged": bool(hits),
                    "categories": {c: c in hits for c in MODERATION_CATEGORIES},
                    "category_scores": {c: 0.9 if c in hits else 0.01 for c in MODERATION_CATEGORIES},
                    "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
                }
            )
        obj = {"id": "modr-" + rand(24), "model": reply.model or model, "results": results}
        await send_bytes(send, 200, orjson.dumps(obj), reply.headers)

    def _model_obj(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": MODELS_CREATED, "owned_by": "fake-upstream"}

    async def _models(self, send: Send) -> None:
        payload = orjson.dumps({"object": "list", "data": [self._model_obj(m) for m in self.models]})
        await send_bytes(send, 200, payload)

    async def _model(self, model_id: str, send: Send) -> None:
        if model_id not in self.models:
            await _send_error(
                send, 404, f"The model '{model_id}' does not exist or you do not have access to it.", param="model"
            )
            return
        await send_bytes(send, 200, orjson.dumps(self._model_obj(model_id)))


def _token_count(raw: list[Any]) -> int:
    return sum(len(x) if isinstance(x, list) else 1 for x in raw)


# path -> (method, handler); handler None is the models list.
_AZURE_PATH = re.compile(r"^/openai/deployments/[^/]+/(?P<operation>chat/completions|completions|embeddings)$")

_ROUTES: dict[str, tuple[str, Callable[..., Awaitable[None]] | None]] = {
    "/v1/chat/completions": ("POST", FakeUpstream._chat),
    "/mistral/v1/chat/completions": ("POST", FakeUpstream._mistral_chat),
    "/v1/completions": ("POST", FakeUpstream._completions),
    "/v1/embeddings": ("POST", FakeUpstream._embeddings),
    "/v1/moderations": ("POST", FakeUpstream._moderations),
    "/v1/models": ("GET", None),
}


# --------------------------------------------------------------------------------------------- running servers


# The other wire formats register their routes when imported.
from sluicegate.testing import fake_anthropic, fake_bedrock, fake_cohere, fake_gemini, fake_ollama  # noqa: E402, F401


def _config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",
        http="auto",
        ws="none",
        lifespan="auto",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run an ASGI app under uvicorn (uvloop + httptools when available) in a daemon thread; yield its base URL."""
    sock = _bind(host, port)
    url = _base_url(sock)
    server = uvicorn.Server(_config(app, host, port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn {url}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10.0
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the server for {url} exited during startup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server for {url} did not start within 10 s")
            time.sleep(0.002)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=5.0)
        sock.close()


async def start_server(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0
) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Start an ASGI app under uvicorn as a task of the running loop; return once it listens (stop: should_exit)."""
    sock = _bind(host, port)
    url = _base_url(sock)
    server = uvicorn.Server(_config(app, host, port))
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn {url}")
    while not server.started:
        if task.done():
            sock.close()
            task.result()
            raise RuntimeError(f"the server for {url} exited during startup")
        await asyncio.sleep(0.002)
    return server, task, url


async def run_server(app: ASGIApp, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve an ASGI app with uvicorn in the current event loop until it is told to exit (signal or should_exit)."""
    await uvicorn.Server(_config(app, host, port)).serve()
