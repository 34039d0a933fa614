"""What the fake's OpenAI endpoints share: OpenAI's error bodies (`error_body`, `send_error`,
`BadRequest`), API key masking, and the request-field checks every endpoint applies."""

from __future__ import annotations

from typing import Any

import orjson

from sluicegate.testing.wire import Send, send_bytes

SYSTEM_FINGERPRINT = "fp_f4ke0c0ffee"

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


async def send_error(
    send: Send,
    status: int,
    message: str | None = None,
    extra: dict[str, str] | None = None,
    *,
    param: str | None = None,
    code: Any = _UNSET,
) -> None:
    """Answer with an OpenAI error (also the `wire.ErrorSender` that `wire.begin` calls)."""
    await send_bytes(send, status, error_body(status, message, param=param, code=code), extra)


def mask_key(key: str) -> str:
    """Mask an API key like OpenAI does in its messages: first 3 and last 2 characters kept (``sk-ab***yz``)."""
    keep = 5 if key.startswith("sk-") else 3  # the "sk-" prefix does not count: "sk-abcdefyz" -> "sk-ab***yz"
    if len(key) < keep + 2 + 3:  # too short to show anything without giving most of it away
        return "***"
    return f"{key[:keep]}***{key[-2:]}"


class BadRequest(Exception):
    """A request field OpenAI would refuse: answered as a 400 naming ``param``."""

    def __init__(self, message: str, param: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def opt_int(data: dict[str, Any], name: str, minimum: int = 1) -> int | None:
    """The optional integer field ``name``, at least ``minimum``."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if value < minimum:
        raise BadRequest(f"Invalid '{name}': integer below minimum value {minimum}.", name, "integer_below_min_value")
    return value


def require_model(data: dict[str, Any]) -> str:
    """The required string field ``model``."""
    model = data.get("model")
    if model is None:
        raise BadRequest("You must provide a model parameter.", "model", None)
    if not isinstance(model, str):
        raise BadRequest("Invalid type for 'model': expected a string.", "model", "invalid_type")
    return model


def include_usage(data: dict[str, Any]) -> bool:
    """Whether a stream should end with a usage chunk (``stream_options.include_usage``)."""
    options = data.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def token_count(raw: list[Any]) -> int:
    """Tokens of a token-array input: the length of each array, or 1 per bare token."""
    return sum(len(x) if isinstance(x, list) else 1 for x in raw)
