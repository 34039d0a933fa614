"""What the answer relays share: response headers, and reading usage, model and texts from a
neutral (OpenAI-shaped) answer or chunk."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluicegate.call import Call


def response_headers(call: Call, base: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Response headers with the gateway's request id."""
    return [*base, (b"x-request-id", call.request_id.encode())]


def take_usage(call: Call, usage: Any) -> None:
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        total = usage.get("total_tokens")
        call.prompt_tokens = prompt if isinstance(prompt, int) else None
        call.completion_tokens = completion if isinstance(completion, int) else 0
        call.total_tokens = total if isinstance(total, int) else None
        call.usage_source = "upstream"


def take_model(call: Call, data: dict[str, Any]) -> bool:
    model = data.get("model")
    if isinstance(model, str) and model:
        call.model_served = model
        return True
    return False


def answer_texts(data: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        source = choice.get("message") or choice.get("delta") or choice
        if not isinstance(source, dict):
            continue
        for key in ("content", "text", "refusal", "reasoning_content"):
            value = source.get(key)
            if isinstance(value, str):
                texts.append(value)
        for tool_call in source.get("tool_calls") or ():
            fn = tool_call.get("function") if isinstance(tool_call, dict) else None
            if isinstance(fn, dict):
                texts.extend(v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))
    return texts
