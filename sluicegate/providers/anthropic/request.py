"""Anthropic provider, request side: a neutral chat body -> a Messages API request.

Used by `AnthropicProvider.build_request` for every non-Anthropic client dialect; what the
Messages API cannot carry is refused with `neutral.unsupported` unless it is inert.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sluicegate import neutral
from sluicegate.errors import BadRequest

if TYPE_CHECKING:
    from sluicegate.providers.anthropic import AnthropicOptions

#: `reasoning_effort` -> thinking `budget_tokens` (Anthropic's minimum budget is 1024)
EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
MIN_THINKING_BUDGET = 1024

#: neutral chat keys `build_request` reads; any other key is refused (`neutral.unsupported`)
_HANDLED = frozenset(
    {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "temperature",
        "top_p",
        "top_k",
        "thinking_budget",
        "reasoning_effort",
        "user",
        "safety_identifier",
        "stream",
        # checked below: carried when harmless (n=1, logprobs false, response_format text ...), else refused
        "n",
        "logprobs",
        "top_logprobs",
        "response_format",
        "modalities",
        "audio",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "logit_bias",
        "store",
        "service_tier",
        "verbosity",
        # not carried, and they do not change the answer: OpenAI's stored-completion tags, its
        # usage-chunk switch (Anthropic always reports usage), its prompt cache routing hint
        "metadata",
        "stream_options",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)

#: the document media type the Messages API takes in a base64 source
_PDF = "application/pdf"


def to_messages_request(
    chat: dict[str, Any], model: str | None, options: AnthropicOptions, target: str = "Anthropic"
) -> dict[str, Any]:
    """A Messages API request (https://docs.anthropic.com/en/api/messages) for a neutral chat body."""
    for key in chat:
        if key not in _HANDLED:
            raise neutral.unsupported(f"the '{key}' parameter", target, key)
    _refuse_unsupported(chat, target)

    system, messages = _messages(chat.get("messages"), target)
    out: dict[str, Any] = {"model": model}
    if system:
        out["system"] = system
    out["messages"] = messages

    max_tokens = chat.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = chat.get("max_tokens")
    budget = _thinking_budget(chat, max_tokens)
    if max_tokens is None:
        # The neutral (OpenAI) max counts reasoning tokens as Anthropic's does; with no max given,
        # thinking gets its budget on top of the default answer length.
        max_tokens = options.default_max_tokens + (budget or 0)
    out["max_tokens"] = max_tokens
    if budget:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}

    stop = chat.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    for key in ("temperature", "top_p", "top_k"):
        if chat.get(key) is not None:
            out[key] = chat[key]

    tools = chat.get("tools")
    if tools:
        out["tools"] = [_tool(t, i, target) for i, t in enumerate(tools)]
        choice = _tool_choice(chat.get("tool_choice"), chat.get("parallel_tool_calls"), target)
        if choice is not None:
            out["tool_choice"] = choice

    user = chat.get("user") or chat.get("safety_identifier")
    if user:
        out["metadata"] = {"user_id": user}
    if chat.get("stream"):
        out["stream"] = True
    return out


def _refuse_unsupported(chat: dict[str, Any], target: str) -> None:
    """Features of the neutral body the Messages API has no place for, refused unless inert."""
    n = chat.get("n")
    if n is not None and n != 1:
        raise neutral.unsupported("several choices (n > 1)", target, "n")
    if chat.get("logprobs") or chat.get("top_logprobs"):
        raise neutral.unsupported("logprobs", target, "logprobs")
    fmt = chat.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise neutral.unsupported(f"response_format '{kind}' (structured output)", target, "response_format")
    modalities = chat.get("modalities")
    if chat.get("audio") is not None or (modalities is not None and modalities != ["text"]):
        raise neutral.unsupported("audio output", target, "modalities")
    for key in ("presence_penalty", "frequency_penalty"):
        if chat.get(key):
            raise neutral.unsupported(key, target, key)
    if chat.get("seed") is not None:
        raise neutral.unsupported("seed (reproducible sampling)", target, "seed")
    if chat.get("logit_bias"):
        raise neutral.unsupported("logit_bias", target, "logit_bias")
    if chat.get("store"):
        raise neutral.unsupported("store (stored completions)", target, "store")
    if chat.get("verbosity") not in (None, "medium"):
        raise neutral.unsupported("verbosity other than 'medium'", target, "verbosity")
    tier = chat.get("service_tier")
    if tier not in (None, "auto", "default"):
        raise neutral.unsupported(f"service_tier '{tier}'", target, "service_tier")


def _thinking_budget(chat: dict[str, Any], max_tokens: Any) -> int | None:
    """Thinking budget tokens: `thinking_budget` as given, else one for `reasoning_effort`."""
    budget = chat.get("thinking_budget")
    if budget is not None:
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
            raise BadRequest("thinking_budget must be a non-negative integer", param="thinking_budget")
        return budget or None
    effort = chat.get("reasoning_effort")
    if effort is None or effort == "none":
        return None
    wanted = EFFORT_BUDGET.get(effort) if isinstance(effort, str) else None
    if wanted is None:
        raise BadRequest(f"reasoning_effort must be one of none, {', '.join(EFFORT_BUDGET)}", param="reasoning_effort")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        # The client's max covers thinking and answer: thinking may take all but one token of it.
        wanted = min(wanted, max_tokens - 1)
        if wanted < MIN_THINKING_BUDGET:
            raise BadRequest(
                f"reasoning_effort needs max_tokens above {MIN_THINKING_BUDGET} on Anthropic "
                f"(its thinking budget is at least {MIN_THINKING_BUDGET} tokens)",
                param="max_tokens",
            )
    return wanted


