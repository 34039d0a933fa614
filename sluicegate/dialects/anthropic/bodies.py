"""The Anthropic dialect's small bodies: errors (JSON, or the SSE event that ends a stream),
count_tokens and the models list, and the SSE event framing the stream shares.

Part of the Anthropic dialect (`sluicegate.dialects.anthropic`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from sluicegate.errors import SluicegateError

#: status -> Anthropic error type (https://docs.anthropic.com/en/api/errors); other 4xx are
#: invalid_request_error, other 5xx api_error
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def sse_event(name: bytes, data: dict[str, Any]) -> bytes:
    """One server-sent event: `event: <name>` and its JSON `data`."""
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def _error(error: SluicegateError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(error.status), "message": error.message}}


def error_body(error: SluicegateError) -> bytes:
    """The Anthropic error JSON of a refusal or failure."""
    return orjson.dumps(_error(error))


def sse_error(error: SluicegateError) -> bytes:
    """The in-band `error` event that ends a stream."""
    return sse_event(b"error", _error(error))


def count_tokens_body(input_tokens: int) -> bytes:
    """The body of `POST /v1/messages/count_tokens`."""
    return orjson.dumps({"input_tokens": input_tokens})


def models_list(names: list[str], created: int) -> bytes:
    """The body of `GET /v1/models` for Anthropic clients (https://docs.anthropic.com/en/api/models-list)."""
    stamp = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = [{"type": "model", "id": n, "display_name": n, "created_at": stamp} for n in names]
    return orjson.dumps(
        {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    )
