"""Stream framings upstreams use: server-sent events and newline-delimited JSON.

Both parsers take bytes as they arrive, split anywhere, and return the complete frames. (AWS
event-stream framing is botocore's own parser, used by the Bedrock provider.)
"""

from __future__ import annotations

from typing import Any

import orjson

from sluicegate.errors import UpstreamError


class SSEParser:
    """Server-sent events (https://html.spec.whatwg.org/multipage/server-sent-events.html):
    `feed` returns (event name or None, data) of each complete event; comments are skipped."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[str | None, bytes]]:
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + data
        events: list[tuple[str | None, bytes]] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            event = _parse_event(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end + 2
        self._buffer = buffer[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return self._buffer


def _parse_event(block: bytes) -> tuple[str | None, bytes] | None:
    name: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    if not data and name is None:
        return None
    return name, b"\n".join(data)


class NDJSONParser:
    """Newline-delimited JSON (one object per line): `feed` returns each complete line, parsed."""

    __slots__ = ("_buffer", "provider")

    def __init__(self, provider: str) -> None:
        self._buffer = b""
        self.provider = provider

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buffer = self._buffer + data
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        return [obj for line in lines if (obj := self._parse(line)) is not None]

    def close(self) -> list[dict[str, Any]]:
        rest, self._buffer = self._buffer, b""
        obj = self._parse(rest)
        return [obj] if obj is not None else []

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        line = line.strip()
        if not line:
            return None
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"provider '{self.provider}' sent a stream line that is not JSON") from None
        if not isinstance(obj, dict):
            raise UpstreamError(f"provider '{self.provider}' sent a stream line that is not a JSON object")
        return obj


def event_json(provider: str, data: bytes) -> dict[str, Any]:
    """The JSON object in an event's data, or an `UpstreamError` saying the provider sent garbage."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"provider '{provider}' sent a stream event that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamError(f"provider '{provider}' sent a stream event that is not a JSON object")
    return obj
