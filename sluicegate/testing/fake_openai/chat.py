"""The fake's OpenAI chat completions (`POST /v1/chat/completions`, JSON or SSE chunks) and
Mistral's strict variant of it; the answer follows `wire.plan_answer`, as for every format."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.testing.fake_openai.common import (
    SYSTEM_FINGERPRINT,
    BadRequest,
    error_body,
    include_usage,
    opt_int,
    require_model,
    send_error,
)
from sluicegate.testing.wire import (
    Receive,
    Reply,
    Send,
    begin,
    dumps,
    plan_answer,
    rand,
    send_bytes,
    stream_events,
    text_of,
    total,
    words,
)

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream


def _usage(prompt: Any, completion: Any, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total(prompt, completion),
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    messages = data.get("messages")
    if messages is None:
        raise BadRequest("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise BadRequest("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
    if not messages:
        raise BadRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages", "empty_array"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(
                f"Invalid type for 'messages[{i}]': expected an object with a role.", f"messages[{i}]", "invalid_type"
            )
    return messages


async def mistral_chat(fake: FakeUpstream, data: dict[str, Any], receive: Receive, send: Send) -> None:
    """Mistral's chat completions (https://docs.mistral.ai/api/#tag/chat): the OpenAI shape, but
    unknown fields are refused (422) and a stream's last chunk always carries the usage."""
    extra = [k for k in ("stream_options", "max_completion_tokens", "seed") if k in data]
    if extra:
        detail = [
            {"type": "extra_forbidden", "loc": ["body", k], "msg": "Extra inputs are not permitted", "input": data[k]}
            for k in extra
        ]
        body = {"object": "error", "message": {"detail": detail}, "type": "invalid_request_error", "param": None}
        await send_bytes(send, 422, orjson.dumps({**body, "code": None}))
        return
    await chat(fake, data, receive, send, usage_on_finish=True)


async def chat(
    fake: FakeUpstream, data: dict[str, Any], receive: Receive, send: Send, usage_on_finish: bool = False
) -> None:
    """OpenAI chat completions (https://platform.openai.com/docs/api-reference/chat), ``n`` choices alike."""
    model = require_model(data)
    messages = _messages(data)
    n = opt_int(data, "n") or 1
    max_tokens = opt_int(data, "max_completion_tokens") or opt_int(data, "max_tokens")
    reply = fake._next_reply()
    stream = data.get("stream") is True and reply.fault != "json_stream"

    if not await begin(reply, stream, receive, send, send_error):
        return

    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    last_text = text_of(last_user.get("content")) if last_user is not None else ""
    prompt_words = sum(words(text_of(m.get("content"))) for m in messages)
    answer = plan_answer(reply, model, last_text, prompt_words, len(messages), max_tokens)
    content = answer.text
    tool_calls = [
        {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
        for tc in answer.tool_calls
    ]
    # a scripted completion count is the total; a planned one is per choice
    completion_tokens = answer.completion_tokens * (1 if reply.completion_tokens is not None else n)
    usage = (
        _usage(
            *reply.counts(answer.prompt_tokens, completion_tokens),
            reply.cached_tokens or 0,
            reply.reasoning_tokens or 0,
        )
        if reply.usage
        else None
    )
    cid = "chatcmpl-" + rand(29)
    created = int(time.time())

    if not stream:
        choices = []
        for i in range(n):
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
            if tool_calls:
                message["tool_calls"] = tool_calls if i == 0 else [dict(tc, id=f"call_{rand(24)}") for tc in tool_calls]
            choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": answer.finish})
        obj: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": answer.model,
            "choices": choices,
        }
        if usage is not None:
            obj["usage"] = usage
        obj["service_tier"] = "default"
        obj["system_fingerprint"] = SYSTEM_FINGERPRINT
        await send_bytes(send, 200, dumps(obj), reply.headers)
        return

    usage_chunk = include_usage(data) and usage is not None

    def event(choices: list[dict[str, Any]], last_usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": answer.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if usage_chunk:
            chunk["usage"] = last_usage
        return b"data: " + dumps(chunk) + b"\n\n"

    def choice(i: int, delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    first_content = "" if content is not None else None
    head = [event(choice(i, {"role": "assistant", "content": first_content, "refusal": None})) for i in range(n)]
    body = [event(choice(i, {"content": piece})) for piece in answer.pieces for i in range(n)]
    for i in range(n):
        for t, tc in enumerate(answer.tool_calls):
            call_id = tc.id if i == 0 else f"call_{rand(24)}"
            opening = {"index": t, "id": call_id, "type": "function", "function": {"name": tc.name, "arguments": ""}}
            body.append(event(choice(i, {"tool_calls": [opening]})))
            body.extend(
                event(choice(i, {"tool_calls": [{"index": t, "function": {"arguments": f}}]})) for f in tc.fragments
            )
    tail = [event(choice(i, {}, answer.finish)) for i in range(n)]
    if (usage_on_finish or reply.usage_shape == "on_finish") and usage is not None:
        last = orjson.loads(tail[-1][6:])
        last["usage"] = usage
        tail[-1] = b"data: " + dumps(last) + b"\n\n"
    elif usage_chunk:
        tail.append(event(_usage_choices(reply), usage))
    tail.append(b"data: [DONE]\n\n")
    await stream_events(reply, head, body, tail, send, error_event=stream_error(reply))


def _usage_choices(reply: Reply) -> list[dict[str, Any]]:
    """The `choices` of the usage chunk, in the shape `Reply.usage_shape` names."""
    if reply.usage_shape == "empty_delta":
        return [{"delta": {}}]
    if reply.usage_shape == "null_finish":
        return [{"index": 0, "delta": {}, "finish_reason": None}]
    return []


def stream_error(reply: Reply) -> bytes:
    """An in-band error event, as OpenAI sends one mid-stream."""
    return (
        b"data: " + error_body(500, reply.message("The server had an error while processing your request.")) + b"\n\n"
    )
