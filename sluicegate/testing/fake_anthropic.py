"""The Anthropic Messages API, as the fake upstream speaks it.

Routes (registered at import, served by `FakeUpstream`):
- `POST /v1/messages` (https://docs.anthropic.com/en/api/messages): JSON message, or with
  `"stream": true` the documented SSE sequence (https://docs.anthropic.com/en/api/messages-streaming);
- `POST /v1/messages/count_tokens` (https://docs.anthropic.com/en/api/messages-count-tokens):
  `{"input_tokens": N}`.

Requests need `x-api-key` (or `Authorization: Bearer`), equal to `FakeUpstream.required_key`
when set, and `anthropic-version`; bodies are validated as Anthropic does, and refused with its
messages. Errors have Anthropic's
shape (https://docs.anthropic.com/en/api/errors). Answers follow `wire.plan_answer`; usage
reports `input_tokens` = planned prompt tokens less `Reply.cached_tokens`, which are reported as
`cache_read_input_tokens` (so input + cache read = the planned prompt, as for every format).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.testing.wire import (
    Answer,
    Receive,
    Request,
    Send,
    add_route,
    begin,
    pieces,
    plan_answer,
    rand,
    send_bytes,
    sse,
    stream_events,
    text_of,
    words,
)

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream

#: status -> (error type, default message) (https://docs.anthropic.com/en/api/errors)
ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization. Please try again later.",
    ),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}

#: neutral planned finish -> Anthropic `stop_reason`
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

MIN_THINKING_BUDGET = 1024


def error_body(status: int, message: str | None = None, request_id: str | None = None) -> bytes:
    """An Anthropic error body: `{"type": "error", "error": {"type", "message"}, "request_id"}`."""
    kind, default = ERRORS.get(status) or (
        ("api_error", "Internal server error") if status >= 500 else ("invalid_request_error", "Invalid request")
    )
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": kind, "message": default if message is None else message},
            "request_id": request_id or "req_" + rand(24),
        }
    )


async def send_error(send: Send, status: int, message: str | None, extra: dict[str, str]) -> None:
    """Anthropic's error response; `request-id` header as every Anthropic answer has."""
    request_id = "req_" + rand(24)
    await send_bytes(send, status, error_body(status, message, request_id), {"request-id": request_id, **extra})


