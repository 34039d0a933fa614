"""Stream framings upstreams use: server-sent events and newline-delimited JSON.

Both parsers take bytes as they arrive, split anywhere, and return the complete frames. Each
looks for the end of a line only in the bytes that just arrived (a stream that never ends a line
costs linear time, not quadratic) and bounds the size of one frame: past `max_event_bytes` the
stream is refused with `EventTooLarge`. `SSEDecoder` is the base of every provider decoder that
reads SSE. (AWS event-stream framing is botocore's own parser, used by the Bedrock provider.)
"""

from __future__ import annotations

from typing import Any

import orjson

from sluicegate.errors import UpstreamError
from sluicegate.providers.base import StreamDecoder

#: default bound of one event (or NDJSON line); `server.max_stream_event_bytes` sets it per config
MAX_EVENT_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class InvalidStream(UpstreamError):
    """The upstream sent something its protocol does not allow: not JSON, not an object, too big."""

    code = "upstream_invalid_response"


class EventTooLarge(InvalidStream):
    """One stream event is larger than the configured bound."""


def _too_large(provider: str, limit: int) -> EventTooLarge:
    return EventTooLarge(f"provider '{provider}' sent a stream event larger than {limit} bytes; the stream was cut")


class SSEParser:
    """Server-sent events (https://html.spec.whatwg.org/multipage/server-sent-events.html).

    `feed` returns `(event name or None, data)` for each complete event: `data:` lines joined by
    `\\n`, one optional space after the colon removed, lines ended by CR, LF or CRLF, a leading
    BOM dropped. Comments, `id:`, `retry:` and unknown fields are read and not returned (the last
    id is kept in `last_id`, comments counted in `comments`); an event without a `data:` line is
    not dispatched, as the spec says.
    """

    __slots__ = (
        "_bom",
        "_cr",
        "_data",
        "_held",
        "_name",
        "_parts",
        "_size",
        "comments",
        "last_id",
        "limit",
        "provider",
    )

    def __init__(self, provider: str = "upstream", max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.provider = provider
        self.limit = max_event_bytes
        #: bytes of the line not ended yet (kept as pieces: joined once the line ends), and their size
        self._parts: list[bytes] = []
        self._held = 0
        #: bytes of the data lines of the event being read
        self._size = 0
        self._name: str | None = None
        self._data: list[bytes] = []
        #: the last byte seen was a CR: a LF that follows belongs to the same line end
        self._cr = False
        #: the stream's first bytes are still to be checked for a BOM
        self._bom = True
        self.last_id: bytes | None = None
        #: comment lines read so far (keep-alives: a relay may send its own in their place)
        self.comments = 0

    def feed(self, data: bytes) -> list[tuple[str | None, bytes]]:
        # The common read: one whole `data: ...` event, nothing pending (no per-line work).
        if (
            data[:6] == b"data: "
            and data[-2:] == b"\n\n"
            and data.find(b"\n") == len(data) - 2
            and not (self._parts or self._data or self._bom or self._cr)
            and b"\r" not in data
        ):
            if len(data) - 8 > self.limit:
                raise _too_large(self.provider, self.limit)
            return [(None, data[6:-2])]
        events: list[tuple[str | None, bytes]] = []
        if self._bom:
            data = self._strip_bom(data)
            if not data:
                return events
        if self._cr:
            self._cr = False
            if data[:1] == b"\n":
                data = data[1:]
        if b"\r" in data:
            # Every line end becomes LF; a CR at the very end may be the first half of a CRLF.
            self._cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = data.rfind(b"\n")
        if end < 0:
            self._hold(data)
            return events
        lines = data[:end].split(b"\n")
        if self._parts:
            self._parts.append(lines[0])
            lines[0] = b"".join(self._parts)
            self._parts = []
            self._held = 0
        for line in lines:
            # The two lines of nearly every event inline (a call per line costs as much as the rest).
            if not line:
                if self._data:
                    data_lines = self._data
                    events.append((self._name, data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)))
                    self._data = []
                self._name = None
                self._size = 0
            elif line[:6] == b"data: ":
                self._add_data(line[6:])
            else:
                self._line(line, events)
        rest = data[end + 1 :]
        if rest:
            self._hold(rest)
        return events

    def _hold(self, piece: bytes) -> None:
        self._parts.append(piece)
        self._held += len(piece)
        if self._size + self._held > self.limit:
            raise _too_large(self.provider, self.limit)

    def _strip_bom(self, data: bytes) -> bytes:
        head = b"".join(self._parts) + data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._parts = [head]  # too short to tell yet
            return b""
        self._parts = []
        self._bom = False
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _line(self, line: bytes, events: list[tuple[str | None, bytes]]) -> None:
        """A line other than a blank one or `data: ...`."""
        if line[:5] == b"data:":
            self._add_data(line[6:] if line[5:6] == b" " else line[5:])
            return
        if line[:1] == b":":
            self.comments += 1  # a comment (a keep-alive)
            return
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._add_data(value)  # `data` alone: an empty data line
        elif field == b"event":
            self._name = value.decode("utf-8", "replace")
        elif field == b"id":
            if b"\0" not in value:
                self.last_id = value
        # `retry:` and unknown fields change nothing the gateway relays

    def _add_data(self, value: bytes) -> None:
        self._data.append(value)
        self._size += len(value) + 1
        if self._size > self.limit:
            raise _too_large(self.provider, self.limit)

    @property
    def pending(self) -> bool:
        """Whether part of an event arrived that no blank line ended yet."""
        return bool(self._parts or self._data)


