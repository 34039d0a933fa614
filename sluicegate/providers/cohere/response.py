"""Cohere answers: a v2 chat response -> neutral completion; finish reasons and usage for `stream.py` too.

Part of `sluicegate.providers.cohere`. Citations have no neutral place and are not relayed.
"""

from __future__ import annotations

from typing import Any

import orjson

from sluicegate import neutral
from sluicegate.errors import UpstreamError, UpstreamTimeout

#: Cohere `finish_reason` (upper case since 2024; older answers are lower case) -> neutral
#: (https://docs.cohere.com/reference/chat, response `finish_reason`)
FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}


def parse_response(data: Any, provider: str, model: str) -> dict[str, Any]:
    """The neutral completion for a v2 chat response: `thinking` and `tool_plan` become `reasoning_content`."""
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, dict):
        raise UpstreamError(f"provider '{provider}' answered with a body that is not a Cohere chat response")
    finish = finish_reason(provider, data.get("finish_reason"), data.get("error"))
    texts: list[str] = []
    thoughts: list[str] = []
    for item in message.get("content") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "text" and isinstance(item.get("text"), str):
            texts.append(item["text"])
        elif item.get("type") == "thinking" and isinstance(item.get("thinking"), str):
            thoughts.append(item["thinking"])
    plan = message.get("tool_plan")
    if isinstance(plan, str) and plan:
        thoughts.append(plan)
    calls = [
        {
            "id": tc.get("id") or "",
            "type": "function",
            "function": {
                "name": (tc.get("function") or {}).get("name", ""),
                "arguments": arguments_text((tc.get("function") or {}).get("arguments")),
            },
        }
        for tc in message.get("tool_calls") or ()
        if isinstance(tc, dict)
    ]
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if thoughts:
        out["reasoning_content"] = "\n\n".join(thoughts)
    if calls:
        out["tool_calls"] = calls
    return neutral.completion(str(data.get("id") or ""), model, out, finish, usage_of(data.get("usage")))


def finish_reason(provider: str, reason: Any, detail: Any = None) -> str:
    """The neutral finish reason; a generation that ended in `TIMEOUT` or `ERROR` raises."""
    value = reason.upper() if isinstance(reason, str) else "COMPLETE"
    mapped = FINISH_REASONS.get(value)
    if mapped is not None:
        return mapped
    text = detail if isinstance(detail, str) and detail else "no detail"
    if value == "TIMEOUT":
        raise UpstreamTimeout(f"provider '{provider}' timed out while generating: {text[:300]}")
    if value == "ERROR":
        raise UpstreamError(f"provider '{provider}' failed while generating: {text[:300]}")
    return "stop"  # a finish reason newer than this code: the answer itself is complete


def obj(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def arguments_text(value: Any) -> str:
    """Tool call arguments as JSON text (Cohere and neutral both carry text; objects are encoded)."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value if value is not None else {}).decode()


def _int(value: Any) -> Any:
    """Cohere types its counts as numbers: a whole float (`12.0`) is the integer it stands for;
    anything else is left as sent, for `neutral.checked_usage` to refuse."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def usage_of(raw: Any, provider: str | None = None) -> dict[str, Any] | None:
    """Cohere `usage` -> neutral: `tokens` counts everything the model read and wrote (what the
    neutral counts mean); `billed_units` only the part billed, used when `tokens` is absent."""
    if not isinstance(raw, dict):
        return None
    tokens = obj(raw.get("tokens"))
    billed = obj(raw.get("billed_units"))
    prompt = _int(tokens.get("input_tokens"))
    completion = _int(tokens.get("output_tokens"))
    if prompt is None:
        prompt = _int(billed.get("input_tokens"))
    if completion is None:
        completion = _int(billed.get("output_tokens"))
    return neutral.checked_usage((prompt,), (completion,), cached=_int(raw.get("cached_tokens")), provider=provider)
