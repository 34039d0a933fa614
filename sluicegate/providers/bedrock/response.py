"""Converse answers -> neutral: the completion of a Converse response, its usage and finish
reason, and the message of a Bedrock error body; `stream.py` shares these for streamed answers.
"""

from __future__ import annotations

import secrets as _secrets
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate import neutral
from sluicegate.errors import UpstreamError
from sluicegate.providers.base import json_error_message, text_of

if TYPE_CHECKING:
    from sluicegate.call import Call

#: Converse stop reasons (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_ResponseSyntax)
FINISH: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "malformed_model_output": "stop",
    "malformed_tool_use": "stop",
}


def finish_reason(stop: Any) -> str:
    """The neutral finish reason of a Converse `stopReason`."""
    return FINISH.get(stop, "stop") if isinstance(stop, str) else "stop"


def new_id() -> str:
    """Converse answers carry no id: one for the neutral completion."""
    return "chatcmpl-" + _secrets.token_hex(12)


def converse_usage(value: Any, provider: str | None = None) -> dict[str, Any] | None:
    """Neutral usage of a Converse TokenUsage. `inputTokens` excludes the tokens read from or
    written to the prompt cache (reported beside it), so the neutral prompt count adds them.
    None when absent or when its numbers are not counts (the gateway counts instead)."""
    if not isinstance(value, dict):
        return None
    read = value.get("cacheReadInputTokens")
    write = value.get("cacheWriteInputTokens")
    return neutral.checked_usage(
        (value.get("inputTokens"), read, write),
        (value.get("outputTokens"),),
        cached=read,
        cache_creation=write,
        provider=provider,
    )


def error_text(body: bytes) -> str:
    """The message of a Bedrock error body (`message`, or `Message` for API-key errors), bounded."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return text_of(body)
    return json_error_message(data, ("message",), ("Message",))


def parse_converse(provider: str, data: Any, call: Call) -> dict[str, Any]:
    """The neutral completion of a Converse response body (parsed JSON, not mutated)."""
    if not isinstance(data, dict):
        raise UpstreamError(f"provider '{provider}' answered with a body that is not a Converse response")
    output = data.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise UpstreamError(f"provider '{provider}' answered with a body that is not a Converse response")
    texts: list[str] = []
    reasoning: list[str] = []
    signature: str | None = None
    tool_calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            tool_calls.append(
                {
                    "id": use.get("toolUseId") or "",
                    "type": "function",
                    "function": {
                        "name": use.get("name") or "",
                        "arguments": orjson.dumps(use.get("input", {})).decode(),
                    },
                }
            )
        elif isinstance(block.get("reasoningContent"), dict):
            text = block["reasoningContent"].get("reasoningText")
            if isinstance(text, dict):
                if isinstance(text.get("text"), str):
                    reasoning.append(text["text"])
                if isinstance(text.get("signature"), str):
                    signature = text["signature"]
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    if signature is not None:
        out["reasoning_signature"] = signature
    if tool_calls:
        out["tool_calls"] = tool_calls
    assert call.route is not None
    model = call.route.upstream_model or call.model_requested or ""
    return neutral.completion(
        new_id(), model, out, finish_reason(data.get("stopReason")), converse_usage(data.get("usage"), provider)
    )