def event_json(provider: str, data: bytes) -> dict[str, Any]:
    """The JSON object in an event's data, or an `InvalidStream` saying the provider sent garbage
    (not JSON, invalid UTF-8, or JSON that is not an object)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise InvalidStream(f"provider '{provider}' sent a stream event that is not JSON") from None
    if not isinstance(obj, dict):
        raise InvalidStream(f"provider '{provider}' sent a stream event that is not a JSON object")
    return obj


class SSEDecoder(StreamDecoder):
    """A stream decoder for a protocol framed as SSE whose events carry JSON objects.

    `feed` parses the bytes into events and each event's data into an object, then hands it to
    `event`; a relay that parsed an event already (to pass it through) calls `event` directly.
    Events with empty data are skipped; events after the end of the stream are ignored.
    """

    def __init__(self, provider: str, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.provider = provider
        self.sse = SSEParser(provider, max_event_bytes)
        self.done = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, payload in self.sse.feed(data):
            if self.done:
                break
            if self.is_end(payload):
                self.done = True
                break
            if not payload.strip():
                continue  # an empty event carries nothing (a keep-alive)
            out.extend(self.event(name, event_json(self.provider, payload)))
        return out

    def is_end(self, data: bytes) -> bool:
        """Whether an event's raw data is the protocol's end marker (OpenAI's `[DONE]`)."""
        return False

    def event(self, name: str | None, data: dict[str, Any]) -> list[dict[str, Any]]:
        """Neutral chunks of one parsed event (raises the upstream's own reported errors)."""
        raise NotImplementedError


class NDJSONParser:
    """Newline-delimited JSON (one object per line): `feed` returns each complete line, parsed."""

    __slots__ = ("_parts", "_size", "limit", "provider")

    def __init__(self, provider: str, max_line_bytes: int = MAX_EVENT_BYTES) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.provider = provider
        self.limit = max_line_bytes

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        end = data.rfind(b"\n")
        if end < 0:
            self._hold(data)
            return []
        lines = data[:end].split(b"\n")
        if self._parts:
            self._parts.append(lines[0])
            lines[0] = b"".join(self._parts)
            self._parts = []
            self._size = 0
        out = [obj for line in lines if (obj := self._parse(line)) is not None]
        rest = data[end + 1 :]
        if rest:
            self._hold(rest)
        return out

    def _hold(self, piece: bytes) -> None:
        self._parts.append(piece)
        self._size += len(piece)
        if self._size > self.limit:
            raise _too_large(self.provider, self.limit)

    def close(self) -> list[dict[str, Any]]:
        rest = b"".join(self._parts)
        self._parts = []
        self._size = 0
        obj = self._parse(rest)
        return [obj] if obj is not None else []

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        if len(line) > self.limit:
            raise _too_large(self.provider, self.limit)
        line = line.strip()
        if not line:
            return None
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise InvalidStream(f"provider '{self.provider}' sent a stream line that is not JSON") from None
        if not isinstance(obj, dict):
            raise InvalidStream(f"provider '{self.provider}' sent a stream line that is not a JSON object")
        return obj