class _Invalid(Exception):
    """A request Anthropic refuses with 400 invalid_request_error (or `status`)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# ----------------------------------------------------------------------------------------- routes


async def _messages(fake: FakeUpstream, request: Request, receive: Receive, send: Send) -> None:
    data = await _accept(fake, request, send)
    if data is None:
        return
    try:
        max_tokens = _check_messages_request(data, request.headers.get("anthropic-beta", ""))
    except _Invalid as exc:
        await send_error(send, exc.status, exc.message, {})
        return
    stream = data.get("stream") is True
    reply = fake._next_reply()
    if not await begin(reply, stream, receive, send, send_error):
        return
    messages = data["messages"]
    answer = plan_answer(
        reply,
        data["model"],
        _last_user_text(messages),
        *_prompt_size(data),
        max_tokens=max_tokens,
        id_prefix="toolu_",
    )
    stop_sequence = _apply_stop_sequences(answer, data.get("stop_sequences"))
    if stream:
        await _stream(answer, stop_sequence, send)
    else:
        await send_bytes(send, 200, orjson.dumps(_message(answer, stop_sequence)), _headers(answer))


async def _count_tokens(fake: FakeUpstream, request: Request, receive: Receive, send: Send) -> None:
    # https://docs.anthropic.com/en/api/messages-count-tokens
    data = await _accept(fake, request, send)
    if data is None:
        return
    try:
        _check_common(data, request.headers.get("anthropic-beta", ""))
    except _Invalid as exc:
        await send_error(send, exc.status, exc.message, {})
        return
    reply = fake._next_reply()
    if not await begin(reply, False, receive, send, send_error):
        return
    words_, messages = _prompt_size(data)
    tokens = reply.prompt_tokens if reply.prompt_tokens is not None else words_ + 3 * messages
    await send_bytes(send, 200, orjson.dumps({"input_tokens": tokens}), dict(reply.headers))


async def _accept(fake: FakeUpstream, request: Request, send: Send) -> dict[str, Any] | None:
    """Method, credentials, version header and JSON body checked; the body, or None once refused."""
    if request.method != "POST":
        await send_error(send, 405, f"Method Not Allowed: {request.method} {request.path}", {"allow": "POST"})
        return None
    key = request.headers.get("x-api-key")
    if key is None:
        # The API also takes a bearer credential (OAuth tokens; the Python SDK sends its key so).
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    if key is None and not fake.require_auth:
        pass  # a fake told to answer without credentials
    elif not key:
        await send_error(send, 401, "x-api-key header is required", {})
        return None
    elif fake.required_key is not None and key != fake.required_key:
        # Anthropic does not quote the key it refused.
        await send_error(send, 401, "invalid x-api-key", {})
        return None
    if not request.headers.get("anthropic-version"):
        await send_error(send, 400, "anthropic-version: header is required", {})
        return None
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        await send_error(send, 400, "There was an issue with the format of your request: invalid JSON body", {})
        return None
    if not isinstance(data, dict):
        await send_error(send, 400, "Input should be a valid dictionary", {})
        return None
    return data


# ----------------------------------------------------------------------------------------- validation


def _check_common(data: dict[str, Any], betas: str = "") -> None:
    """What Messages and count_tokens both check: model, system, messages and their tool pairing."""
    model = data.get("model")
    if model is None:
        raise _Invalid("model: Field required")
    if not isinstance(model, str):
        raise _Invalid("model: Input should be a valid string")
    if data.get("system") is not None:
        _check_system(data["system"], "system")
    messages = data.get("messages")
    if messages is None:
        raise _Invalid("messages: Field required")
    if not isinstance(messages, list):
        raise _Invalid("messages: Input should be a valid list")
    if not messages:
        raise _Invalid("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Invalid(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role == "system" and "mid-conversation-system" in betas:
            # The beta Claude Code sends: system text between turns, as a string or text blocks.
            _check_system(message.get("content"), f"messages.{i}.content")
            continue
        if role == "system":
            raise _Invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                'not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise _Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if content is None:
            raise _Invalid(f"messages.{i}.content: Field required")
        if not isinstance(content, (str, list)):
            raise _Invalid(f"messages.{i}.content: Input should be a valid string or list")
        last = i == len(messages) - 1 and role == "assistant"
        if (content == "" or content == []) and not last:
            raise _Invalid(
                f"messages.{i}: all messages must have non-empty content except for the optional final assistant "
                "message"
            )
        if isinstance(content, list):
            for j, block in enumerate(content):
                _check_block(block, f"messages.{i}.content.{j}", role)
    if messages[0].get("role") != "user":
        raise _Invalid('messages: first message must use the "user" role')
    _check_tool_pairing(messages)


def _check_system(system: Any, at: str) -> None:
    if not isinstance(system, (str, list)):
        raise _Invalid(f"{at}: Input should be a valid string or a list of text blocks")
    if isinstance(system, list):
        for j, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise _Invalid(f"{at}.{j}: Input should be a text block")


#: content block types a request may hold, by role
_USER_BLOCKS = frozenset({"text", "image", "document", "tool_result", "search_result"})
_ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})


def _check_block(block: Any, at: str, role: str) -> None:
    if not isinstance(block, dict):
        raise _Invalid(f"{at}: Input should be a valid dictionary")
    kind = block.get("type")
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    if kind not in allowed:
        raise _Invalid(f"{at}.type: Input tag '{kind}' is not an expected tag for a {role} message")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise _Invalid(f"{at}.text: Field required")
        if not block["text"]:
            raise _Invalid("messages: text content blocks must be non-empty")
    elif kind in ("image", "document"):
        source = block.get("source")
        if not isinstance(source, dict) or source.get("type") not in ("base64", "url", "text", "file"):
            raise _Invalid(f"{at}.source: Input should be a valid source")
        if source["type"] == "base64" and not (
            isinstance(source.get("media_type"), str) and isinstance(source.get("data"), str)
        ):
            raise _Invalid(f"{at}.source.base64: media_type and data are required")
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise _Invalid(f"{at}: tool_use blocks need an id and a name")
        if not isinstance(block.get("input"), dict):
            raise _Invalid(f"{at}.tool_use.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise _Invalid(f"{at}.tool_result.tool_use_id: Field required")
    elif kind == "thinking":
        if not isinstance(block.get("signature"), str):
            raise _Invalid(f"{at}.thinking.signature: Field required")


def _check_tool_pairing(messages: list[dict[str, Any]]) -> None:
    """Every tool_use answered by a tool_result in the next message, and no stray tool_result."""
    previous_ids: list[str] = []
    for i, message in enumerate(messages):
        content = message["content"]
        blocks = content if isinstance(content, list) else []
        if message["role"] == "user":
            results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
            for j, block in enumerate(blocks):
                if block.get("type") == "tool_result" and block.get("tool_use_id") not in previous_ids:
                    raise _Invalid(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding `tool_use` "
                        "block in the previous message."
                    )
            missing = [t for t in previous_ids if t not in results]
            if missing:
                raise _Invalid(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in "
                    "the next message."
                )
            previous_ids = []
        else:
            if previous_ids:
                raise _Invalid(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(previous_ids)}. Each `tool_use` block must have a corresponding `tool_result` block "
                    "in the next message."
                )
            previous_ids = [b["id"] for b in blocks if b.get("type") == "tool_use"]


def _check_messages_request(data: dict[str, Any], betas: str = "") -> int:
    """The Messages create checks (https://docs.anthropic.com/en/api/messages); the max_tokens."""
    _check_common(data, betas)
    max_tokens = data.get("max_tokens")
    if max_tokens is None:
        raise _Invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise _Invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise _Invalid("max_tokens: Input should be greater than or equal to 1")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _Invalid("stream: Input should be a valid boolean")
    stops = data.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise _Invalid("stop_sequences: Input should be a valid list of strings")
    thinking = data.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise _Invalid("thinking.enabled.budget_tokens: Field required")
        if budget < MIN_THINKING_BUDGET:
            raise _Invalid(
                f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_THINKING_BUDGET}"
            )
        if max_tokens <= budget:
            raise _Invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _Invalid("tools: Input should be a valid list")
        for k, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise _Invalid(f"tools.{k}.custom.name: Field required")
            if "type" not in tool and not isinstance(tool.get("input_schema"), dict):
                raise _Invalid(f"tools.{k}.custom.input_schema: Field required")
    choice = data.get("tool_choice")
    if choice is not None and (
        not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none")
    ):
        raise _Invalid("tool_choice: Input tag is not one of 'auto', 'any', 'tool', 'none'")
    return max_tokens


