"""A neutral completion as a Responses `Response` object, and the pieces its stream shares with it.

Part of the Responses dialect (`sluicegate.dialects.responses`): `render_response` for JSON
answers; the item, part, usage and envelope builders also serve `stream.py`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sluicegate.dialects.responses.parse import is_int, is_number
from sluicegate.neutral import usage_details

if TYPE_CHECKING:
    from sluicegate.call import Call

#: neutral finish reason -> (Response status, incomplete_details.reason)
STATUS = {
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}


def suffix(call: Call) -> str:
    """The request id without its `req_` prefix: the shared tail of every id in the answer."""
    rid = call.request_id
    return rid[4:] if rid.startswith("req_") else rid


def echo(call: Call) -> dict[str, Any]:
    """The request settings a Response object repeats (those the SDK's model requires included)."""
    body = call.body or {}
    tools = [
        {"type": "function", "name": t["name"], "description": t.get("description"),
         "parameters": t.get("parameters"), "strict": t.get("strict")}
        for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"
    ]  # fmt: skip
    text = body.get("text") or {}
    reasoning = body.get("reasoning") or {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": False,
        "temperature": body.get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": tools,
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "user": body.get("user"),
        "background": False,
    }


def render_usage(value: Any) -> dict[str, Any] | None:
    """Neutral usage -> Responses usage (https://platform.openai.com/docs/api-reference/responses/object)."""
    if not isinstance(value, dict):
        return None
    cached, written, reasoning, prompt = usage_details(value)
    completion = value.get("completion_tokens")
    output = completion if is_int(completion) else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }


def status_of(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    """(Response status, incomplete_details) for a neutral finish reason."""
    status = STATUS.get(finish_reason) if isinstance(finish_reason, str) else None
    if status is None:
        return "completed", None
    return status[0], {"reason": status[1]}


def response_object(
    call: Call,
    echoed: dict[str, Any],
    *,
    model: str,
    created: float,
    status: str,
    output: list[dict[str, Any]],
    incomplete: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Response envelope around `output`; `echoed` is `echo(call)`."""
    out: dict[str, Any] = {
        "id": f"resp_{suffix(call)}",
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        **echoed,
        "usage": usage,
    }
    if status == "completed":
        out["completed_at"] = int(time.time())
    return out


def content_part(kind: str, text: str) -> dict[str, Any]:
    """A content part: `output_text` or `refusal` (message), `reasoning_text` (reasoning)."""
    if kind == "output_text":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "reasoning_text", "text": text}


def reasoning_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    """A `reasoning` output item (its text in `content`, never a `summary`)."""
    return {"type": "reasoning", "id": item_id, "summary": [], "content": parts, "status": status}


def message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    """An assistant `message` output item."""
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": parts}


def function_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    """A `function_call` output item."""
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def render_response(completion: dict[str, Any], call: Call) -> dict[str, Any]:
    """A neutral completion as a Response object (`call.body` is the client's request)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    status, incomplete = status_of(choice.get("finish_reason"))
    tail = suffix(call)
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(f"rs_{tail}", [content_part("reasoning_text", reasoning)], "completed"))
    content = message.get("content")
    parts: list[dict[str, Any]] = []
    if isinstance(content, list):
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    if isinstance(content, str) and content:
        parts.append(content_part("output_text", content))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append(content_part("refusal", refusal))
    if parts:
        output.append(message_item(f"msg_{tail}", parts, "completed"))
    for n, tool_call in enumerate(message.get("tool_calls") or ()):
        function = tool_call.get("function") or {}
        output.append(
            function_item(
                f"fc_{tail}_{n}",
                tool_call.get("id") or f"call_{tail}_{n}",
                function.get("name") or "",
                function.get("arguments") or "",
                "completed",
            )
        )
    if status == "incomplete" and output:
        output[-1]["status"] = "incomplete"
    model = completion.get("model")
    created = completion.get("created")
    if not is_number(created):
        created = int(time.time())
    return response_object(
        call,
        echo(call),
        model=model if isinstance(model, str) and model else call.model_requested or "",
        created=created,
        status=status,
        output=output,
        incomplete=incomplete,
        usage=render_usage(completion.get("usage")),
    )
