"""The OpenAI dialect: chat completions, legacy completions, embeddings, models; its error shape.

Requests are checked only as far as the gateway needs (model, stream flags, types it reads, the
documented bounds); the upstream validates the rest. Errors render as
`{"error": {"message", "type", "param", "code"}}`, in JSON or as an in-band SSE event. The texts
guards read are `openai_texts`' (re-exported here with the path helpers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.dialects.base import StreamEncoder
from sluicegate.dialects.openai_texts import chunk_texts as chunk_texts
from sluicegate.dialects.openai_texts import holds_token_ids as holds_token_ids
from sluicegate.dialects.openai_texts import request_texts as request_texts
from sluicegate.dialects.openai_texts import response_texts as response_texts
from sluicegate.dialects.paths import Path as Path
from sluicegate.dialects.paths import format_path as format_path
from sluicegate.dialects.paths import set_path as set_path
from sluicegate.errors import BadRequest, InvalidJSON, SluicegateError

if TYPE_CHECKING:
    from sluicegate.call import Call

MAX_MESSAGES = 10_000
MAX_N = 128


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or `InvalidJSON` saying why not."""
    if not raw:
        raise InvalidJSON("The request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJSON(f"The request body must be a JSON object, not {_kind(body)}")
    return body


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def _invalid(param: str, message: str) -> BadRequest:
    return BadRequest(message, param=param, code="invalid_value")


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise BadRequest("Missing required parameter: 'model'", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("model", f"Invalid type for 'model': expected a non-empty string, but got {_kind(model)}")
    if len(model) > 256:
        raise _invalid("model", "Invalid 'model': longer than 256 characters")
    return model


def _stream(call: Call, body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is None or stream is False:
        return
    if stream is not True:
        raise _invalid("stream", f"Invalid type for 'stream': expected a boolean, but got {_kind(stream)}")
    call.stream = True
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise _invalid("stream_options", f"Invalid type for 'stream_options': expected an object, got {_kind(options)}")
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise _invalid(
            "stream_options.include_usage", "Invalid type for 'stream_options.include_usage': expected a boolean"
        )
    call.include_usage = include is True


def _positive_int(body: dict[str, Any], name: str, maximum: int | None = None) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(name, f"Invalid type for '{name}': expected an integer, but got {_kind(value)}")
    if value < 1 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise _invalid(name, f"Invalid '{name}': must be at least 1{bound}, got {value}")


def parse_chat(call: Call, body: dict[str, Any]) -> None:
    """Check a chat completions body and fill the call from it."""
    call.model_requested = _model(body)
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("Missing required parameter: 'messages'", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list):
        raise _invalid("messages", f"Invalid type for 'messages': expected an array, but got {_kind(messages)}")
    if not messages:
        raise _invalid("messages", "Invalid 'messages': empty array; expected at least one message")
    if len(messages) > MAX_MESSAGES:
        raise _invalid("messages", f"Invalid 'messages': more than {MAX_MESSAGES} messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages[{i}]", f"Invalid type for 'messages[{i}]': expected an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise _invalid(f"messages[{i}].role", f"Invalid type for 'messages[{i}].role': expected a string")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _invalid("tools", f"Invalid type for 'tools': expected an array, but got {_kind(tools)}")
    _positive_int(body, "n", MAX_N)
    _positive_int(body, "max_tokens")
    _positive_int(body, "max_completion_tokens")
    _stream(call, body)


def parse_completions(call: Call, body: dict[str, Any]) -> None:
    """Check a legacy completions body and fill the call from it."""
    call.model_requested = _model(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest("Missing required parameter: 'prompt'", param="prompt", code="missing_required_parameter")
    if not isinstance(prompt, str | list):
        raise _invalid("prompt", f"Invalid type for 'prompt': expected a string or an array, but got {_kind(prompt)}")
    _positive_int(body, "n", MAX_N)
    _positive_int(body, "best_of", MAX_N)
    _positive_int(body, "max_tokens")
    _stream(call, body)


def parse_embeddings(call: Call, body: dict[str, Any]) -> None:
    """Check an embeddings body and fill the call from it."""
    call.model_requested = _model(body)
    value = body.get("input")
    if value is None:
        raise BadRequest("Missing required parameter: 'input'", param="input", code="missing_required_parameter")
    if not isinstance(value, str | list) or (isinstance(value, list) and not value):
        raise _invalid("input", "Invalid 'input': expected a string or a non-empty array")
    if body.get("stream") is not None:
        raise _invalid("stream", "Embeddings cannot be streamed")


def error_body(error: SluicegateError) -> bytes:
    """The OpenAI error JSON of a refusal or failure."""
    return orjson.dumps(
        {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
    )


def sse_error(error: SluicegateError) -> bytes:
    """An in-band error event that ends a stream (no `[DONE]` follows it)."""
    return b"data: " + error_body(error) + b"\n\n"


def models_list(names: list[str], created: int) -> bytes:
    """The body of `GET /v1/models`."""
    return orjson.dumps(
        {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": "sluicegate"} for n in names],
        }
    )


# -- translated calls (the provider does not speak OpenAI) ------------------------------------------


def render_chat(completion: dict[str, Any], call: Call) -> dict[str, Any]:
    """A neutral completion is an OpenAI chat completion: only the extensions come off."""
    for choice in completion.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            message.pop("reasoning_signature", None)
    return completion


def without_usage(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """A stream chunk without its `usage` (for a client that did not ask for usage), or None when
    nothing else in it says anything: whatever the shape the upstream gave its usage chunk
    (`"choices": []`, `[{"delta": {}}]`, `[{"index": 0, "delta": {}, "finish_reason": null}]`)."""
    out = {k: v for k, v in chunk.items() if k != "usage"}
    choices = out.get("choices")
    if isinstance(choices, list) and any(_says_something(c) for c in choices):
        return out
    return None


def _says_something(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    if choice.get("finish_reason") is not None or choice.get("text") or choice.get("logprobs"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and any(v not in (None, "", [], {}) for v in delta.values())


class ChatStreamEncoder(StreamEncoder):
    """Neutral chunks are OpenAI chunks: each goes out as an SSE event, then `[DONE]`. Usage goes
    out only to a client that asked for it (`stream_options.include_usage`)."""

    def encode(self, chunk: dict[str, Any]) -> bytes:
        if chunk.get("usage") is not None and not self.call.include_usage:
            # the usage the gateway asked for, the client did not
            stripped = without_usage(chunk)
            if stripped is None:
                return b""
            chunk = stripped
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and "reasoning_signature" in delta:
                del delta["reasoning_signature"]
                if not delta and choice.get("finish_reason") is None:
                    return b""
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def finish(self) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, error: SluicegateError) -> bytes:
        return sse_error(error)