# ----------------------------------------------------------------------------------------- answers


def _block_text(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text") or "")
    if kind == "tool_result":
        content = block.get("content")
        return content if isinstance(content, str) else text_of(content)
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_block_text(b) for b in content if isinstance(b, dict))
    return ""


def _prompt_size(data: dict[str, Any]) -> tuple[int, int]:
    """(words, messages) of a request, the system prompt counted as one message (as OpenAI's is)."""
    messages = data.get("messages") or []
    count = sum(words(_content_text(m.get("content"))) for m in messages)
    n = len(messages)
    system = data.get("system")
    if system:
        count += words(_content_text(system))
        n += 1
    return count, n


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else text_of(content)
    return ""


def _apply_stop_sequences(answer: Answer, stops: list[str] | None) -> str | None:
    """Cut the text at the first stop sequence it holds (`stop_reason` "stop_sequence"); that sequence."""
    if not stops or answer.text is None or answer.tool_calls:
        return None
    hits = [(answer.text.find(s), s) for s in stops if s and s in answer.text]
    if not hits:
        return None
    at, stop = min(hits)
    answer.text = answer.text[:at]
    answer.pieces = pieces(answer.text)
    if answer.reply.completion_tokens is None:
        answer.completion_tokens = len(answer.pieces)
    answer.finish = "stop"
    return stop


