"""Complete (non-streamed) answers: forwarded as the upstream sent them (passthrough), or made
neutral by the provider and rendered in the client's dialect (translation); output guards first."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from sluicegate.errors import UpstreamError, UpstreamTimeout
from sluicegate.guardrails.engine import check_answer
from sluicegate.relay.common import answer_texts, response_headers, take_usage

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.types import Send

#: largest non-streamed upstream answer accepted
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def _read_answer(call: Call, resp: aiohttp.ClientResponse) -> tuple[bytes, Any]:
    """The whole upstream answer, raw and parsed as JSON."""
    name = call.provider
    try:
        if (resp.content_length or 0) > MAX_RESPONSE_BYTES:
            raise UpstreamError(f"provider '{name}' answered with more than {MAX_RESPONSE_BYTES} bytes")
        raw = await resp.read()
    except TimeoutError:
        raise UpstreamTimeout(f"provider '{name}' did not finish its answer in time") from None
    except aiohttp.ClientError:
        raise UpstreamError(f"provider '{name}' broke the connection during its answer") from None
    finally:
        resp.release()
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"provider '{name}' answered with a body that is not JSON") from None


def _take_answer(call: Call, data: dict[str, Any]) -> None:
    """Model served and usage of a complete neutral (OpenAI) answer."""
    model = data.get("model")
    if isinstance(model, str):
        call.model_served = model
    take_usage(call, data.get("usage"))
    if call.usage_source == "none":
        call.usage_text = answer_texts(data)


async def _send_json_answer(call: Call, send: Send, raw: bytes) -> None:
    call.ttft_ms = call.elapsed_ms()
    call.status = 200
    headers = response_headers(call, _JSON_HEADERS)
    headers.append((b"content-length", str(len(raw)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


async def relay_json(call: Call, resp: aiohttp.ClientResponse, send: Send) -> None:
    """Forward a complete JSON answer in the client's own dialect, reading its usage and model."""
    raw, data = await _read_answer(call, resp)
    if isinstance(data, dict):
        if call.dialect == "openai":
            _take_answer(call, data)
        elif call.route is not None and call.endpoint != "count_tokens":
            # Passthrough of another protocol: its provider reads usage (the answer goes as is).
            _take_answer(call, call.route.provider.parse_response(data, call))
        guards = call.guards
        # Output guards see the answer before any of it is sent; usage is already accounted.
        if (
            guards is not None
            and (guards.guards.output or guards.restorable)
            and await check_answer(call, guards, data, call.endpoint)
        ):
            raw = orjson.dumps(data)
    await _send_json_answer(call, send, raw)


async def relay_translated_json(
    call: Call,
    resp: aiohttp.ClientResponse,
    send: Send,
    render: Callable[[dict[str, Any], Call], dict[str, Any]],
) -> None:
    """A complete answer in the provider's protocol, made neutral, then rendered in the client's."""
    _, data = await _read_answer(call, resp)
    assert call.route is not None
    neutral = call.route.provider.parse_response(data, call)
    _take_answer(call, neutral)
    guards = call.guards
    if guards is not None and (guards.guards.output or guards.restorable):
        await check_answer(call, guards, neutral, "chat")
    await _send_json_answer(call, send, orjson.dumps(render(neutral, call)))
