"""Output guards on a stream: a bounded hold-back window, scanned as the answer arrives.

Events are held until the text they carry is more than `window` characters (the largest reach of
the output guards) behind the newest text, so a match is always found while all of it is still
held: a block stops the stream before any of it reaches the client, a redaction rewrites the held
events. The first tokens wait for at most `window` characters; a guard without a bounded reach
holds the whole answer. On a block `feed` raises `Blocked`: the relay then ends the stream with
an error event and cancels the upstream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.dialects.openai_texts import chunk_texts
from sluicegate.dialects.paths import Path, set_path
from sluicegate.guardrails.engine import Blocked, CallGuards, GuardRecord, placeholder, run_guards

if TYPE_CHECKING:
    from sluicegate.guardrails.base import Guard


@dataclass(slots=True)
class _Piece:
    """A piece of a channel's text carried by one held event, and where it sits in the event."""

    channel: str
    path: Path
    start: int
    text: str


@dataclass(slots=True)
class _Held:
    """An event not yet sent; `data` is kept to rewrite it when a redaction touches it."""

    raw: bytes
    data: dict[str, Any] | None
    pieces: list[_Piece] = field(default_factory=list)
    dirty: bool = False

    def encode(self) -> bytes:
        if not self.dirty or self.data is None:
            return self.raw
        # Lines before `data:` (an `event:` name) stay as they were.
        head = self.raw[: max(0, self.raw.find(b"data:"))]
        return head + b"data: " + orjson.dumps(self.chunk()) + b"\n\n"

    def chunk(self) -> dict[str, Any]:
        """The event's data (a neutral chunk), with the redactions that touched it applied."""
        assert self.data is not None
        if self.dirty:
            for piece in self.pieces:
                set_path(self.data, piece.path, piece.text)
            self.dirty = False
        return self.data


class StreamGuard:
    """Holds back, scans and (for `redact`) rewrites the events of one streamed answer."""

    def __init__(
        self,
        state: CallGuards,
        guards: tuple[Guard, ...],
        window: int | None,
        texts: Callable[[dict[str, Any]], list[tuple[str, Path, str]]] | None = None,
    ) -> None:
        self.state = state
        self.guards = guards
        self.window = window
        #: (channel, path, text) an event adds; default: an OpenAI (neutral) chunk's
        self._texts = texts or chunk_texts
        self._text: dict[str, str] = {}
        self._scanned: dict[str, int] = {}
        self._held: deque[_Held] = deque()
        self._seen: set[tuple[str, str, int, str]] = set()

    async def feed(self, event: bytes) -> list[bytes]:
        """Take one SSE event; return the events that may go to the client now."""
        self.add(event)
        return await self.drain()

    def add(self, event: bytes) -> None:
        """Hold one SSE event without scanning yet (`drain` scans what arrived since)."""
        data = None
        if event.startswith(b"data: {"):
            try:
                data = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                data = None
        self._hold(event, data if isinstance(data, dict) else None)

    def add_chunk(self, chunk: dict[str, Any]) -> None:
        """Hold one neutral chunk (a translated stream) without scanning yet."""
        self._hold(b"", chunk)

    def add_parsed(self, event: bytes, data: dict[str, Any] | None) -> None:
        """Hold one event whose data the caller parsed already (another protocol's stream)."""
        self._hold(event, data)

    def _hold(self, event: bytes, data: dict[str, Any] | None) -> None:
        held = _Held(event, data)
        if data is not None:
            for channel, path, piece in self._texts(data):
                text = self._text.get(channel, "")
                held.pieces.append(_Piece(channel, path, len(text), piece))
                self._text[channel] = text + piece
        self._held.append(held)

    async def drain(self) -> list[bytes]:
        """Scan the text added since the last scan (one pass per channel for many events) and
        return the events that may go to the client now."""
        return [held.encode() for held in await self._drain()]

    async def drain_chunks(self) -> list[dict[str, Any]]:
        """`drain` for neutral chunks."""
        return [held.chunk() for held in await self._drain()]

    async def _drain(self) -> list[_Held]:
        if self.window is None:
            return []
        for channel, text in self._text.items():
            if len(text) > self._scanned.get(channel, 0):
                await self._scan(channel, final=False)
        return self._release()

    async def finish(self) -> list[bytes]:
        """End of the answer: scan what is left and release every held event."""
        return [held.encode() for held in await self._finish()]

    async def finish_chunks(self) -> list[dict[str, Any]]:
        """`finish` for neutral chunks."""
        return [held.chunk() for held in await self._finish()]

    async def _finish(self) -> list[_Held]:
        for channel in list(self._text):
            await self._scan(channel, final=True)
        out = list(self._held)
        self._held.clear()
        return out

    async def _scan(self, channel: str, *, final: bool) -> None:
        text = self._text[channel]
        done = self._scanned.get(channel, 0)
        if len(text) <= done and not final:
            return
        # Rescan the last `window` characters: a match may straddle the previous scan's end.
        start = 0 if self.window is None else max(0, done - self.window)
        before = len(self.state.records)
        try:
            hits, norms = await run_guards(self.state, self.guards, [text[start:]], "output")
        except Blocked:
            for record in self.state.records[before:]:
                record.part = channel
            raise
        redactions: list[tuple[int, int, str]] = []
        for guard, finding in hits:
            variant = None if guard.remote else guard.casefold
            s, e = norms[variant][0].span(finding.start, finding.end)
            key = (guard.name, channel, start + s, finding.label)
            if key in self._seen:
                continue
            self._seen.add(key)
            self.state.records.append(
                GuardRecord(guard.name, guard.kind, guard.action, "output", channel, finding.label)
            )
            if guard.action == "redact":
                redactions.append((start + s, start + e, finding.label))
        # Later spans first, so earlier offsets stay valid while the text is rewritten.
        for s, e, label in sorted(redactions, reverse=True):
            self._redact(channel, s, e, label)
        self._scanned[channel] = len(self._text[channel])

    def _redact(self, channel: str, s: int, e: int, label: str) -> None:
        text = self._text[channel]
        if s >= e or e > len(text):
            return
        token = placeholder(self.state, label, text[s:e])
        self._text[channel] = text[:s] + token + text[e:]
        # Held pieces of a channel are its text's tail, in order: rewrite the ones the span
        # touches (the first gets the placeholder), then lay them out again from where they began.
        pieces = [p for held in self._held for p in held.pieces if p.channel == channel]
        if not pieces or pieces[0].start > s:
            return  # cannot happen while window >= reach: the match would have been released
        placed = False
        for held in self._held:
            for piece in held.pieces:
                if piece.channel != channel:
                    continue
                end = piece.start + len(piece.text)
                if end <= s or piece.start >= e:
                    continue
                lo, hi = max(s, piece.start) - piece.start, min(e, end) - piece.start
                piece.text = piece.text[:lo] + ("" if placed else token) + piece.text[hi:]
                placed = True
                held.dirty = True
        pos = pieces[0].start
        for piece in pieces:
            piece.start = pos
            pos += len(piece.text)

    def _release(self) -> list[_Held]:
        window = self.window or 0
        out = []
        while self._held:
            held = self._held[0]
            if any(p.start + len(p.text) > self._scanned.get(p.channel, 0) - window for p in held.pieces):
                break
            out.append(held)
            self._held.popleft()
        return out
