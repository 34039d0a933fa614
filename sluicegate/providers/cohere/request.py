"""Cohere request: a neutral chat body -> a v2 chat body (https://docs.cohere.com/reference/chat).

Part of `sluicegate.providers.cohere`; `build_body` is the entry. A key this translation does not
read, or a value it cannot carry, raises `neutral.unsupported` naming `target` (the provider).
"""

from __future__ import annotations

from typing import Any

from sluicegate import neutral
from sluicegate.errors import BadRequest
from sluicegate.providers.cohere.response import arguments_text

#: neutral `tool_choice` strings -> Cohere's (absent means the model decides)
TOOL_CHOICES = {"none": "NONE", "required": "REQUIRED"}

#: neutral keys carried under the same name
SAME_NAME = ("temperature", "seed", "frequency_penalty", "presence_penalty")

#: neutral keys that change nothing in the answer: not sent, nothing lost
IGNORED = neutral.INERT_KEYS

#: neutral keys this translation reads (the rest of a body is refused by name)
HANDLED = frozenset(
    {
        *SAME_NAME,
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "top_k",
        "stop",
        "response_format",
        "reasoning_effort",
        "thinking_budget",
        "n",
        "modalities",
        "logprobs",
        "top_logprobs",
        "logit_bias",
    }
)


def build_body(chat: dict[str, Any], model: str | None, stream: bool, target: str) -> dict[str, Any]:
    """The v2 chat body for a neutral chat body, for `model`, streamed or not."""
    for key, value in chat.items():
        if key not in HANDLED and key not in IGNORED and value is not None:
            raise neutral.unsupported(f"The '{key}' parameter", target, key)
    out: dict[str, Any] = {
        "model": model,
        "messages": _messages(chat.get("messages"), target),
        "stream": stream,
    }
    _refuse_unsupported(chat, target)
    for key in SAME_NAME:
        if chat.get(key) is not None:
            out[key] = chat[key]
    max_tokens = chat.get("max_completion_tokens", chat.get("max_tokens"))
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    if chat.get("top_p") is not None:
        out["p"] = chat["top_p"]
    if chat.get("top_k") is not None:
        out["k"] = chat["top_k"]
    stop = chat.get("stop")
    if stop is not None:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = chat.get("tools")
    if tools:
        out["tools"], strict = _tools(tools, target)
        if strict:
            out["strict_tools"] = True
    choice = _tool_choice(chat.get("tool_choice"), tools, target)
    if choice is not None:
        out["tool_choice"] = choice
    response_format = _response_format(chat.get("response_format"), target)
    if response_format is not None:
        out["response_format"] = response_format
    thinking = _thinking(chat.get("reasoning_effort"), chat.get("thinking_budget"))
    if thinking is not None:
        out["thinking"] = thinking
    return out


def _refuse_unsupported(chat: dict[str, Any], target: str) -> None:
    n = chat.get("n")
    if n is not None and n != 1:
        raise neutral.unsupported("Several choices (n > 1)", target, "n")
    if chat.get("parallel_tool_calls") is False:
        raise neutral.unsupported("Turning off parallel tool calls", target, "parallel_tool_calls")
    modalities = chat.get("modalities")
    if modalities is not None and list(modalities) != ["text"]:
        raise neutral.unsupported("Output modalities other than text", target, "modalities")
    if chat.get("logprobs") or chat.get("top_logprobs") is not None:
        raise neutral.unsupported("Log probabilities", target, "logprobs")
    if chat.get("logit_bias"):
        raise neutral.unsupported("Logit bias", target, "logit_bias")


def _messages(messages: Any, target: str) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": _text(content, "System messages", target)})
        elif role == "user":
            out.append({"role": "user", "content": _user_content(content, target)})
        elif role == "assistant":
            out.append(_assistant(m, target))
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise BadRequest(f"messages[{i}].tool_call_id is required", param=f"messages[{i}].tool_call_id")
            out.append({"role": "tool", "tool_call_id": call_id, "content": _text(content, "Tool results", target)})
        else:
            raise neutral.unsupported(f"Messages with the role {role!r}", target, f"messages[{i}].role")
    return out


