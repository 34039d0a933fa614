"""The Anthropic Messages dialect: what the `anthropic` SDKs and Claude Code speak to the gateway.

Requests (`POST /v1/messages`, `POST /v1/messages/count_tokens`) are checked the way Anthropic
checks them, as far as the gateway needs (https://docs.anthropic.com/en/api/messages); errors
render as Anthropic's `{"type": "error", "error": {"type", "message"}}`
(https://docs.anthropic.com/en/api/errors). For a provider that does not speak Anthropic, the
body becomes a neutral chat body (`to_chat`), and neutral answers come back as an Anthropic
message (`render_response`) or its SSE events (`MessagesStreamEncoder`,
https://docs.anthropic.com/en/api/messages-streaming).

What a translated call does not carry, or carries with a loss (everything else raises
`neutral.unsupported`, a 400 naming the feature):
  * `redacted_thinking` blocks of earlier assistant turns are dropped: they are encrypted for
    Anthropic's models and meaningless to any other provider.
  * Several signed thinking blocks in one assistant turn are joined into one reasoning text; a
    signature is kept only when the turn has exactly one.
  * `tool_result` with `is_error: true` becomes a tool message whose text starts with
    `"[tool error] "` (the neutral tool message has no error flag).
  * A text document's `title` and `context` become text parts before its data.
  * Tool-call arguments that are not a JSON object are answered as `input: {}` (non-streamed);
    a stream forwards the upstream's argument text as it comes.
  * A neutral `stop` cannot say whether a stop sequence matched: it is always `end_turn` with
    `stop_sequence: null`.
  * `service_tier` (a capacity preference) is accepted and not forwarded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate import neutral
from sluicegate.dialects import openai as _openai
from sluicegate.dialects.base import StreamEncoder
from sluicegate.errors import BadRequest, SluicegateError

if TYPE_CHECKING:
    from sluicegate.call import Call

TARGET = "the selected model's provider"
MAX_MESSAGES = 100_000  # "There is a limit of 100,000 messages in a single request."

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

#: `system` mid-conversation: Anthropic's `mid-conversation-system` beta, which Claude Code uses
ROLES = ("user", "assistant", "system")
TOOL_CHOICES = ("auto", "any", "tool", "none")
THINKING_TYPES = ("enabled", "disabled", "adaptive")
EFFORTS = ("low", "medium", "high")

#: neutral finish reason -> Anthropic stop reason
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}

#: request fields a translated call carries (or accepts knowingly, see the module doc)
CARRIED_FIELDS = frozenset(
    {"model", "messages", "max_tokens", "system", "stream", "tools", "tool_choice", "temperature", "top_p",
     "top_k", "stop_sequences", "thinking", "metadata", "output_config", "cache_control", "service_tier",
     "context_management"}
)  # fmt: skip

#: fields of a custom tool a translated call carries (`eager_input_streaming` is a streaming hint;
#: `defer_loading: false` is the default)
TOOL_FIELDS = frozenset(
    {"name", "description", "input_schema", "type", "cache_control", "strict", "eager_input_streaming"}
)

parse_body = _openai.parse_body


# -- validation -----------------------------------------------------------------------------------


def _bad(path: str, message: str) -> BadRequest:
    return BadRequest(f"{path}: {message}", param=path)


def _missing(path: str) -> BadRequest:
    return BadRequest(f"{path}: Field required", param=path)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str):
        raise _bad("model", "Input should be a valid string")
    if not model.strip():
        raise _bad("model", "String should have at least 1 character")
    if len(model) > 256:
        raise _bad("model", "String should have at most 256 characters")
    return model


def _blocks(path: str, blocks: Any) -> None:
    if not isinstance(blocks, list):
        raise _bad(path, "Input should be a valid string or a valid list")
    for j, block in enumerate(blocks):
        where = f"{path}.{j}"
        if not isinstance(block, dict):
            raise _bad(where, "Input should be a valid dictionary")
        kind = block.get("type")
        if kind is None:
            raise _missing(f"{where}.type")
        if not isinstance(kind, str):
            raise _bad(f"{where}.type", "Input should be a valid string")
        if kind == "text" and not isinstance(block.get("text"), str):
            raise _bad(f"{where}.text", "Input should be a valid string")
        elif kind in ("image", "document") and not isinstance(block.get("source"), dict):
            raise _bad(f"{where}.source", "Input should be a valid dictionary")
        elif kind == "tool_use":
            for key in ("id", "name"):
                if not isinstance(block.get(key), str):
                    raise _bad(f"{where}.{key}", "Input should be a valid string")
            if not isinstance(block.get("input"), dict):
                raise _bad(f"{where}.input", "Input should be a valid dictionary")
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise _bad(f"{where}.tool_use_id", "Input should be a valid string")
            content = block.get("content")
            if content is not None and not isinstance(content, str):
                _blocks(f"{where}.content", content)
        elif kind == "thinking":
            for key in ("thinking", "signature"):
                if not isinstance(block.get(key), str):
                    raise _bad(f"{where}.{key}", "Input should be a valid string")


def _messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _bad("messages", "Input should be a valid list")
    if not messages:
        raise _bad("messages", "at least one message is required")
    if len(messages) > MAX_MESSAGES:
        raise _bad("messages", f"a request can hold at most {MAX_MESSAGES} messages")
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise _bad(where, "Input should be a valid dictionary")
        role = message.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if role not in ROLES:
            raise _bad(f"{where}.role", "Input should be 'user', 'assistant' or 'system'")
        content = message.get("content")
        if content is None:
            raise _missing(f"{where}.content")
        if role == "system":
            _system_blocks(f"{where}.content", content)
        elif not isinstance(content, str):
            _blocks(f"{where}.content", content)


def _system(body: dict[str, Any]) -> None:
    system = body.get("system")
    if system is not None:
        _system_blocks("system", system)


def _system_blocks(where: str, system: Any) -> None:
    """A system prompt: a string, or a list of text blocks."""
    if isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _bad(where, "Input should be a valid string or a valid list")
    for j, block in enumerate(system):
        if not isinstance(block, dict):
            raise _bad(f"{where}.{j}", "Input should be a valid dictionary")
        if block.get("type") != "text":
            raise _bad(f"{where}.{j}.type", "Input should be 'text'")
        if not isinstance(block.get("text"), str):
            raise _bad(f"{where}.{j}.text", "Input should be a valid string")


def _tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "Input should be a valid list")
        for j, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _bad(f"tools.{j}", "Input should be a valid dictionary")
            kind = tool.get("type")
            if kind is not None and not isinstance(kind, str):
                raise _bad(f"tools.{j}.type", "Input should be a valid string")
            if kind not in (None, "custom"):
                continue  # Anthropic's own tools: the upstream checks them, a translation refuses them
            if not isinstance(tool.get("name"), str):
                raise _bad(f"tools.{j}.name", "Input should be a valid string")
            if not isinstance(tool.get("input_schema"), dict):
                raise _bad(f"tools.{j}.input_schema", "Input should be a valid dictionary")
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict):
            raise _bad("tool_choice", "Input should be a valid dictionary")
        if choice.get("type") not in TOOL_CHOICES:
            raise _bad("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            raise _bad("tool_choice.name", "Field required")
        parallel = choice.get("disable_parallel_tool_use")
        if parallel is not None and not isinstance(parallel, bool):
            raise _bad("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")


def _thinking(body: dict[str, Any]) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, dict):
        raise _bad("thinking", "Input should be a valid dictionary")
    kind = thinking.get("type")
    if kind not in THINKING_TYPES:
        raise _bad("thinking.type", "Input should be 'enabled', 'disabled' or 'adaptive'")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if budget is None:
            raise _missing("thinking.enabled.budget_tokens")
        if not _is_int(budget):
            raise _bad("thinking.enabled.budget_tokens", "Input should be a valid integer")
        if budget < 1024:
            raise _bad("thinking.enabled.budget_tokens", "Input should be greater than or equal to 1024")


def parse_messages(call: Call, body: dict[str, Any]) -> None:
    """Check a Messages body and fill the call from it."""
    call.model_requested = _model(body)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _missing("max_tokens")
    if not _is_int(max_tokens):
        raise _bad("max_tokens", "Input should be a valid integer")
    if max_tokens < 1:
        raise _bad("max_tokens", "Input should be greater than or equal to 1")
    _messages(body)
    _system(body)
    _tools(body)
    _thinking(body)
    for name, high in (("temperature", 1.0), ("top_p", 1.0)):
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value):
            raise _bad(name, "Input should be a valid number")
        if not 0.0 <= value <= high:
            raise _bad(name, f"Input should be between 0 and {high:g}")
    top_k = body.get("top_k")
    if top_k is not None:
        if not _is_int(top_k):
            raise _bad("top_k", "Input should be a valid integer")
        if top_k < 0:
            raise _bad("top_k", "Input should be greater than or equal to 0")
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list):
            raise _bad("stop_sequences", "Input should be a valid list")
        for j, stop in enumerate(stops):
            if not isinstance(stop, str):
                raise _bad(f"stop_sequences.{j}", "Input should be a valid string")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("metadata", "Input should be a valid dictionary")
        user_id = metadata.get("user_id")
        if user_id is not None and not isinstance(user_id, str):
            raise _bad("metadata.user_id", "Input should be a valid string")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "Input should be a valid boolean")
    call.stream = stream is True


def parse_count_tokens(call: Call, body: dict[str, Any]) -> None:
    """Check a `POST /v1/messages/count_tokens` body (no `max_tokens`, never streamed)."""
    call.model_requested = _model(body)
    _messages(body)
    _system(body)
    _tools(body)
    _thinking(body)
    call.stream = False


# -- request translation --------------------------------------------------------------------------


def _part(text: str, block: dict[str, Any]) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": text}
    if block.get("cache_control") is not None:
        part["cache_control"] = block["cache_control"]
    return part


def _collapse(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One plain text part is a string; anything else stays parts."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        text: str = parts[0]["text"]
        return text
    return parts


def _system_message(system: Any) -> dict[str, Any] | None:
    if isinstance(system, str):
        return {"role": "system", "content": system} if system else None
    if not system:
        return None
    parts = [_part(block["text"], block) for block in system]
    return {"role": "system", "content": _collapse(parts)}


def _image(block: dict[str, Any]) -> dict[str, Any]:
    source = block["source"]
    kind = source.get("type")
    if kind == "base64":
        url = f"data:{source.get('media_type') or 'application/octet-stream'};base64,{source.get('data', '')}"
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise neutral.unsupported(f"an image with a '{kind}' source", TARGET)
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
    if block.get("cache_control") is not None:
        part["cache_control"] = block["cache_control"]
    return part


def _document(block: dict[str, Any]) -> list[dict[str, Any]]:
    source = block["source"]
    kind = source.get("type")
    citations = block.get("citations")
    if isinstance(citations, dict) and citations.get("enabled"):
        raise neutral.unsupported("document citations", TARGET)
    cache = {"cache_control": block["cache_control"]} if block.get("cache_control") is not None else {}
    if kind == "base64" and source.get("media_type") == "application/pdf":
        file: dict[str, Any] = {"file_data": f"data:application/pdf;base64,{source.get('data', '')}"}
        file["filename"] = block["title"] if isinstance(block.get("title"), str) else "document.pdf"
        if isinstance(block.get("context"), str) and block["context"]:
            return [{"type": "text", "text": block["context"]}, {"type": "file", "file": file, **cache}]
        return [{"type": "file", "file": file, **cache}]
    if kind == "text" and isinstance(source.get("data"), str):
        parts = [
            {"type": "text", "text": block[key]} for key in ("title", "context") if isinstance(block.get(key), str)
        ]
        parts.append({"type": "text", "text": source["data"], **cache})
        return parts
    what = f"a document with a '{kind}' source"
    if kind == "base64":
        what = f"a '{source.get('media_type')}' document"
    raise neutral.unsupported(what, TARGET)


def _tool_result(block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content")
    if content is None or isinstance(content, str):
        text = content or ""
        cache = block.get("cache_control")
    else:
        texts: list[str] = []
        cache = block.get("cache_control")
        for inner in content:
            kind = inner.get("type")
            if kind == "text":
                texts.append(inner["text"])
                cache = inner.get("cache_control") or cache
            elif kind == "image":
                raise neutral.unsupported("an image inside a tool_result", TARGET)
            else:
                raise neutral.unsupported(f"a '{kind}' block inside a tool_result", TARGET)
        text = "\n".join(texts)
    if block.get("is_error") is True:
        text = "[tool error] " + text
    message: dict[str, Any] = {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}
    if cache is not None:
        message["cache_control"] = cache
    return message


def _user(content: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    parts: list[dict[str, Any]] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            parts.append(_part(block["text"], block))
        elif kind == "image":
            parts.append(_image(block))
        elif kind == "document":
            parts.extend(_document(block))
        elif kind == "tool_result":
            out.append(_tool_result(block))  # tool answers come before the rest of the turn
        else:
            raise neutral.unsupported(f"a '{kind}' content block", TARGET)
    if parts:
        out.append({"role": "user", "content": _collapse(parts)})


def _assistant(content: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "assistant", "content": content})
        return
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    thoughts: list[str] = []
    signatures: list[str] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            parts.append(_part(block["text"], block))
        elif kind == "tool_use":
            arguments = orjson.dumps(block["input"]).decode()
            calls.append(
                {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}
            )
        elif kind == "thinking":
            thoughts.append(block["thinking"])
            if block["signature"]:
                signatures.append(block["signature"])
        elif kind == "redacted_thinking":
            continue  # encrypted for Anthropic's models only (see the module doc)
        else:
            raise neutral.unsupported(f"a '{kind}' content block", TARGET)
    message: dict[str, Any] = {"role": "assistant", "content": _collapse(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        message["reasoning_content"] = "\n".join(thoughts)
        if len(signatures) == 1 and len(thoughts) == 1:
            message["reasoning_signature"] = signatures[0]
    if parts or calls or thoughts:
        out.append(message)


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise neutral.unsupported(f"the Anthropic tool '{kind}'", TARGET, param="tools")
    for key, value in tool.items():
        if key not in TOOL_FIELDS and value is not None and value is not False:
            raise neutral.unsupported(f"the tool field '{key}'", TARGET, param="tools")
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    out: dict[str, Any] = {"type": "function", "function": function}
    if tool.get("cache_control") is not None:
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: dict[str, Any], chat: dict[str, Any]) -> None:
    kind = choice["type"]
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    else:
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    if choice.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


def _output_config(config: Any, chat: dict[str, Any]) -> None:
    if not isinstance(config, dict):
        raise neutral.unsupported("output_config", TARGET, param="output_config")
    for key, value in config.items():
        if value is None:
            continue
        if key == "effort" and value in EFFORTS:
            chat["reasoning_effort"] = value
        elif key == "format" and isinstance(value, dict) and value.get("type") == "json_schema":
            schema = {"name": "output", "schema": value.get("schema"), "strict": True}
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
        else:
            raise neutral.unsupported(f"output_config.{key} {orjson.dumps(value).decode()}", TARGET)


def _context_management(value: Any) -> None:
    """Only edits that change nothing can be carried (clearing thinking but keeping all of it)."""
    edits = value.get("edits") if isinstance(value, dict) else None
    for edit in edits or ():
        if not (
            isinstance(edit, dict)
            and str(edit.get("type", "")).startswith("clear_thinking")
            and edit.get("keep") == "all"
        ):
            raise neutral.unsupported("context_management edits", TARGET, param="context_management")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages (or count_tokens) body as a neutral chat body."""
    for key, value in body.items():
        if key not in CARRIED_FIELDS and value is not None:
            raise neutral.unsupported(f"'{key}'", TARGET, param=key)
    messages: list[dict[str, Any]] = []
    system = _system_message(body.get("system"))
    if system is not None:
        messages.append(system)
    for message in body["messages"]:
        role = message["role"]
        if role == "user":
            _user(message["content"], messages)
        elif role == "system":
            # A system message mid-conversation stays where it stands: providers that take
            # system text only up front gather it there.
            inner = _system_message(message["content"])
            if inner is not None:
                messages.append(inner)
        else:
            _assistant(message["content"], messages)
    cache = body.get("cache_control")
    if cache is not None and messages:
        _cache_last(messages[-1], cache)
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    if body.get("max_tokens") is not None:
        chat["max_tokens"] = body["max_tokens"]
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("stop_sequences"):
        chat["stop"] = list(body["stop_sequences"])
    tools = body.get("tools")
    if tools:
        chat["tools"] = [_tool(tool) for tool in tools]
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    if body.get("output_config") is not None:
        _output_config(body["output_config"], chat)
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        if thinking.get("type") == "enabled":
            chat["thinking_budget"] = thinking["budget_tokens"]
        elif thinking.get("type") == "adaptive":
            chat.setdefault("reasoning_effort", "high")  # Anthropic's default effort
    if body.get("context_management") is not None:
        _context_management(body["context_management"])
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    if body.get("stream") is True:
        chat["stream"] = True
    return chat


