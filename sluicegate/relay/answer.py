"""Complete (non-streamed) answers: forwarded as the upstream sent them (passthrough), or made
neutral by the provider and rendered in the client's dialect (translation); output guards first.

An answer must be a JSON object: anything else is refused as an upstream error (it must never
pass around the output guards), and so is a 200 answer that is an error body (the provider's
`answer_error`), whose message is scrubbed like every upstream error. When the upstream reports
no usage (or numbers that are not counts), the gateway counts and the answer carries that count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from sluicegate.cache.entry import carried
from sluicegate.dialects.anthropic.render import render_usage
from sluicegate.errors import UpstreamError, UpstreamTimeout
from sluicegate.guardrails.engine import check_answer
from sluicegate.relay.common import answer_texts, count, recorder, response_headers, take_model, take_usage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.types import Send

#: largest non-streamed upstream answer accepted
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_JSON_HEADERS = [(b"content-type", b"application/json")]
#: endpoints whose answers carry a usage the gateway fills in when the upstream did not
_COUNTED = frozenset({"chat", "completions", "messages"})


class InvalidAnswer(UpstreamError):
    """The upstream's answer is not what its protocol allows (not JSON, not an object)."""

    code = "upstream_invalid_response"


async def read_answer(call: Call, resp: aiohttp.ClientResponse, prefix: bytes = b"") -> tuple[bytes, dict[str, Any]]:
    """The whole upstream answer (bounded), raw and parsed; it must be a JSON object, and not an
    error body."""
    name = call.provider
    try:
        length = resp.content_length
        if length is not None and not prefix and "Content-Encoding" not in resp.headers:
            # The common answer: its length is known, bounded and not compressed (a compressed one
            # could decode to any size), so it is read whole at once.
            if length > MAX_RESPONSE_BYTES:
                raise UpstreamError(f"provider '{name}' answered with more than {MAX_RESPONSE_BYTES} bytes")
            raw = await resp.read()
        else:
            parts = [prefix] if prefix else []
            size = len(prefix)
            async for data in resp.content.iter_any():
                size += len(data)
                if size > MAX_RESPONSE_BYTES:
                    raise UpstreamError(f"provider '{name}' answered with more than {MAX_RESPONSE_BYTES} bytes")
                parts.append(data)
            raw = b"".join(parts)
    except TimeoutError:
        raise UpstreamTimeout(f"provider '{name}' did not finish its answer in time") from None
    except aiohttp.ClientError:
        raise UpstreamError(f"provider '{name}' broke the connection during its answer") from None
    finally:
        call.upstream_done()
        resp.release()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidAnswer(f"provider '{name}' answered with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidAnswer(f"provider '{name}' answered with JSON that is not an object")
    assert call.route is not None
    error = call.route.provider.answer_error(data)
    if error is not None:
        raise error
    return raw, data


def take_answer(call: Call, data: dict[str, Any]) -> dict[str, Any] | None:
    """Model served and usage of a complete neutral (OpenAI-shaped) answer; the checked usage."""
    take_model(call, data)
    usage = take_usage(call, data.get("usage"))
    if usage is None:
        call.usage_text = answer_texts(data)
    return usage


async def send_json_answer(call: Call, send: Send, raw: bytes) -> None:
    call.ttft_ms = call.elapsed_ms()
    call.status = 200
    headers = response_headers(call, _JSON_HEADERS)
    headers.append((b"content-length", str(len(raw)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


async def counted(call: Call) -> dict[str, Any] | None:
    """The gateway's count of a complete answer's tokens when the upstream reported none."""
    if call.usage_source != "none" or not (call.translated or call.endpoint in _COUNTED):
        return None
    return await count(call, call.usage_text or [])


async def relay_json(call: Call, resp: aiohttp.ClientResponse, send: Send) -> None:
    """Forward a complete JSON answer in the client's own dialect, reading its usage and model."""
    raw, data = await read_answer(call, resp)
    changed = False
    record = recorder(call)
    if call.dialect == "openai":
        take_answer(call, data)
        usage = await counted(call) if call.usage_source == "none" else None
        if usage is not None or (data.get("usage") is not None and call.usage_source != "upstream"):
            # No usage, or numbers that are not counts: the answer says what the audit records.
            data["usage"] = usage
            changed = True
        if record is not None:
            record.answer(data)
    elif call.route is not None and call.endpoint != "count_tokens":
        # Passthrough of another protocol (Anthropic's): its provider reads usage.
        answer = call.route.provider.parse_response(data, call)
        checked = take_answer(call, answer)
        usage = await counted(call) if call.usage_source == "none" else None
        if usage is not None:
            data["usage"] = render_usage(usage)
            changed = True
        if record is not None:
            answer["usage"] = checked or usage
            if carried(data.get("content")):
                record.answer(answer)
            else:
                record.drop()
    guards = call.guards
    # Output guards see the answer before any of it is sent; usage is already accounted.
    if (
        guards is not None
        and (guards.guards.output or guards.restorable)
        and await check_answer(call, guards, data, call.endpoint)
    ):
        changed = True
    await send_json_answer(call, send, orjson.dumps(data) if changed else raw)


async def relay_translated_json(
    call: Call,
    resp: aiohttp.ClientResponse,
    send: Send,
    render: Callable[[dict[str, Any], Call], dict[str, Any]],
) -> None:
    """A complete answer in the provider's protocol, made neutral, then rendered in the client's."""
    _, data = await read_answer(call, resp)
    assert call.route is not None
    neutral = call.route.provider.parse_response(data, call)
    neutral["usage"] = take_answer(call, neutral) or await counted(call)
    record = recorder(call)
    if record is not None:
        record.answer(neutral)
    guards = call.guards
    if guards is not None and (guards.guards.output or guards.restorable):
        await check_answer(call, guards, neutral, "chat")
    await send_json_answer(call, send, orjson.dumps(render(neutral, call)))
