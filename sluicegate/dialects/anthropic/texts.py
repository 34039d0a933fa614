"""Every text of an Anthropic request or answer, with its path in the body, for the guardrails.

Part of the Anthropic dialect (`sluicegate.dialects.anthropic`); `sluicegate.dialects` picks it
for the `messages` and `count_tokens` endpoints.
"""

from __future__ import annotations

from typing import Any

from sluicegate.dialects.openai import Path

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


#: the field of each `content_block_delta` kind that carries the model's text
_DELTA_TEXT = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


def stream_event_texts(event: dict[str, Any]) -> list[tuple[str, Path, str]]:
    """(channel, path, text) one Messages stream event adds: text, thinking and tool input deltas,
    one channel per content block (https://docs.anthropic.com/en/api/messages-streaming)."""
    if event.get("type") != "content_block_delta":
        return []
    delta = event.get("delta")
    key = _DELTA_TEXT.get(delta.get("type", "")) if isinstance(delta, dict) else None
    if key is None:
        return []
    assert isinstance(delta, dict)
    text = delta.get(key)
    if not isinstance(text, str) or not text:
        return []
    return [(f"{event.get('index', 0)}.{key}", ("delta", key), text)]
