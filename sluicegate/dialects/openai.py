"""The OpenAI dialect: chat completions, legacy completions, embeddings, models; its error shape.

Requests are checked only as far as the gateway needs (model, stream flags, types it reads, the
documented bounds); the upstream validates the rest. Errors render as
`{"error": {"message", "type", "param", "code"}}`, in JSON or as an in-band SSE event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.dialects.base import StreamEncoder
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


# -- texts for guards -----------------------------------------------------------------------------

Path = tuple[str | int, ...]

#: keys whose string values are identifiers or enums, not text a model reads or writes
NON_TEXT_KEYS = frozenset(
    {"role", "type", "id", "tool_call_id", "model", "object", "finish_reason", "detail", "format", "url",
     "image_url", "input_audio", "data", "file_id", "filename", "file_data", "encoding_format", "user",
     "service_tier", "system_fingerprint", "tool_choice", "reasoning_effort", "stop", "modalities"}
)  # fmt: skip


def strings(value: Any, path: Path, out: list[tuple[Path, str]], skip: frozenset[str] = NON_TEXT_KEYS) -> None:
    """Every string leaf under `value` that is text (not under a key in `skip`), with its path."""
    if isinstance(value, str):
        if value:
            out.append((path, value))
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in skip:
                strings(item, (*path, key), out, skip)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            strings(item, (*path, i), out, skip)


def request_texts(endpoint: str, body: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of a request the model will read: all roles and parts, tool definitions,
    tool-call names and arguments, tool results, reasoning; prompts and embedding inputs."""
    out: list[tuple[Path, str]] = []
    if endpoint == "chat":
        strings(body.get("messages"), ("messages",), out)
        strings(body.get("tools"), ("tools",), out)
        strings(body.get("functions"), ("functions",), out)
    elif endpoint == "completions":
        strings(body.get("prompt"), ("prompt",), out)
        strings(body.get("suffix"), ("suffix",), out)
    elif endpoint == "embeddings":
        strings(body.get("input"), ("input",), out)
    return out


def response_texts(endpoint: str, data: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of a complete answer: message content, refusals, reasoning, tool calls."""
    out: list[tuple[Path, str]] = []
    if endpoint in ("chat", "completions"):
        strings(data.get("choices"), ("choices",), out)
    return [(p, t) for p, t in out if "logprobs" not in p]


def set_path(obj: Any, path: Path, value: str) -> None:
    """Replace the string at `path` inside `obj` (copies made by the caller)."""
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def format_path(path: Path) -> str:
    """('messages', 2, 'content') -> 'messages[2].content'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# -- translated calls (the provider does not speak OpenAI) ------------------------------------------


def render_chat(completion: dict[str, Any], call: Call) -> dict[str, Any]:
    """A neutral completion is an OpenAI chat completion: only the extensions come off."""
    for choice in completion.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            message.pop("reasoning_signature", None)
    return completion


class ChatStreamEncoder(StreamEncoder):
    """Neutral chunks are OpenAI chunks: each goes out as an SSE event, then `[DONE]`."""

    def encode(self, chunk: dict[str, Any]) -> bytes:
        if not chunk.get("choices") and "usage" in chunk and not self.call.include_usage:
            return b""  # the usage the gateway asked for, the client did not
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
