"""The fake's OpenAI embeddings (`POST /v1/embeddings`): a deterministic unit vector per input,
derived from its text, as float values or base64 little-endian float32."""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import struct
import sys
from array import array
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.testing.fake_openai.common import BadRequest, opt_int, require_model, send_error, token_count
from sluicegate.testing.wire import Receive, Send, begin, send_bytes, words

if TYPE_CHECKING:
    from sluicegate.testing.upstream import FakeUpstream


@functools.lru_cache(maxsize=4096)
def _embedding(text: str, dims: int) -> tuple[list[float], str]:
    """A deterministic unit vector for ``text`` (from SHAKE-256) as float32 values and as base64 little-endian."""
    raw = struct.unpack(f"<{dims}I", hashlib.shake_256(text.encode()).digest(4 * dims))
    values = [x / 2147483648.0 - 1.0 for x in raw]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    vec = array("f", [v / norm for v in values])
    floats = vec.tolist()
    if sys.byteorder != "little":
        vec.byteswap()
    return floats, base64.b64encode(vec.tobytes()).decode()


def _inputs(raw: Any) -> tuple[list[str], int]:
    """The texts to embed (token arrays embed as `tokens:1,2,3`) and their token count."""
    if raw is None:
        raise BadRequest("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    inputs: list[str]
    if isinstance(raw, str):
        inputs, tokens = [raw], words(raw)
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs, tokens = raw, sum(words(x) for x in raw)
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        inputs, tokens = ["tokens:" + ",".join(map(str, raw))], len(raw)
    elif isinstance(raw, list) and raw and all(isinstance(x, list) and x for x in raw):
        inputs, tokens = ["tokens:" + ",".join(map(str, x)) for x in raw], token_count(raw)
    else:
        raise BadRequest("'$.input' is invalid. Please check the API reference.", "input", "invalid_value")
    if any(x == "" for x in inputs):
        raise BadRequest("'$.input' is invalid: empty strings are not allowed.", "input", "invalid_value")
    return inputs, tokens


async def embeddings(fake: FakeUpstream, data: dict[str, Any], receive: Receive, send: Send) -> None:
    """Embeddings (https://platform.openai.com/docs/api-reference/embeddings); 8 dimensions by default."""
    model = require_model(data)
    inputs, tokens = _inputs(data.get("input"))
    dims = opt_int(data, "dimensions") or 8
    fmt = data.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BadRequest(f"Invalid value for 'encoding_format': {fmt!r}.", "encoding_format", "invalid_value")

    reply = fake._next_reply()
    if not await begin(reply, False, receive, send, send_error):
        return
    slot = 1 if fmt == "base64" else 0
    items = [
        {"object": "embedding", "index": i, "embedding": _embedding(text, dims)[slot]} for i, text in enumerate(inputs)
    ]
    prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else tokens
    obj: dict[str, Any] = {"object": "list", "data": items, "model": reply.model or model}
    if reply.usage:
        obj["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    await send_bytes(send, 200, orjson.dumps(obj), reply.headers)
