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

import logging
import time
from typing import Any

from sluicegate.errors import BadRequest

log = logging.getLogger("sluicegate.usage")

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")
#: the largest token count taken from an upstream; a larger one (2**63 ...) is not a count
MAX_TOKENS = 2**31 - 1

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


def token_count(value: Any) -> int | None:
    """An upstream's token count if it is one (an integer, 0 <= n <= `MAX_TOKENS`), else None."""
    if type(value) is int and 0 <= value <= MAX_TOKENS:
        return value
    return None


def token_sum(*values: Any) -> int | None:
    """The sum of token counts, each checked first (None when one is not a count); absent (None)
    values count as 0, and the sum must be a count too."""
    total = 0
    for value in values:
        if value is None:
            continue
        count = token_count(value)
        if count is None:
            return None
        total += count
    return total if total <= MAX_TOKENS else None


def checked_usage(
    prompt_parts: tuple[Any, ...],
    completion_parts: tuple[Any, ...],
    *,
    cached: Any = None,
    cache_creation: Any = None,
    reasoning: Any = None,
    provider: str | None = None,
) -> dict[str, Any] | None:
    """A neutral usage from an upstream's raw counts, each checked before it is summed or used:
    prompt and completion are sums of their parts, and absent (None) parts are 0. None when
    nothing was reported, or when a part is not a count (logged: the gateway counts instead)."""
    if all(part is None for part in (*prompt_parts, *completion_parts)):
        return None
    prompt = token_sum(*prompt_parts)
    output = token_sum(*completion_parts)
    if prompt is None or output is None:
        log.warning(
            "provider '%s' reported token counts that are not counts (%s; %s); counting instead",
            provider,
            ", ".join(_shown(p) for p in prompt_parts),
            ", ".join(_shown(p) for p in completion_parts),
        )
        return None
    return usage(
        prompt,
        output,
        cached=_bounded(cached, prompt),
        cache_creation=_bounded(cache_creation, prompt),
        reasoning=_bounded(reasoning, output),
    )


def _bounded(value: Any, bound: int) -> int | None:
    """A count no larger than `bound`, else None."""
    return value if type(value) is int and 0 <= value <= bound else None


def clean_usage(value: Any, provider: str | None = None, *, warn: bool = True) -> dict[str, Any] | None:
    """A usage object with every number checked, from an upstream's neutral (OpenAI-shaped)
    usage; None when it has neither a prompt nor a completion count, or one that is not a count,
    null included (the gateway then counts the tokens itself; logged when `warn`); an absent one
    of the two is 0 (embeddings have no completion). Details that are not counts are dropped and
    the total is recomputed."""
    if not isinstance(value, dict):
        return None
    if "prompt_tokens" not in value and "completion_tokens" not in value:
        return None
    # An absent count is 0 (embeddings report no completion tokens); a null one is no count.
    raw_prompt, raw_completion = value.get("prompt_tokens", 0), value.get("completion_tokens", 0)
    # Checked inline (this runs on every answer): an int, 0 <= n <= MAX_TOKENS, as `token_count`.
    prompt = raw_prompt if type(raw_prompt) is int and 0 <= raw_prompt <= MAX_TOKENS else None
    completion = raw_completion if type(raw_completion) is int and 0 <= raw_completion <= MAX_TOKENS else None
    if prompt is None or completion is None:
        if warn:
            log.warning(
                "provider '%s' reported token counts that are not counts (%s, %s); counting instead",
                provider,
                _shown(raw_prompt),
                _shown(raw_completion),
            )
        return None
    cached = cache_creation = reasoning = None
    details = value.get("prompt_tokens_details")
    if details and isinstance(details, dict):
        cached = _bounded(details.get("cached_tokens"), prompt)
        cache_creation = _bounded(details.get("cache_creation_tokens"), prompt)
    details = value.get("completion_tokens_details")
    if details and isinstance(details, dict):
        reasoning = _bounded(details.get("reasoning_tokens"), completion)
    return usage(prompt, completion, cached=cached, cache_creation=cache_creation, reasoning=reasoning)


def _shown(value: Any) -> str:
    """A number or type name for a log line (never a long string an upstream chose)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 24 else text[:20] + "..."
    return type(value).__name__


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