def _text(content: Any, what: str, target: str) -> str:
    """Text of a content that may hold only text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise neutral.unsupported(f"{what} with {kind or 'non-text'} content", target)
    return neutral.text_of(content)


def _user_content(content: Any, target: str) -> str | list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise BadRequest("a message content must be a string or an array of parts")
    parts: list[dict[str, Any]] = []
    images = False
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": part.get("text") or ""})
        elif kind == "image_url":
            # v2 vision models take `image_url` parts: a web URL or a base64 data URI
            # (https://docs.cohere.com/docs/image-inputs)
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise BadRequest("an image_url part needs a url")
            entry: dict[str, Any] = {"url": url}
            if isinstance(image, dict) and image.get("detail"):
                entry["detail"] = image["detail"]
            parts.append({"type": "image_url", "image_url": entry})
            images = True
        else:
            raise neutral.unsupported(f"User messages with {kind or 'unknown'} content", target)
    if not images:
        return "".join(p["text"] for p in parts)
    return parts


def _assistant(m: dict[str, Any], target: str) -> dict[str, Any]:
    text = _text(m.get("content"), "Assistant messages", target)
    reasoning = m.get("reasoning_content")
    out: dict[str, Any] = {"role": "assistant"}
    calls = m.get("tool_calls")
    if calls:
        out["tool_calls"] = [_tool_call(tc) for tc in calls]
        if reasoning:
            out["tool_plan"] = reasoning
        if text:
            out["content"] = text
        return out
    if reasoning:
        out["content"] = [{"type": "thinking", "thinking": reasoning}, {"type": "text", "text": text}]
    else:
        out["content"] = text
    return out


def _tool_call(tc: Any) -> dict[str, Any]:
    fn = tc.get("function") if isinstance(tc, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BadRequest("an assistant tool call needs a function name")
    arguments = arguments_text(fn.get("arguments"))
    return {"id": tc.get("id") or "", "type": "function", "function": {"name": fn["name"], "arguments": arguments}}


def _tools(tools: Any, target: str) -> tuple[list[dict[str, Any]], bool]:
    out: list[dict[str, Any]] = []
    stricts: set[bool] = set()
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise neutral.unsupported(f"Tools of type {kind!r}", target, "tools")
        entry: dict[str, Any] = {"name": fn.get("name")}
        if fn.get("description") is not None:
            entry["description"] = fn["description"]
        entry["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
        stricts.add(bool(fn.get("strict")))
        out.append({"type": "function", "function": entry})
    if len(stricts) > 1:
        raise neutral.unsupported("Mixing strict and non-strict tools", target, "tools")
    return out, stricts == {True}


def _tool_choice(choice: Any, tools: Any, target: str) -> str | None:
    if choice is None or choice == "auto":
        return None
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        return TOOL_CHOICES[choice]
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        names = [t.get("function", {}).get("name") for t in tools or () if isinstance(t, dict)]
        if names == [name]:
            return "REQUIRED"  # the only tool: requiring a call is requiring this one
        raise neutral.unsupported("A tool_choice naming one of several functions", target, "tool_choice")
    raise neutral.unsupported(f"tool_choice {choice!r}", target, "tool_choice")


def _response_format(fmt: Any, target: str) -> dict[str, Any] | None:
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return {"type": "json_object", "json_schema": schema} if schema else {"type": "json_object"}
    raise neutral.unsupported(f"response_format {kind!r}", target, "response_format")


def _thinking(effort: Any, budget: Any) -> dict[str, Any] | None:
    if isinstance(budget, int) and not isinstance(budget, bool):
        return {"type": "enabled", "token_budget": budget} if budget > 0 else {"type": "disabled"}
    if effort is None:
        return None
    return {"type": "disabled"} if effort == "none" else {"type": "enabled"}