def _cache_last(message: dict[str, Any], cache: Any) -> None:
    """Top-level `cache_control` marks the last block of the request."""
    content = message.get("content")
    if isinstance(content, str):
        message["content"] = [{"type": "text", "text": content, "cache_control": cache}]
    elif isinstance(content, list) and content:
        content[-1] = {**content[-1], "cache_control": cache}
    else:
        message["cache_control"] = cache


# -- answers --------------------------------------------------------------------------------------


def message_id(neutral_id: Any) -> str:
    """A stable Anthropic message id from the neutral id."""
    text = neutral_id if isinstance(neutral_id, str) and neutral_id else "unknown"
    return text if text.startswith("msg_") else "msg_" + text


def _usage(value: dict[str, Any] | None) -> dict[str, int]:
    cached, creation, _reasoning, prompt = neutral.usage_details(value)
    output = value.get("completion_tokens") if isinstance(value, dict) else 0
    return {
        "input_tokens": max(prompt - cached - creation, 0),
        "output_tokens": output if isinstance(output, int) and not isinstance(output, bool) else 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": creation,
    }


def _stop_reason(finish_reason: Any, has_tools: bool) -> str:
    if has_tools and finish_reason in (None, "stop", "tool_calls"):
        return "tool_use"
    return STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}  # see the module doc
    return value if isinstance(value, dict) else {}


