"""Fake Cohere upstream: `POST /v2/chat`, JSON or SSE events, as the v2 Chat API answers.

Request: https://docs.cohere.com/reference/chat (v2 messages, tools, `tool_choice` REQUIRED/NONE,
`p`, `k`, `stop_sequences` ...); stream: https://docs.cohere.com/reference/chat-stream and
https://docs.cohere.com/docs/streaming (`message-start`, `content-start`, `content-delta`,
`content-end`, `tool-plan-delta`, `tool-call-start`, `tool-call-delta`, `tool-call-end`,
`message-end`); errors: https://docs.cohere.com/reference/errors (`{"message"}`, v2 adds `id`).
Answers follow `wire.plan_answer`, like every fake format; a scripted `reasoning` is the
`tool_plan` of an answer with tool calls, a `thinking` content item otherwise.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.testing.wire import (
    Answer,
    Receive,
    Request,
    Send,
    begin,
    dumps,
    pieces,
    plan_answer,
    rand,
    send_bytes,
    sse,
    stream_events,
    text_of,
    words,
)
from sluicegate.testing.wire import add_route as _add_route

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream

#: Cohere's messages for error statuses it documents (https://docs.cohere.com/reference/errors)
DEFAULT_MESSAGES = {
    400: "invalid request: the request body is not valid",
    401: "invalid api token",
    402: "Please add or update your payment method at https://dashboard.cohere.com/billing to continue",
    404: "model not found, make sure the correct model ID was used and that you have access to the model.",
    429: "You are past the per minute request limit, please wait and try again later.",
    498: "blocked input: please adjust your prompt and try again",
    499: "request cancelled",
    500: "internal server error, this has been reported to our developers",
    503: "service unavailable",
    504: "gateway timeout",
}

#: request fields of `POST /v2/chat` (https://docs.cohere.com/reference/chat); others are refused
FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "tools",
        "strict_tools",
        "documents",
        "citation_options",
        "response_format",
        "safety_mode",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "k",
        "p",
        "logprobs",
        "tool_choice",
        "thinking",
        "priority",
    }
)

#: content item types each role takes (v2 message shapes)
CONTENT_TYPES = {
    "system": frozenset({"text"}),
    "user": frozenset({"text", "image_url", "document"}),
    "assistant": frozenset({"text", "thinking"}),
    "tool": frozenset({"text", "document"}),
}

#: neutral finish of `plan_answer` -> Cohere's
FINISH = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool_calls": "TOOL_CALL"}


def error_body(status: int, message: str | None = None) -> bytes:
    """A Cohere v2 error body."""
    text = message if message is not None else DEFAULT_MESSAGES.get(status, "internal server error")
    return orjson.dumps({"id": str(uuid.uuid4()), "message": text})


async def send_error(send: Send, status: int, message: str | None, extra: dict[str, str]) -> None:
    await send_bytes(send, status, error_body(status, message), extra)


class _Invalid(Exception):
    """A request Cohere refuses with 400 `invalid request: ...`."""


def _number(data: dict[str, Any], name: str, low: float, high: float) -> None:
    value = data.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"invalid request: {name} must be a number")
    if not low <= value <= high:
        raise _Invalid(f"invalid request: {name} must be between {low} and {high} inclusive")


def _validate(data: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(data, dict):
        raise _Invalid("invalid request: the request body must be a JSON object")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise _Invalid(f"invalid request: unknown field: parameter {unknown[0]} is not a valid field")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("a model parameter is required for this endpoint.")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid("invalid request: messages must not be empty")
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in CONTENT_TYPES:
            raise _Invalid(f"invalid request: messages[{i}].role must be one of user, assistant, system, tool")
        assert isinstance(m, dict)
        content = m.get("content")
        if isinstance(content, list):
            for item in content:
                kind = item.get("type") if isinstance(item, dict) else None
                if kind not in CONTENT_TYPES[role]:
                    raise _Invalid(f"invalid request: messages[{i}]: content type {kind!r} is not valid for {role}")
        elif content is not None and not isinstance(content, str):
            raise _Invalid(f"invalid request: messages[{i}].content must be a string or an array")
        if role == "tool" and not m.get("tool_call_id"):
            raise _Invalid(f"invalid request: messages[{i}]: tool messages need a tool_call_id")
        if role == "assistant":
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("arguments", ""), str):
                    raise _Invalid(f"invalid request: messages[{i}]: tool call arguments must be a JSON string")
    if "stream" in data and not isinstance(data["stream"], bool):
        raise _Invalid("invalid request: stream must be a boolean")
    _number(data, "temperature", 0, 2)
    _number(data, "p", 0.01, 0.99)
    _number(data, "k", 0, 500)
    _number(data, "frequency_penalty", 0, 1)
    _number(data, "presence_penalty", 0, 1)
    stops = data.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or len(stops) > 5):
        raise _Invalid("invalid request: stop_sequences must be a list of at most 5 strings")
    choice = data.get("tool_choice")
    if choice is not None:
        if choice not in ("REQUIRED", "NONE"):
            raise _Invalid("invalid request: tool_choice must be one of REQUIRED, NONE")
        if choice == "REQUIRED" and not data.get("tools"):
            raise _Invalid("invalid request: tool_choice REQUIRED needs tools")
    for tool in data.get("tools") or ():
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise _Invalid("invalid request: tools must be of type function")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _Invalid("invalid request: a tool needs a name")
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise _Invalid("invalid request: max_tokens must be a positive integer")
    return model, messages


def _cut_at_stop(answer: Answer, stops: list[str]) -> str | None:
    """Cohere stops before a stop sequence and says STOP_SEQUENCE; the answer is cut the same way."""
    text = answer.text
    if not text or not stops:
        return None
    hits = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
    if not hits:
        return None
    answer.text = text[: min(hits)]
    answer.pieces = pieces(answer.text)
    if answer.reply.completion_tokens is None:
        answer.completion_tokens = len(answer.pieces)
    return "STOP_SEQUENCE"


def _usage(answer: Answer) -> dict[str, Any]:
    prompt, completion = answer.reply.counts(answer.prompt_tokens, answer.completion_tokens)
    counts = {"input_tokens": prompt, "output_tokens": completion}
    out: dict[str, Any] = {"billed_units": dict(counts), "tokens": dict(counts)}
    if answer.reply.cached_tokens is not None:
        out["cached_tokens"] = answer.reply.cached_tokens
    return out


async def chat(fake: FakeUpstream, request: Request, receive: Receive, send: Send) -> None:
    """`POST /v2/chat`."""
    if request.method != "POST":
        await send_error(send, 404, f"route {request.method} {request.path} not found", {"allow": "POST"})
        return
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        if fake.require_auth or fake.required_key is not None:
            await send_error(send, 401, "no api key supplied", {})
            return
    elif fake.required_key is not None and key != fake.required_key:
        await send_error(send, 401, "invalid api token", {})  # Cohere never echoes the key
        return
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        await send_error(send, 400, "invalid request: the request body must be valid JSON", {})
        return
    try:
        model, messages = _validate(data)
    except _Invalid as exc:
        await send_error(send, 400, str(exc), {})
        return
    reply = fake._next_reply()
    stream = data.get("stream") is True and reply.fault != "json_stream"
    if not await begin(reply, stream, receive, send, send_error):
        return

    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    answer = plan_answer(
        reply,
        model,
        text_of(last_user.get("content")) if last_user is not None else "",
        sum(words(text_of(m.get("content"))) for m in messages),
        len(messages),
        data.get("max_tokens"),
    )
    for scripted, tc in zip(reply.tool_calls or (), answer.tool_calls, strict=True):
        if not scripted.get("id"):
            tc.id = f"{tc.name}_{rand(12).lower()}"  # Cohere ids: the tool's name and a suffix
    finish = _cut_at_stop(answer, data.get("stop_sequences") or []) or FINISH[answer.finish]
    message_id = str(uuid.uuid4())
    usage = _usage(answer) if reply.usage else None

    if not stream:
        message: dict[str, Any] = {"role": "assistant"}
        content: list[dict[str, Any]] = []
        if answer.reasoning and not answer.tool_calls:
            content.append({"type": "thinking", "thinking": answer.reasoning})
        if answer.text is not None:
            content.append({"type": "text", "text": answer.text})
        if answer.tool_calls:
            if answer.reasoning:
                message["tool_plan"] = answer.reasoning
            message["tool_calls"] = [
                {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
                for tc in answer.tool_calls
            ]
        if content:
            message["content"] = content
        body: dict[str, Any] = {"id": message_id, "message": message, "finish_reason": finish}
        if usage is not None:
            body["usage"] = usage
        await send_bytes(send, 200, dumps(body), reply.headers)
        return

    def event(kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, **fields}, kind)

    start = {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}
    head = [event("message-start", id=message_id, delta=start)]
    events: list[bytes] = []
    index = 0
    if answer.reasoning and answer.tool_calls:
        events.extend(event("tool-plan-delta", delta={"message": {"tool_plan": p}}) for p in pieces(answer.reasoning))
    elif answer.reasoning:
        thinking = {"message": {"content": {"type": "thinking", "thinking": ""}}}
        events.append(event("content-start", index=index, delta=thinking))
        events.extend(
            event("content-delta", index=index, delta={"message": {"content": {"thinking": p}}})
            for p in pieces(answer.reasoning)
        )
        events.append(event("content-end", index=index))
        index += 1
    if answer.text is not None:
        events.append(event("content-start", index=index, delta={"message": {"content": {"type": "text", "text": ""}}}))
        events.extend(
            event("content-delta", index=index, delta={"message": {"content": {"text": p}}}) for p in answer.pieces
        )
        events.append(event("content-end", index=index))
    for i, tc in enumerate(answer.tool_calls):
        opening = {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": ""}}
        events.append(event("tool-call-start", index=i, delta={"message": {"tool_calls": opening}}))
        events.extend(
            event("tool-call-delta", index=i, delta={"message": {"tool_calls": {"function": {"arguments": f}}}})
            for f in tc.fragments
        )
        events.append(event("tool-call-end", index=i))
    end: dict[str, Any] = {"finish_reason": finish}
    if usage is not None:
        end["usage"] = usage
    tail = [event("message-end", delta=end)]
    await stream_events(reply, head, events, tail, send)


_add_route(r"/v2/chat", chat)