def _messages(raw: Any, target: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating user/assistant messages) of the neutral messages."""
    if not isinstance(raw, list):
        raise BadRequest("messages must be an array", param="messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            # The Messages API has one top-level system prompt: every system message goes there, in order.
            blocks = _parts(message.get("content"), where, target, text_only=True)
            _mark_last(blocks, message)
            system.extend(blocks)
            continue
        if role == "user":
            turn_role, blocks = "user", _parts(message.get("content"), where, target)
        elif role == "assistant":
            turn_role, blocks = "assistant", _assistant_blocks(message, where, target)
            if not blocks:
                continue  # an empty assistant turn carries nothing, and the API refuses empty content
        elif role == "tool":
            turn_role, blocks = "user", [_tool_result(message, where, target)]
        else:
            raise neutral.unsupported(f"the message role '{role}'", target, f"{where}.role")
        _mark_last(blocks, message)
        if turns and turns[-1]["role"] == turn_role:
            # The API wants user and assistant turns to alternate: consecutive ones become one turn.
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    return system, turns


def _mark_last(blocks: list[dict[str, Any]], message: dict[str, Any]) -> None:
    """A message-level `cache_control` marks the message's last block (where Anthropic puts breakpoints)."""
    mark = message.get("cache_control")
    if mark is not None and blocks:
        blocks[-1] = {**blocks[-1], "cache_control": mark}


def _parts(content: Any, where: str, target: str, *, text_only: bool = False) -> list[dict[str, Any]]:
    """Content blocks of a neutral message content (a string or parts)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or an array of parts", param=f"{where}.content")
    blocks = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise BadRequest(f"{at} must be an object", param=at)
        kind = part.get("type")
        if kind == "text" or (text_only and kind == "refusal"):
            block: dict[str, Any] = {"type": "text", "text": part.get("text", part.get("refusal", ""))}
        elif text_only:
            raise neutral.unsupported(f"'{kind}' parts in this message", target, at)
        elif kind == "image_url":
            block = _image(part.get("image_url"), at, target)
        elif kind == "file":
            block = _document(part.get("file"), at, target)
        elif kind == "input_audio":
            raise neutral.unsupported("audio input", target, at)
        else:
            raise neutral.unsupported(f"content parts of type '{kind}'", target, at)
        if part.get("cache_control") is not None:
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _image(value: Any, at: str, target: str) -> dict[str, Any]:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise BadRequest(f"{at}.image_url.url must be a string", param=f"{at}.image_url.url")
    parsed = neutral.parse_data_url(url)
    if parsed is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": parsed[0], "data": parsed[1]}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise neutral.unsupported("images that are neither base64 data URLs nor http(s) URLs", target, at)


def _document(value: Any, at: str, target: str) -> dict[str, Any]:
    data = value.get("file_data") if isinstance(value, dict) else None
    parsed = neutral.parse_data_url(data) if isinstance(data, str) else None
    if parsed is None:
        raise neutral.unsupported("file inputs other than base64 data URLs (file_id)", target, at)
    media, b64 = parsed
    if media == _PDF:
        return {"type": "document", "source": {"type": "base64", "media_type": _PDF, "data": b64}}
    raise neutral.unsupported(f"'{media}' files (Anthropic documents are PDF)", target, at)


def _assistant_blocks(message: dict[str, Any], where: str, target: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    thinking = message.get("reasoning_content")
    signature = message.get("reasoning_signature")
    if thinking and signature:
        # Anthropic verifies thinking it gets back by its signature; thinking without one (from
        # another provider) cannot be sent back and is left out.
        blocks.append({"type": "thinking", "thinking": thinking, "signature": signature})
    content = message.get("content")
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    else:
        blocks.extend(b for b in _parts(content, where, target, text_only=True) if b.get("text"))
    for k, call in enumerate(message.get("tool_calls") or ()):
        at = f"{where}.tool_calls[{k}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"{at} must have a function with a name", param=at)
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": fn["name"], "input": _arguments(fn, at)})
    return blocks


def _arguments(fn: dict[str, Any], at: str) -> Any:
    arguments = fn.get("arguments")
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        raise BadRequest(
            f"{at}.function.arguments is not valid JSON", param=f"{at}.function.arguments", code="invalid_value"
        ) from None
    if not isinstance(value, dict):
        raise BadRequest(
            f"{at}.function.arguments must be a JSON object", param=f"{at}.function.arguments", code="invalid_value"
        )
    return value


def _tool_result(message: dict[str, Any], where: str, target: str) -> dict[str, Any]:
    content = message.get("content")
    result: Any = content if isinstance(content, str) else _parts(content, where, target)
    return {"type": "tool_result", "tool_use_id": message.get("tool_call_id"), "content": result}


def _tool(tool: Any, i: int, target: str) -> dict[str, Any]:
    at = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else tool
        raise neutral.unsupported(f"tools of type '{kind}'", target, at)
    fn = tool.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BadRequest(f"{at}.function must have a name", param=f"{at}.function.name")
    out: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    out["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
    if tool.get("cache_control") is not None:
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: Any, parallel: Any, target: str) -> dict[str, Any] | None:
    out: dict[str, Any]
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise BadRequest("tool_choice.function.name must be a string", param="tool_choice.function.name")
        out = {"type": "tool", "name": name}
    else:
        kind = choice.get("type") if isinstance(choice, dict) else choice
        raise neutral.unsupported(f"tool_choice '{kind}'", target, "tool_choice")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is auto
    return out
