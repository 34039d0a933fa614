"""What the answer relays share: response headers, SSE framing, and reading usage, model and
texts from a neutral (OpenAI-shaped) answer or chunk, every number checked first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sluicegate import neutral
from sluicegate.stages.accounting import count_usage

if TYPE_CHECKING:
    from sluicegate.cache.entry import Recorder
    from sluicegate.call import Call


#: configured header names as sent (a config names few)
_HEADER_NAMES: dict[str, bytes] = {}


def response_headers(call: Call, base: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Response headers with the gateway's request id (and the call's rate-limit figures, and what
    the cache did)."""
    headers = [*base, (b"x-request-id", call.request_id.encode())]
    if call.limit_headers:
        headers += call.limit_headers
    if call.cache is not None:
        headers += call.cache.headers()
    plan = call.plan
    if plan is not None and plan.served is not None:
        name = call.snapshot.config.routing.target_header
        if name:
            # Which of the route's targets served the call.
            raw = _HEADER_NAMES.get(name)
            if raw is None:
                raw = _HEADER_NAMES[name] = name.lower().encode()
            headers.append((raw, plan.served.label_bytes))
    return headers


def recorder(call: Call) -> Recorder | None:
    """What records the call's answer for the cache (a miss the cache will store), if anything."""
    cache = call.cache
    return cache.recorder if cache is not None else None


def frame(name: str | None, data: bytes) -> bytes:
    """One SSE event in the gateway's own framing: `event:` when named, one `data:` line, a blank line."""
    if name is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def reframe(name: str | None, payload: bytes, data: Any) -> bytes:
    """An upstream event re-sent in canonical framing: its data as received when it fits on one
    line, else re-serialised from the parsed object (multi-line data; the parser turned every
    line end into LF)."""
    if b"\n" in payload:
        payload = orjson.dumps(data)
    return frame(name, payload)


def take_usage(call: Call, usage: Any, *, warn: bool = True) -> dict[str, Any] | None:
    """Record a neutral usage object, every number checked; the checked usage, or None when it
    is not one (the gateway then counts the tokens: `count`)."""
    checked = neutral.clean_usage(usage, call.provider, warn=warn)
    if checked is not None:
        call.prompt_tokens = checked["prompt_tokens"]
        call.completion_tokens = checked["completion_tokens"]
        call.total_tokens = checked["total_tokens"]
        call.usage_source = "upstream"
        # Details are in the checked usage only where reported, each a count within its total.
        details = checked.get("prompt_tokens_details")
        call.cached_tokens = details.get("cached_tokens") if details else None
        call.cache_write_tokens = details.get("cache_creation_tokens") if details else None
        details = checked.get("completion_tokens_details")
        call.reasoning_tokens = details.get("reasoning_tokens") if details else None
    return checked


async def count(call: Call, texts: list[str]) -> dict[str, Any] | None:
    """Count the answer's tokens when the upstream reported none (before the answer's last
    event is encoded, so the client is told what the audit records); the usage, or None."""
    if call.usage_source != "none":
        return None
    call.usage_text = texts
    if not await count_usage(call):
        return None
    return counted_usage(call)


def counted_usage(call: Call) -> dict[str, Any]:
    """The neutral usage of the call's recorded counts."""
    return neutral.usage(call.prompt_tokens or 0, call.completion_tokens or 0)


def take_model(call: Call, data: dict[str, Any]) -> bool:
    model = data.get("model")
    if isinstance(model, str) and model:
        call.model_served = model[:256]
        return True
    return False


def answer_texts(data: dict[str, Any]) -> list[str]:
    """The texts of a neutral answer or chunk (content, refusal, reasoning, tool calls), to count."""
    texts: list[str] = []
    choices = data.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        source = choice.get("message") or choice.get("delta") or choice
        if not isinstance(source, dict):
            continue
        for key in ("content", "text", "refusal", "reasoning_content"):
            value = source.get(key)
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list):
                texts.extend(p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
        calls = source.get("tool_calls")
        for tool_call in calls if isinstance(calls, list) else ():
            fn = tool_call.get("function") if isinstance(tool_call, dict) else None
            if isinstance(fn, dict):
                texts.extend(v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))
    return texts
