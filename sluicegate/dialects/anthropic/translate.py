"""An Anthropic Messages (or count_tokens) body as a neutral chat body, for non-Anthropic providers.

Part of the Anthropic dialect (`sluicegate.dialects.anthropic`, whose doc lists what a translated
call carries with a loss); what cannot be carried raises `neutral.unsupported`.
"""

from __future__ import annotations

from typing import Any

import orjson

from sluicegate import neutral

TARGET = "the selected model's provider"
EFFORTS = ("low", "medium", "high")

#: request fields a translated call carries (or accepts knowingly, see the package doc)
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


def _cached(part: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """`part` with the `cache_control` of the block it came from, if any."""
    if block.get("cache_control") is not None:
        part["cache_control"] = block["cache_control"]
    return part


def _part(text: str, block: dict[str, Any]) -> dict[str, Any]:
    return _cached({"type": "text", "text": text}, block)


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
    return _cached({"type": "image_url", "image_url": {"url": url}}, block)


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
            continue  # encrypted for Anthropic's models only (see the package doc)
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
    return _cached({"type": "function", "function": function}, tool)


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