def _usage(answer: Answer, output_tokens: int) -> dict[str, Any]:
    cached = answer.reply.cached_tokens or 0
    return {
        "input_tokens": max(answer.prompt_tokens - cached, 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _stop_reason(answer: Answer, stop_sequence: str | None) -> str:
    return "stop_sequence" if stop_sequence is not None else STOP_REASONS[answer.finish]


def _signature() -> str:
    return "Eq" + rand(86)


def _input(arguments: str) -> Any:
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _headers(answer: Answer) -> dict[str, str]:
    return {"request-id": "req_" + rand(24), **answer.reply.headers}


def _message(answer: Answer, stop_sequence: str | None) -> dict[str, Any]:
    """The Message object (https://docs.anthropic.com/en/api/messages, response)."""
    content: list[dict[str, Any]] = []
    if answer.reasoning:
        content.append({"type": "thinking", "thinking": answer.reasoning, "signature": _signature()})
    if answer.text or (answer.text is not None and not answer.tool_calls):
        content.append({"type": "text", "text": answer.text})
    for tc in answer.tool_calls:
        content.append({"type": "tool_use", "id": tc.id, "name": tc.name, "input": _input(tc.arguments)})
    return {
        "id": "msg_" + rand(24),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": _stop_reason(answer, stop_sequence),
        "stop_sequence": stop_sequence,
        "usage": _usage(answer, answer.completion_tokens),
    }


async def _stream(answer: Answer, stop_sequence: str | None, send: Send) -> None:
    """The documented event sequence (https://docs.anthropic.com/en/api/messages-streaming): message_start,
    per block content_block_start / content_block_delta ... / content_block_stop (a ping after the
    first start), message_delta with the stop reason and usage, message_stop."""
    start: dict[str, Any] = {
        "id": "msg_" + rand(24),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(answer, 1),
    }
    head = [sse({"type": "message_start", "message": start}, "message_start")]
    body: list[bytes] = []
    index = 0

    def block(first: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        nonlocal index
        body.append(sse({"type": "content_block_start", "index": index, "content_block": first}, "content_block_start"))
        if index == 0:
            body.append(sse({"type": "ping"}, "ping"))
        body.extend(
            sse({"type": "content_block_delta", "index": index, "delta": d}, "content_block_delta") for d in deltas
        )
        body.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        index += 1

    if answer.reasoning:
        block(
            {"type": "thinking", "thinking": "", "signature": ""},
            [{"type": "thinking_delta", "thinking": p} for p in pieces(answer.reasoning)]
            + [{"type": "signature_delta", "signature": _signature()}],
        )
    if answer.text or (answer.text is not None and not answer.tool_calls):
        block({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in answer.pieces])
    for tc in answer.tool_calls:
        block(
            {"type": "tool_use", "id": tc.id, "name": tc.name, "input": {}},
            [{"type": "input_json_delta", "partial_json": f} for f in ["", *tc.fragments]],
        )
    usage = _usage(answer, answer.completion_tokens)
    del usage["cache_creation"], usage["service_tier"]
    tail = [
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(answer, stop_sequence), "stop_sequence": stop_sequence},
                "usage": usage,
            },
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    # The scripted reply may be reused: its headers are not changed.
    await stream_events(dataclasses.replace(answer.reply, headers=_headers(answer)), head, body, tail, send)


add_route(r"/v1/messages", _messages)
add_route(r"/v1/messages/count_tokens", _count_tokens)
