"""A neutral completion as an Anthropic message, and the pieces its stream shares with it.

Part of the Anthropic dialect (`sluicegate.dialects.anthropic`): `render_response` for JSON
answers; `message_id`, `render_usage`, `stop_reason` and `tool_id` also serve `stream.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sluicegate import neutral
from sluicegate.dialects.anthropic.parse import is_int

if TYPE_CHECKING:
    from sluicegate.call import Call

#: neutral finish reason -> Anthropic stop reason
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def message_id(neutral_id: Any) -> str:
    """A stable Anthropic message id from the neutral id."""
    text = neutral_id if isinstance(neutral_id, str) and neutral_id else "unknown"
    return text if text.startswith("msg_") else "msg_" + text


def render_usage(value: dict[str, Any] | None) -> dict[str, int]:
    """Neutral usage as Anthropic usage (input tokens exclude cache reads and writes)."""
    cached, creation, _reasoning, prompt = neutral.usage_details(value)
    output = value.get("completion_tokens") if isinstance(value, dict) else 0
    return {
        "input_tokens": max(prompt - cached - creation, 0),
        "output_tokens": output if is_int(output) else 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": creation,
    }


def stop_reason(finish_reason: Any, has_tools: bool) -> str:
    """Anthropic's stop reason for a neutral finish reason."""
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
        return {}  # see the package doc
    return value if isinstance(value, dict) else {}


def tool_id(value: Any, fallback: str) -> str:
    """The upstream's tool-call id, or `fallback` when it has none."""
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
                "id": tool_id(tool_call.get("id"), f"toolu_{call.request_id}_{i}"),
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
        "stop_reason": stop_reason(choice.get("finish_reason"), bool(tool_calls)),
        "stop_sequence": None,
        "usage": render_usage(completion.get("usage")),
    }
