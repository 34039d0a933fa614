"""Anthropic provider, answer side: a Messages API message (JSON) -> a neutral completion.

`FINISH` and `usage_of` are shared with `stream.py`, which decodes the streamed form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sluicegate import neutral

#: Anthropic stop reasons (https://docs.anthropic.com/en/api/messages, `stop_reason`) -> neutral finish reasons
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def from_message(data: dict[str, Any], model: str, provider: str | None = None) -> dict[str, Any]:
    """A neutral completion for a Messages API message (https://docs.anthropic.com/en/api/messages)."""
    texts: list[str] = []
    thinking: list[str] = []
    signature: str | None = None
    tool_calls: list[dict[str, Any]] = []
    for block in data["content"]:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": orjson.dumps(block.get("input", {})).decode()},
                }
            )
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
            signature = block.get("signature") or signature
        # redacted_thinking and server tool blocks have no neutral place (never asked for by a translation)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if signature:
        message["reasoning_signature"] = signature
    usage = data.get("usage")
    return neutral.completion(
        str(data.get("id") or ""),
        str(data.get("model") or model),
        message,
        FINISH.get(data.get("stop_reason") or "", "stop"),
        usage_of(usage, provider) if isinstance(usage, dict) else None,
    )


def usage_of(usage: Mapping[str, Any], provider: str | None = None) -> dict[str, Any] | None:
    """Neutral usage of a Messages usage object: prompt tokens count cache reads and writes too.
    None when it reports no output count, or numbers that are not counts (the gateway counts)."""
    read = usage.get("cache_read_input_tokens")
    created = usage.get("cache_creation_input_tokens")
    output = usage.get("output_tokens")
    if output is None:
        return None
    details = usage.get("output_tokens_details")
    return neutral.checked_usage(
        (usage.get("input_tokens"), read, created),
        (output,),
        cached=read,
        cache_creation=created,
        reasoning=details.get("thinking_tokens") if isinstance(details, dict) else None,
        provider=provider,
    )
