"""The request body: read within its size limit and deadline, then decoded per its `Content-Encoding`.

`server.max_body_bytes` bounds the bytes received and again the decoded body, which may also be
at most `server.max_decoded_ratio` times the bytes received (or 64 KiB): a small compressed body cannot make
the gateway inflate a large one, and decoding stops at the bound, not after. gzip (`x-gzip`, one
member or several), deflate (zlib-wrapped as HTTP says, or raw as some clients send it) and
`identity` are decoded, the codings undone from the last listed; any other coding is a 415.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import TYPE_CHECKING

from sluicegate.errors import BadRequest, BodyTooLarge, RequestTimeout, UnsupportedEncoding

if TYPE_CHECKING:
    from sluicegate.config.model import ServerConfig
    from sluicegate.edge.protocol import EdgeRequest
    from sluicegate.types import Receive

#: the codings decoded, by their name in `Content-Encoding` (lower case)
DECODED = ("gzip", "x-gzip", "deflate", "identity")
#: a body may always decode to this size, whatever its ratio: that costs next to nothing
RATIO_FREE_BYTES = 64 * 1024
_GZIP = 16 + zlib.MAX_WBITS
_ZLIB = zlib.MAX_WBITS
_RAW = -zlib.MAX_WBITS


class ClientGone(Exception):
    """The client disconnected before the gateway answered."""


async def read_body(
    receive: Receive, server: ServerConfig, headers: dict[bytes, bytes], edge: EdgeRequest | None = None
) -> bytes:
    """The whole request body, decoded; 413 past the limits, 415 for a coding not decoded, 408
    past the body deadline (kept by the edge protocol, which says so on `edge`, at no cost per
    request; under another server, by a timer here)."""
    coding = headers.get(b"content-encoding")
    codings = _codings(coding) if coding is not None else []
    limit = server.max_body_bytes
    if edge is not None:
        raw = await _receive(receive, limit, headers.get(b"content-length"), edge)
    else:
        try:
            async with asyncio.timeout(server.body_timeout_s):
                raw = await _receive(receive, limit, headers.get(b"content-length"), None)
        except TimeoutError:
            raise _timed_out(server.body_timeout_s) from None
    if not codings:
        return raw
    return decode(raw, codings, limit, server.max_decoded_ratio)


def _timed_out(seconds: float) -> RequestTimeout:
    return RequestTimeout(f"The request body did not arrive within {seconds:g} s")


def _codings(header: bytes) -> list[str]:
    """The codings a `Content-Encoding` value lists, checked to be ones the gateway decodes."""
    codings = [c.strip().lower() for c in header.decode("latin-1").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    for coding in codings:
        if coding not in DECODED:
            raise UnsupportedEncoding(
                f"The request body's Content-Encoding '{coding[:40]}' is not supported; "
                "send it uncompressed, or with gzip or deflate",
            )
    return codings


def decode(raw: bytes, codings: list[str], limit: int, ratio: float) -> bytes:
    """Undo `codings` (gzip, deflate) from the last; the result is at most `limit` bytes and
    `ratio` times the size of `raw`, or `RATIO_FREE_BYTES` (413 past either)."""
    bound = min(limit, max(int(len(raw) * ratio), RATIO_FREE_BYTES))
    data = raw
    for coding in reversed(codings):
        if coding == "deflate":
            zlib_wrapped = len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            data = _inflate(data, _ZLIB if zlib_wrapped else _RAW, bound, coding)
        else:
            data = _inflate(data, _GZIP, bound, coding)
    return data


def _inflate(data: bytes, wbits: int, bound: int, coding: str) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            # Never more than one byte past the bound, however much the input expands.
            part = inflater.decompress(data, bound - size + 1)
        except zlib.error:
            raise _invalid(coding) from None
        size += len(part)
        if size > bound:
            raise BodyTooLarge(
                f"The request body decodes to more than {bound} bytes (at most server.max_body_bytes, "
                "and server.max_decoded_ratio times its compressed size)"
            )
        if not inflater.eof:
            raise _invalid(coding)
        parts.append(part)
        data = inflater.unused_data
        # gzip bodies may hold several members back to back; nothing may follow a deflate stream.
        if not data:
            return b"".join(parts)
        if wbits != _GZIP:
            raise _invalid(coding)


def _invalid(coding: str) -> BadRequest:
    return BadRequest(
        f"The request body is not valid {coding} data, as its Content-Encoding says",
        code="invalid_content_encoding",
    )


async def _receive(receive: Receive, limit: int, content_length: bytes | None, edge: EdgeRequest | None) -> bytes:
    """The body as received, refusing (413) past `limit` bytes before reading more."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            declared = 0
        if declared > limit:
            raise BodyTooLarge(f"The request body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes")
        if not message.get("more_body"):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        if edge is not None and edge.body_expired is not None:
            raise _timed_out(edge.body_expired)
        chunks.append(chunk)
