"""The Anthropic Messages API, as the fake upstream speaks it: its routes and error responses.

Routes (registered at import, served by `FakeUpstream`):
- `POST /v1/messages` (https://docs.anthropic.com/en/api/messages): JSON message, or with
  `"stream": true` the documented SSE sequence (https://docs.anthropic.com/en/api/messages-streaming);
- `POST /v1/messages/count_tokens` (https://docs.anthropic.com/en/api/messages-count-tokens):
  `{"input_tokens": N}`.

Requests need `x-api-key` (or `Authorization: Bearer`), equal to `FakeUpstream.required_key`
when set, and `anthropic-version`; bodies are validated as Anthropic does, and refused with its
messages (`validate.py`). Errors have Anthropic's shape (https://docs.anthropic.com/en/api/errors).
Answers follow `wire.plan_answer`, rendered by `render.py`; usage reports `input_tokens` =
planned prompt tokens less `Reply.cached_tokens`, which are reported as `cache_read_input_tokens`
(so input + cache read = the planned prompt, as for every format).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.testing.fake_anthropic import render
from sluicegate.testing.fake_anthropic.validate import Invalid, check_common, check_messages_request
from sluicegate.testing.wire import Receive, Request, Send, add_route, begin, dumps, plan_answer, rand, send_bytes

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


# ----------------------------------------------------------------------------------------- routes


async def _messages(fake: FakeUpstream, request: Request, receive: Receive, send: Send) -> None:
    data = await _accept(fake, request, send)
    if data is None:
        return
    try:
        max_tokens = check_messages_request(data, request.headers.get("anthropic-beta", ""))
    except Invalid as exc:
        await send_error(send, exc.status, exc.message, {})
        return
    reply = fake._next_reply()
    stream = data.get("stream") is True and reply.fault != "json_stream"
    if not await begin(reply, stream, receive, send, send_error):
        return
    messages = data["messages"]
    answer = plan_answer(
        reply,
        data["model"],
        render.last_user_text(messages),
        *render.prompt_size(data),
        max_tokens=max_tokens,
        id_prefix="toolu_",
    )
    stop_sequence = render.apply_stop_sequences(answer, data.get("stop_sequences"))
    if stream:
        await render.stream(answer, stop_sequence, send)
    else:
        await send_bytes(send, 200, dumps(render.message(answer, stop_sequence)), render.headers(answer))


async def _count_tokens(fake: FakeUpstream, request: Request, receive: Receive, send: Send) -> None:
    # https://docs.anthropic.com/en/api/messages-count-tokens
    data = await _accept(fake, request, send)
    if data is None:
        return
    try:
        check_common(data, request.headers.get("anthropic-beta", ""))
    except Invalid as exc:
        await send_error(send, exc.status, exc.message, {})
        return
    reply = fake._next_reply()
    if not await begin(reply, False, receive, send, send_error):
        return
    words_, messages = render.prompt_size(data)
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


add_route(r"/v1/messages", _messages)
add_route(r"/v1/messages/count_tokens", _count_tokens)