def _tool_id(value: Any, fallback: str) -> str:
    return value if isinstance(value, str) and value else fallback


def render_response(completion: dict[str, Any], call: Call) -> dict[str, Any]:
    """A neutral completion as an Anthropic message."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    found = choice.get("message")
    message: dict[str, Any] = found if isinstance(found, dict) else {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        signature = message.get("reasoning_signature")
        content.append(
            {"type": "thinking", "thinking": reasoning, "signature": signature if isinstance(signature, str) else ""}
        )
    text = neutral.text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    tool_calls = message.get("tool_calls") or []
    for i, tool_call in enumerate(tool_calls):
        function = tool_call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": _tool_id(tool_call.get("id"), f"toolu_{call.request_id}_{i}"),
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments")),
            }
        )
    model = completion.get("model")
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model if isinstance(model, str) and model else (call.model_requested or ""),
        "content": content,
        "stop_reason": _stop_reason(choice.get("finish_reason"), bool(tool_calls)),
        "stop_sequence": None,
        "usage": _usage(completion.get("usage")),
    }


def _event(name: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesStreamEncoder(StreamEncoder):
    """Neutral chunks as Anthropic SSE events: one content block open at a time, switching
    between thinking, text and each tool call; the stop reason and usage close the message."""

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.started = False
        #: "thinking" | "text" | "tool" of the open block, None when none is open
        self.open: str | None = None
        self.index = -1
        #: neutral tool-call index -> content block index
        self.tools: dict[int, int] = {}
        self.open_tool: int | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.id = "msg_unknown"
        self.model = call.model_requested or ""

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        self.id = message_id(chunk.get("id"))
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # known at the end: see message_delta
        }
        return _event(b"message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        self.open_tool = None
        return _event(b"content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.open = kind
        return out + _event(
            b"content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}
        )

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        at = self.index if index is None else index
        return _event(b"content_block_delta", {"type": "content_block_delta", "index": at, "delta": delta})

    def encode(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self.started else self._start(chunk)
        if "usage" in chunk and isinstance(chunk["usage"], dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                if self.open != "thinking":
                    out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out += self._delta({"type": "thinking_delta", "thinking": reasoning})
            signature = delta.get("reasoning_signature")
            if isinstance(signature, str) and signature:
                if self.open != "thinking":
                    out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out += self._delta({"type": "signature_delta", "signature": signature})
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": text})
            for tool_call in delta.get("tool_calls") or ():
                out += self._tool_call(tool_call)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        return out

    def _tool_call(self, tool_call: dict[str, Any]) -> bytes:
        out = b""
        at = tool_call.get("index", 0)
        function = tool_call.get("function") or {}
        if at not in self.tools:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": _tool_id(tool_call.get("id"), f"toolu_{self.call.request_id}_{at}"),
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._open("tool", block)
            self.tools[at] = self.index
            self.open_tool = at
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # an earlier tool call's late arguments go to its own block index
            out += self._delta({"type": "input_json_delta", "partial_json": arguments}, self.tools[at])
        return out

    def finish(self) -> bytes:
        out = b"" if self.started else self._start({})
        out += self._close()
        stop = _stop_reason(self.finish_reason, bool(self.tools))
        usage = _usage(self.usage) if self.usage is not None else {"output_tokens": 0}
        out += _event(
            b"message_delta",
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage},
        )
        return out + _event(b"message_stop", {"type": "message_stop"})

    def error(self, error: SluicegateError) -> bytes:
        return sse_error(error)


# -- errors and small bodies ----------------------------------------------------------------------


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
    return _event(b"error", _error(error))


def count_tokens_body(input_tokens: int) -> bytes:
    """The body of `POST /v1/messages/count_tokens`."""
    return orjson.dumps({"input_tokens": input_tokens})


# -- texts for guards -----------------------------------------------------------------------------

Path = _openai.Path

#: keys whose values are identifiers, enums, opaque or binary data, not text a model reads/writes
NON_TEXT_KEYS = frozenset(
    {"type", "id", "tool_use_id", "role", "model", "signature", "data", "media_type", "cache_control", "url",
     "file_id", "source", "encrypted_content", "encrypted_index", "required", "$schema", "$ref", "$id",
     "stop_reason", "stop_sequence", "usage", "citations", "is_error"}
)  # fmt: skip


def _strings(value: Any, path: Path, out: list[tuple[Path, str]]) -> None:
    if isinstance(value, str):
        if value:
            out.append((path, value))
    elif isinstance(value, dict):
        source = value.get("source")
        if isinstance(source, dict):
            if source.get("type") == "text" and isinstance(source.get("data"), str) and source["data"]:
                out.append(((*path, "source", "data"), source["data"]))
            elif source.get("type") == "content":
                _strings(source.get("content"), (*path, "source", "content"), out)
        for key, item in value.items():
            if key not in NON_TEXT_KEYS:
                _strings(item, (*path, key), out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _strings(item, (*path, i), out)


def request_texts(endpoint: str, body: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of a Messages (or count_tokens) request the model will read: the system prompt,
    every message block (text, tool-use inputs, tool results, thinking), tool definitions."""
    out: list[tuple[Path, str]] = []
    if endpoint in ("messages", "count_tokens"):
        _strings(body.get("system"), ("system",), out)
        _strings(body.get("messages"), ("messages",), out)
        _strings(body.get("tools"), ("tools",), out)
    return out


def response_texts(endpoint: str, data: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of an Anthropic message: text, thinking, tool-use names and inputs."""
    out: list[tuple[Path, str]] = []
    if endpoint == "messages":
        _strings(data.get("content"), ("content",), out)
    return out


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
