"""The fake's legacy OpenAI completions (`POST /v1/completions`, JSON or SSE chunks): one text
per prompt and choice, an echo of the prompt (`"echo: X"`) or the scripted content."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sluicegate.testing.fake_openai.chat import stream_error
from sluicegate.testing.fake_openai.common import (
    SYSTEM_FINGERPRINT,
    BadRequest,
    include_usage,
    opt_int,
    require_model,
    send_error,
    token_count,
)
from sluicegate.testing.wire import (
    DEFAULT_TEXT,
    Receive,
    Send,
    begin,
    dumps,
    echo,
    pieces,
    rand,
    send_bytes,
    stream_events,
    total,
    words,
)

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream


def _prompts(data: dict[str, Any]) -> tuple[list[str], int]:
    """The prompts to answer (token arrays answer as empty prompts) and their token count."""
    prompt = data.get("prompt")
    if prompt is None:
        raise BadRequest("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    if isinstance(prompt, str):
        return [prompt], words(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt, sum(words(p) for p in prompt)
    if isinstance(prompt, list) and prompt:  # token arrays
        return [""] * (1 if all(isinstance(p, int) for p in prompt) else len(prompt)), token_count(prompt)
    raise BadRequest("Invalid type for 'prompt': expected a string or an array.", "prompt", "invalid_type")


async def completions(fake: FakeUpstream, data: dict[str, Any], receive: Receive, send: Send) -> None:
    """Legacy completions (https://platform.openai.com/docs/api-reference/completions)."""
    model = require_model(data)
    prompts, prompt_words = _prompts(data)
    n = opt_int(data, "n") or 1
    max_tokens = opt_int(data, "max_tokens")
    reply = fake._next_reply()
    stream = data.get("stream") is True and reply.fault != "json_stream"

    if not await begin(reply, stream, receive, send, send_error):
        return

    texts: list[tuple[str, str]] = []  # (text, finish_reason) per prompt
    for p in prompts:
        text = reply.content
        if text is None:
            echoed = echo(p)
            text = DEFAULT_TEXT if echoed is None else echoed
        parts = pieces(text)
        finish = "stop"
        if max_tokens is not None and len(parts) > max_tokens:
            text = "".join(parts[:max_tokens])
            finish = "length"
        texts.append((text, finish))
    prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else prompt_words
    completion_tokens = reply.completion_tokens
    if completion_tokens is None:
        completion_tokens = sum(len(pieces(t)) for t, _ in texts) * n
    reported = reply.counts(prompt_tokens, completion_tokens)
    usage = (
        {"prompt_tokens": reported[0], "completion_tokens": reported[1], "total_tokens": total(*reported)}
        if reply.usage
        else None
    )
    cid = "cmpl-" + rand(29)
    created = int(time.time())
    model_name = reply.model or model

    if not stream:
        choices = [
            {"text": text, "index": k * n + j, "logprobs": None, "finish_reason": finish}
            for k, (text, finish) in enumerate(texts)
            for j in range(n)
        ]
        obj: dict[str, Any] = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if usage is not None:
            obj["usage"] = usage
        await send_bytes(send, 200, dumps(obj), reply.headers)
        return

    usage_chunk = include_usage(data) and usage is not None

    def event(choices: list[dict[str, Any]], last_usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if usage_chunk:
            chunk["usage"] = last_usage
        return b"data: " + dumps(chunk) + b"\n\n"

    body: list[bytes] = []
    tail: list[bytes] = []
    for k, (text, finish) in enumerate(texts):
        for j in range(n):
            index = k * n + j
            body.extend(
                event([{"text": piece, "index": index, "logprobs": None, "finish_reason": None}])
                for piece in pieces(text)
            )
            tail.append(event([{"text": "", "index": index, "logprobs": None, "finish_reason": finish}]))
    if usage_chunk:
        tail.append(event([], usage))
    tail.append(b"data: [DONE]\n\n")
    await stream_events(reply, [], body, tail, send, error_event=stream_error(reply))
