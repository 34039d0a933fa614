"""The neutral model between dialects and providers: the OpenAI chat completions shape.

A dialect that is not OpenAI chat turns its request into a neutral *chat body*; a provider that
does not speak OpenAI turns a chat body into its own request, and its answer back into a neutral
*completion* (non-streamed) or neutral *chunks* (streamed). Where the client's dialect and the
provider's protocol are the same, none of this runs: the body passes through.

Chat body (what `to_chat` gives, what `build_request` takes): an OpenAI chat completions body.
  messages   roles system | developer | user | assistant | tool; `content` a string or parts
             (`{"type": "text", "text"}`, `{"type": "image_url", "image_url": {"url"}}` where the
             url may be a `data:` URL); assistant `tool_calls` `[{"id", "type": "function",
             "function": {"name", "arguments": "<JSON text>"}}]`; tool messages `tool_call_id`.
             Extensions carried from richer dialects: an assistant's `reasoning_content` (its
             thinking text) and `reasoning_signature`; a part's or message's `cache_control`.
  tools      `[{"type": "function", "function": {"name", "description", "parameters"}}]`
  tool_choice  "auto" | "none" | "required" | {"type": "function", "function": {"name"}}
  max_tokens, temperature, top_p, stop (list), stream, response_format, reasoning_effort,
  parallel_tool_calls, user, metadata: as OpenAI defines them. Extension: `top_k`,
  `thinking_budget` (tokens a provider may spend thinking).

Completion: `{"id", "object": "chat.completion", "created", "model", "choices": [{"index",
"message": {"role": "assistant", "content", "tool_calls"?, "reasoning_content"?,
"reasoning_signature"?}, "finish_reason"}], "usage"}`; finish reasons are stop | length |
tool_calls | content_filter.

Chunk: `{"id", "object": "chat.completion.chunk", "created", "model", "choices": [{"index",
"delta": {"role"?, "content"?, "reasoning_content"?, "reasoning_signature"?, "tool_calls"?:
[{"index", "id"?, "type"?, "function": {"name"?, "arguments"?}}]}, "finish_reason"}]}`; usage
comes in a last chunk with `"choices": []`.

Usage: `prompt_tokens` counts every input token, cached ones included; `completion_tokens` every
output token, reasoning included; details: `prompt_tokens_details.cached_tokens` (read from the
provider's cache), `prompt_tokens_details.cache_creation_tokens` (extension: written to it),
`completion_tokens_details.reasoning_tokens`.
"""

from __future__ import annotations

import time
from typing import Any

from sluicegate.errors import BadRequest

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")

#: chat body keys a translation may leave out without changing the answer (the model and the
#: messages are carried in other ways; the rest is metadata for OpenAI's own services)
INERT_KEYS = frozenset(
    {"model", "messages", "stream", "stream_options", "user", "metadata", "store", "service_tier",
     "prompt_cache_key", "safety_identifier"}
)  # fmt: skip


def usage(
    prompt: int,
    completion: int,
    *,
    cached: int | None = None,
    cache_creation: int | None = None,
    reasoning: int | None = None,
) -> dict[str, Any]:
    """A neutral usage object; details only where the provider reported them."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    details: dict[str, int] = {}
    if cached is not None:
        details["cached_tokens"] = cached
    if cache_creation is not None:
        details["cache_creation_tokens"] = cache_creation
    if details:
        out["prompt_tokens_details"] = details
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def usage_details(value: dict[str, Any] | None) -> tuple[int, int, int, int]:
    """(cached, cache_creation, reasoning, prompt) of a neutral usage object, 0 where absent."""
    if not isinstance(value, dict):
        return 0, 0, 0, 0
    prompt_details = value.get("prompt_tokens_details") or {}
    completion_details = value.get("completion_tokens_details") or {}
    return (
        _int(prompt_details.get("cached_tokens")),
        _int(prompt_details.get("cache_creation_tokens")),
        _int(completion_details.get("reasoning_tokens")),
        _int(value.get("prompt_tokens")),
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def completion(
    id_: str,
    model: str,
    message: dict[str, Any],
    finish_reason: str | None,
    usage_: dict[str, Any] | None,
    created: int | None = None,
) -> dict[str, Any]:
    """A neutral (non-streamed) completion with one choice."""
    out: dict[str, Any] = {
        "id": id_,
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if usage_ is not None:
        out["usage"] = usage_
    return out


def chunk(
    id_: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    *,
    index: int = 0,
) -> dict[str, Any]:
    """A neutral stream chunk with one choice."""
    return {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta or {}, "finish_reason": finish_reason}],
    }


def usage_chunk(id_: str, model: str, created: int, usage_: dict[str, Any]) -> dict[str, Any]:
    """The last chunk of a neutral stream: no choices, the whole call's usage."""
    return {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_,
    }


def tool_call_delta(
    index: int, *, id_: str | None = None, name: str | None = None, arguments: str | None = None
) -> dict[str, Any]:
    """One entry of a chunk's `delta.tool_calls`: the opening one carries id and name."""
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    out: dict[str, Any] = {"index": index, "function": function}
    if id_ is not None:
        out["id"] = id_
        out["type"] = "function"
    return out


def unsupported(feature: str, target: str, param: str | None = None) -> BadRequest:
    """The 400 for a request feature a translation cannot carry (never a silent drop)."""
    return BadRequest(
        f"{feature} cannot be carried to {target}; remove it or use a model served by a provider that supports it",
        code="unsupported_feature",
        param=param,
    )


def text_of(content: Any) -> str:
    """The text of a neutral message content: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def parse_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:<type>;base64,<data>` URL; None for other URLs."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")] or "application/octet-stream", data
