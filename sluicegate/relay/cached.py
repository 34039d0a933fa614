"""A cache hit answered: the stored neutral answer rendered in the client's dialect, as a JSON
answer or as the stream the client asked for, through the output guards of the current config.

A stored stream goes out in the chunks the model streamed; a stored complete answer, asked for
as a stream, as the chunks a stream of it has. The usage is the stored one (the tokens the hit
saved; the audit records them with usage source `cache`). Nothing here reaches an upstream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from sluicegate.errors import SluicegateError
from sluicegate.guardrails.engine import check_answer
from sluicegate.relay.answer import counted, send_json_answer, take_answer
from sluicegate.relay.replay import completion_chunks
from sluicegate.relay.stream import Tally, end, internal, output_guard, release, start

if TYPE_CHECKING:
    from sluicegate.cache.entry import Entry
    from sluicegate.call import Call
    from sluicegate.pipeline import Endpoint
    from sluicegate.types import Send


async def relay_cached(call: Call, entry: Entry, send: Send, endpoint: Endpoint) -> None:
    """Answer the call with a stored answer."""
    if call.stream:
        await _stream(call, entry, send, endpoint)
        return
    completion = entry.completion()
    completion["usage"] = take_answer(call, completion) or await counted(call)
    _from_cache(call)
    guards = call.guards
    if guards is not None and guards.guards.output:
        await check_answer(call, guards, completion, "chat")
    render = endpoint.render_response
    body = render(completion, call) if render is not None else completion
    await send_json_answer(call, send, orjson.dumps(body))


async def _stream(call: Call, entry: Entry, send: Send, endpoint: Endpoint) -> None:
    assert endpoint.stream_encoder is not None
    encoder = endpoint.stream_encoder(call)
    await start(call, send)
    call.ttft_ms = call.elapsed_ms()
    error: SluicegateError | None = None
    tail = b""
    out: list[bytes] = []
    try:
        if entry.streamed:
            chunks = entry.chunks()
        else:
            completion = entry.completion()
            chunks = completion_chunks(completion, completion.get("usage"))
        tally = Tally(call)
        for chunk in chunks:
            tally.chunk(chunk)
        _from_cache(call)
        counted_chunk = await tally.counted_chunk()
        if counted_chunk is not None:
            chunks.append(counted_chunk)
        held = output_guard(call)
        if held is not None:
            for chunk in chunks:
                held.add_chunk(chunk)
            chunks = await release(held.finish_chunks(), out, send)
        out.extend(encoder.encode(chunk) for chunk in chunks)
        out.append(encoder.finish())
        tail = b"".join(out)  # sent by `end`, with the body's last message
    except SluicegateError as exc:
        error = exc
    except Exception as exc:
        error = internal(call, exc)
    await end(call, send, call.provider, True, error, encoder.error, tail)


def _from_cache(call: Call) -> None:
    """The tokens just read are the stored answer's: the audit tells them apart from an upstream's."""
    if call.usage_source == "upstream":
        call.usage_source = "cache"
