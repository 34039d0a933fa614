"""Every text of a Responses request or answer, with its path in the body, for the guardrails.

Part of the Responses dialect (`sluicegate.dialects.responses`); `sluicegate.dialects` picks it
for the `responses` endpoint.
"""

from __future__ import annotations

from typing import Any

from sluicegate.dialects.openai import Path, strings

#: keys whose string values are identifiers, enums or media, not text a model reads or writes
NON_TEXT_KEYS = frozenset(
    {"type", "role", "id", "call_id", "status", "detail", "image_url", "file_id", "file_data", "file_url",
     "filename", "encrypted_content", "annotations", "logprobs", "phase", "format", "strict", "model", "object"}
)  # fmt: skip


def _strings(value: Any, path: Path, out: list[tuple[Path, str]]) -> None:
    strings(value, path, out, NON_TEXT_KEYS)


def request_texts(endpoint: str, body: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of a Responses request the model will read: instructions, input messages and
    parts, function calls (names, arguments) and their outputs, tool definitions. Reasoning items
    are not sent upstream (see the package doc), so they are not read."""
    out: list[tuple[Path, str]] = []
    if endpoint != "responses":
        return out
    _strings(body.get("instructions"), ("instructions",), out)
    value = body.get("input")
    if isinstance(value, str):
        _strings(value, ("input",), out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict) and item.get("type") != "reasoning":
                _strings(item, ("input", i), out)
    _strings(body.get("tools"), ("tools",), out)
    return out


def response_texts(endpoint: str, data: dict[str, Any]) -> list[tuple[Path, str]]:
    """Every text of a Response the model wrote: message text and refusals, reasoning, tool calls."""
    out: list[tuple[Path, str]] = []
    if endpoint == "responses":
        _strings(data.get("output"), ("output",), out)
    return out
