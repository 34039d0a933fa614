"""Fake Ollama upstream, native API: `POST /api/chat` (JSON or NDJSON stream) and `GET /api/tags`.

Request and answer shapes: https://github.com/ollama/ollama/blob/main/docs/api.md ("Generate a
chat completion", "List Local Models") and docs/openapi.yaml; streaming is newline-delimited JSON
(`application/x-ndjson`) and the default when `stream` is absent
(https://github.com/ollama/ollama/blob/main/docs/api/streaming.mdx); errors are `{"error": ...}`
(https://github.com/ollama/ollama/blob/main/docs/api/errors.mdx). Ollama has no auth of its own:
a request without `Authorization` is served; one with a Bearer key other than the fake's
`required_key` gets 401, as a server behind an auth proxy (or ollama.com) answers.
Answers follow `wire.plan_answer`, like every fake format; a scripted `reasoning` is `thinking`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.testing.wire import (
    Answer,
    Receive,
    Request,
    Send,
    begin,
    pieces,
    plan_answer,
    send_bytes,
    stream_events,
    text_of,
    words,
)
from sluicegate.testing.wire import add_route as _add_route

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream

NDJSON = b"application/x-ndjson"
ROLES = frozenset({"system", "user", "assistant", "tool"})
THINK_LEVELS = frozenset({"high", "medium", "low"})

#: Ollama's messages for the statuses it answers (docs/api/errors.mdx)
DEFAULT_MESSAGES = {
    400: "invalid request",
    401: "unauthorized",
    403: "forbidden",
    404: "model not found, try pulling it first",
    429: "too many requests",
    500: "an error was encountered while running the model",
    502: "bad gateway",
    503: "server busy, please try again.  maximum pending requests exceeded",
}

#: `plan_answer` finish -> Ollama `done_reason` (tool calls end with "stop", as Ollama's do)
DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop"}


def error_body(status: int, message: str | None = None) -> bytes:
    """An Ollama error body."""
    return orjson.dumps({"error": message if message is not None else DEFAULT_MESSAGES.get(status, "error")})


async def send_error(send: Send, status: int, message: str | None, extra: dict[str, str]) -> None:
    await send_bytes(send, status, error_body(status, message), extra)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _authorized(fake: FakeUpstream, request: Request) -> bool:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return True  # Ollama serves without credentials
    return fake.required_key is None or key == fake.required_key


class _Invalid(Exception):
    """A request Ollama refuses with 400."""


def _validate(data: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(data, dict):
        raise _Invalid("json: cannot unmarshal value into Go value of type api.ChatRequest")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("model is required")
    messages = data.get("messages")
    if messages is None:
        messages = []
    if not isinstance(messages, list):
        raise _Invalid(
            "json: cannot unmarshal messages into Go struct field ChatRequest.messages of type []api.Message"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _Invalid(f"messages[{i}]: role must be one of system, user, assistant, tool")
        if not isinstance(m.get("content", ""), str):
            raise _Invalid("json: cannot unmarshal array into Go struct field Message.messages.content of type string")
        for image in m.get("images") or ():
            try:
                base64.b64decode(image, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise _Invalid("illegal base64 data at input byte 0") from None
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function") if isinstance(tc, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("arguments", {}), dict):
                raise _Invalid(
                    "json: cannot unmarshal string into Go struct field ToolCallFunction"
                    ".messages.tool_calls.function.arguments of type api.ToolCallFunctionArguments"
                )
    if "stream" in data and not isinstance(data["stream"], bool):
        raise _Invalid("json: cannot unmarshal value into Go struct field ChatRequest.stream of type bool")
    fmt = data.get("format")
    if fmt is not None and fmt != "" and fmt != "json" and not isinstance(fmt, dict):
        raise _Invalid('invalid format: expected "json" or a valid JSON schema')
    think = data.get("think")
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        raise _Invalid(f'invalid think value: "{think}" (must be "high", "medium", "low", true, or false)')
    options = data.get("options")
    if options is not None and not isinstance(options, dict):
        raise _Invalid("json: cannot unmarshal value into Go struct field ChatRequest.options of type map")
    for tool in data.get("tools") or ():
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _Invalid("json: cannot unmarshal value into Go struct field ChatRequest.tools of type api.Tool")
    return model, messages


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _metrics(answer: Answer) -> dict[str, Any]:
    """The counts and durations (nanoseconds) of the final object; Ollama omits zero counts."""
    out: dict[str, Any] = {
        "total_duration": 5_000_000 + 1_000_000 * answer.completion_tokens,
        "load_duration": 1_000_000,
        "prompt_eval_duration": 100_000 * max(answer.prompt_tokens, 1),
        "eval_duration": 1_000_000 * max(answer.completion_tokens, 1),
    }
    if answer.reply.usage:
        if answer.prompt_tokens:
            out["prompt_eval_count"] = answer.prompt_tokens
        if answer.completion_tokens:
            out["eval_count"] = answer.completion_tokens
    return out


async def chat(fake: FakeUpstream, request: Request, receive: Receive, send: Send) -> None:
    """`POST /api/chat`."""
    if request.method != "POST":
        await send_bytes(send, 404, b"404 page not found", content_type=b"text/plain")  # gin's answer
        return
    if not _authorized(fake, request):
        await send_error(send, 401, "unauthorized", {})
        return
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        await send_error(send, 400, "invalid character looking for beginning of value", {})
        return
    try:
        model, messages = _validate(data)
    except _Invalid as exc:
        await send_error(send, 400, str(exc), {})
        return
    stream = data.get("stream", True) is not False  # Ollama streams unless told not to
    if not messages:
        # An empty chat only loads the model (docs/api.md, "Load a model"): one object, even streamed.
        loaded = {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": ""}}
        payload = orjson.dumps({**loaded, "done_reason": "load", "done": True})
        await send_bytes(send, 200, payload, content_type=NDJSON if stream else b"application/json")
        return
    reply = fake._next_reply()
    if not await begin(reply, stream, receive, send, send_error):
        return
    options = data.get("options") or {}
    num_predict = options.get("num_predict")
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    answer = plan_answer(
        reply,
        model,
        text_of(last_user.get("content")) if last_user is not None else "",
        sum(words(text_of(m.get("content"))) for m in messages),
        len(messages),
        num_predict if isinstance(num_predict, int) and num_predict > 0 else None,
    )
    done_reason = DONE_REASONS[answer.finish]
    calls = [{"function": {"name": tc.name, "arguments": _arguments(tc.arguments)}} for tc in answer.tool_calls]

    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text or ""}
        if answer.reasoning:
            message["thinking"] = answer.reasoning
        if calls:
            message["tool_calls"] = calls
        body = {
            "model": answer.model,
            "created_at": _now(),
            "message": message,
            "done_reason": done_reason,
            "done": True,
            **_metrics(answer),
        }
        await send_bytes(send, 200, orjson.dumps(body), reply.headers)
        return

    def line(message: dict[str, Any], **fields: Any) -> bytes:
        obj = {"model": answer.model, "created_at": _now(), "message": {"role": "assistant", **message}}
        return orjson.dumps({**obj, **fields}) + b"\n"

    events: list[bytes] = []
    if answer.reasoning:
        events.extend(line({"content": "", "thinking": p}, done=False) for p in pieces(answer.reasoning))
    events.extend(line({"content": p}, done=False) for p in answer.pieces)
    events.extend(line({"content": "", "tool_calls": [c]}, done=False) for c in calls)
    tail = [line({"content": ""}, done=True, done_reason=done_reason, **_metrics(answer))]
    await stream_events(reply, [], events, tail, send, content_type=NDJSON)


async def tags(fake: FakeUpstream, request: Request, receive: Receive, send: Send) -> None:
    """`GET /api/tags`: the fake's models, as locally pulled ones."""
    if request.method != "GET":
        await send_bytes(send, 404, b"404 page not found", content_type=b"text/plain")
        return
    if not _authorized(fake, request):
        await send_error(send, 401, "unauthorized", {})
        return
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": "2025-01-01T00:00:00.000000Z",
            "size": 1_000_000_000,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "8B",
                "quantization_level": "Q4_K_M",
            },
        }
        for name in fake.models
    ]
    await send_bytes(send, 200, orjson.dumps({"models": models}))


_add_route(r"/api/chat", chat)
_add_route(r"/api/tags", tags)
