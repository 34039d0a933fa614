"""Gemini answers: a `GenerateContentResponse` or error body -> neutral completion, usage, error detail.

Part of `sluicegate.providers.gemini`; the pieces a whole answer and a streamed event share
(candidates, finish reasons, function calls, usage) live here and `stream.py` reuses them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate import neutral
from sluicegate.errors import UpstreamError
from sluicegate.providers.base import json_error_message, retry_seconds, text_of

if TYPE_CHECKING:
    from sluicegate.call import Call

#: Candidate.finishReason -> neutral finish reason (https://ai.google.dev/api/generate-content#FinishReason);
#: anything else (OTHER, MALFORMED_FUNCTION_CALL, LANGUAGE ...) is "stop"
FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


def parse_response(data: Any, provider: str, call: Call) -> dict[str, Any]:
    """The neutral completion for a `GenerateContentResponse` (one choice per candidate)."""
    if not isinstance(data, dict):
        raise UpstreamError(f"provider '{provider}' answered with a body that is not a Gemini response")
    if isinstance(data.get("error"), dict):
        detail = json_error_message(data, ("error", "message"))
        raise UpstreamError(f"provider '{provider}' reported an error: {detail}")
    model = model_version(data) or requested_model(call)
    choices = []
    candidates = data.get("candidates")
    if isinstance(candidates, list):
        for index, candidate in indexed_candidates(candidates):
            choices.append(_choice(candidate, index))
        choices.sort(key=lambda c: c["index"])
    if not choices:
        # No candidates: the prompt itself was blocked (promptFeedback.blockReason).
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "finish_reason": "content_filter" if prompt_blocked(data) else "stop",
            }
        )
    out = neutral.completion(
        f"chatcmpl-{response_id(data) or secrets.token_hex(12)}",
        model,
        choices[0]["message"],
        None,
        usage_of(data, provider),
    )
    out["choices"] = choices
    return out


def requested_model(call: Call) -> str:
    route = call.route
    return (route.upstream_model if route is not None else None) or call.model_requested or ""


def model_version(data: dict[str, Any]) -> str | None:
    """The model that answered (`modelVersion`), when the answer names it."""
    version = data.get("modelVersion")
    return version if isinstance(version, str) and version else None


def response_id(data: dict[str, Any]) -> str | None:
    value = data.get("responseId")
    return value if isinstance(value, str) and value else None


def prompt_blocked(data: dict[str, Any]) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


#: candidates an answer may index (`candidateCount` is at most 8; OpenAI's `n` at most 128)
MAX_CANDIDATES = 1024


def indexed_candidates(candidates: list[Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each candidate object with its index (its own `index`, else its position)."""
    for position, candidate in enumerate(candidates):
        if isinstance(candidate, dict):
            index = candidate.get("index")
            yield (index if type(index) is int and 0 <= index < MAX_CANDIDATES else position), candidate


def call_id(call: dict[str, Any]) -> str:
    """Gemini's own id for a function call when it sent one, else a new one (clients need ids)."""
    value = call.get("id")
    return value if isinstance(value, str) and value else f"call_{secrets.token_hex(12)}"


def call_arguments(call: dict[str, Any]) -> str:
    """A `functionCall`'s `args` as the JSON text neutral tool calls carry."""
    return orjson.dumps(call.get("args") or {}).decode()


def finish_reason(reason: Any, has_calls: bool) -> str:
    finish = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if finish == "stop" and has_calls else finish


def candidate_parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _choice(candidate: dict[str, Any], index: int) -> dict[str, Any]:
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    signature: str | None = None
    for part in candidate_parts(candidate):
        sig = part.get("thoughtSignature")
        if signature is None and isinstance(sig, str) and sig:
            signature = sig
        text = part.get("text")
        if isinstance(text, str):
            (thoughts if part.get("thought") is True else texts).append(text)
        call = part.get("functionCall")
        if isinstance(call, dict):
            tool_calls.append(
                {
                    "id": call_id(call),
                    "type": "function",
                    "function": {"name": call.get("name", ""), "arguments": call_arguments(call)},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if signature is not None:
        message["reasoning_signature"] = signature
    return {
        "index": index,
        "message": message,
        "finish_reason": finish_reason(candidate.get("finishReason"), bool(tool_calls)),
    }


def usage_of(data: dict[str, Any], provider: str | None = None) -> dict[str, Any] | None:
    """Neutral usage from `usageMetadata`: output counts the thoughts, which Gemini reports apart
    (a zero count is left out). None when absent or its numbers are not counts."""
    meta = data.get("usageMetadata")
    if not isinstance(meta, dict):
        return None
    thoughts = meta.get("thoughtsTokenCount")
    return neutral.checked_usage(
        (meta.get("promptTokenCount"), meta.get("toolUsePromptTokenCount")),
        (meta.get("candidatesTokenCount"), thoughts),
        cached=meta.get("cachedContentTokenCount"),
        reasoning=thoughts,
        provider=provider,
    )


# ----------------------------------------------------------------------------------- errors


def _error_json(body: bytes) -> Any:
    """A parsed error body, unwrapped from the JSON-array stream framing (raises on bad JSON)."""
    data = orjson.loads(body)
    if isinstance(data, list) and data:
        data = data[0]
    return data


def error_message(body: bytes) -> str:
    try:
        data = _error_json(body)
    except orjson.JSONDecodeError:
        return text_of(body)
    return json_error_message(data, ("error", "message"), ("error",), ("message",))


def error_object(body: bytes) -> dict[str, Any] | None:
    """The `error` object of an error body (`{code, message, status, details}`), if any."""
    try:
        data = _error_json(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def retry_delay(error: dict[str, Any]) -> float | None:
    """The wait of a `google.rpc.RetryInfo` detail (`"retryDelay": "37s"`), in seconds."""
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                return retry_seconds(delay[:-1])
    return None
