"""Output guards on a stream: events are held back only while a match may still be growing.

Each channel's text (a choice's content, a tool call's arguments ...) is scanned as it arrives,
from where the last scan left off plus a little context. Text is released as soon as no match can
include it: a guard reports where the earliest match still open at the end of the text begins, in
normalised characters (`Guard.pending`: for pattern-based kinds the patterns' partial matches,
for the others the last `reach` characters), an encoded run still open is held from its start
(`holdback.py`), and a finding whose checks read text that has not come yet waits for it; the
hold-back point is mapped back to the characters as sent, so padding with invisible characters
cannot walk a match out of view. A match is therefore always found while all of it is still
held: a block stops the stream before any of it reaches the client, a redaction rewrites the held
events. A guard without a bounded reach holds the whole answer. A channel holding more than
`MAX_HELD_CHARS` undecided characters stops the stream (fail closed). On a block `drain` raises
`Blocked`: the relay then ends the stream with an error event and cancels the upstream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.dialects.openai_texts import chunk_texts
from sluicegate.dialects.paths import Path, set_path
from sluicegate.guardrails.engine import (
    Blocked,
    CallGuards,
    GuardRecord,
    TextScan,
    placeholder,
    refuse,
    scan_texts,
)
from sluicegate.guardrails.holdback import index, open_run, pending, position

if TYPE_CHECKING:
    from sluicegate.guardrails.base import Finding, Guard

#: the most characters of one channel held back undecided (a match that keeps growing, a guard
#: that needs the whole answer); past it the stream is stopped as blocked
MAX_HELD_CHARS = 1 << 20
#: normalised characters before the hold-back point that a scan reads again, as context for
#: the checks that look back (a reference number's label, a version's `v`: 40 at most)
CONTEXT_CHARS = 48
#: that context in characters as sent, at most (invisible padding cannot make rescans costly)
MAX_CONTEXT_RAW = 1024
#: while a channel holds more than `RESCAN_FROM` characters (a long PEM block or base64 run still
#: open), it is scanned again only once it has grown by this share of what it holds: rescans of
#: held text then add up to a few times its length, however small the events (nothing is released
#: meanwhile, so nothing is missed; release just comes a little later)
RESCAN_FROM = 1024
RESCAN_SHARE = 0.25


@dataclass(slots=True)
class _Piece:
    """A piece of a channel's text carried by one held event, and where it sits in the event."""

    channel: str
    path: Path
    #: offset of the piece in the channel's text (as sent, redactions applied)
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


@dataclass(slots=True)
class _Channel:
    """The text of one channel: offsets are in its characters as sent, from its first one."""

    #: the text from `base` on (older text is released and out of any scan's context)
    text: str = ""
    base: int = 0
    #: pieces added since the last scan, not yet in `text`
    fresh: list[str] = field(default_factory=list)
    #: the length of the channel's text so far
    end: int = 0
    #: text before this offset may be released; a scan does not act on findings before it again
    hold: int = 0
    #: where the next scan begins (`hold` less some context)
    scan_from: int = 0
    #: the next scan waits until the text reaches this length (see `RESCAN_SHARE`)
    next_scan: int = 0


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
        #: None: some guard needs the whole answer, which is held until the end
        self.window = window
        #: (channel, path, text) an event adds; default: an OpenAI (neutral) chunk's
        self._texts = texts or chunk_texts
        self._channels: dict[str, _Channel] = {}
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
            for name, path, piece in self._texts(data):
                channel = self._channels.get(name)
                if channel is None:
                    channel = self._channels[name] = _Channel()
                held.pieces.append(_Piece(name, path, channel.end, piece))
                channel.fresh.append(piece)
                channel.end += len(piece)
        self._held.append(held)

    async def drain(self) -> list[bytes]:
        """Scan the text added since the last scan (one pass per channel for many events) and
        return the events that may go to the client now."""
        return [held.encode() for held in await self._drain()]

    async def drain_chunks(self) -> list[dict[str, Any]]:
        """`drain` for neutral chunks."""
        return [held.chunk() for held in await self._drain()]

    async def _drain(self) -> list[_Held]:
        for name, channel in self._channels.items():
            if self.window is not None and channel.fresh and channel.end >= channel.next_scan:
                await self._scan(name, final=False)
            if channel.end - channel.hold > MAX_HELD_CHARS:
                self.state.records.append(GuardRecord("", "stream", "block", "output", name, "held_limit"))
                raise Blocked(
                    f"The answer held more than {MAX_HELD_CHARS} characters the output guards could not decide on",
                    rule="guards",
                )
        return self._release() if self.window is not None else []

    async def finish(self) -> list[bytes]:
        """End of the answer: scan what is left and release every held event."""
        return [held.encode() for held in await self._finish()]

    async def finish_chunks(self) -> list[dict[str, Any]]:
        """`finish` for neutral chunks."""
        return [held.chunk() for held in await self._finish()]

    async def _finish(self) -> list[_Held]:
        for name in list(self._channels):
            await self._scan(name, final=True)
        out = list(self._held)
        self._held.clear()
        return out

    async def _scan(self, name: str, *, final: bool) -> None:
        channel = self._channels[name]
        if channel.fresh:
            channel.text += "".join(channel.fresh)
            channel.fresh.clear()
        start = channel.scan_from
        text = channel.text[start - channel.base :]
        decided = channel.hold - start  # findings before it were acted on by an earlier scan
        if not text or (final and decided >= len(text)):
            return
        before = len(self.state.records)
        try:
            scan = await scan_texts(self.state, self.guards, [text], "output", block=False)
        finally:
            for record in self.state.records[before:]:
                if record.part.isdigit():
                    record.part = name
        # Offsets from here on are in the scanned text as sent.
        hold = len(text)
        acted: list[tuple[Guard, Finding]] = []
        for guard in self.guards:
            # Findings are in the form of the text the guard read; remote guards read it as sent.
            seen = scan.norms[None if guard.remote else guard.casefold][0]
            # Findings before the decided point were acted on already (and are seen again as
            # context); one that reaches past it is new.
            found = [(f, seen.span(f.start, f.end)) for g, f in scan.hits if g is guard]
            found = [(f, (s, e)) for f, (s, e) in found if e > decided]
            if final:
                acted.extend((guard, f) for f, _ in found)
                continue
            at = pending(guard, scan, text, decided)
            # A finding closer to the end than its checks read, or overlapping an open match,
            # is not final: more text may extend, exempt or invalidate it. Hold it.
            settled = position(seen, len(seen.text) - guard.right_context)
            limit = settled if at is None else min(at, settled)
            for finding, (s, e) in found:
                if e > limit:
                    at = s if at is None else min(at, s)
                else:
                    acted.append((guard, finding))
            if at is not None:
                hold = min(hold, at)
        if not final:
            runs = open_run(scan, text, decided, self.guards)
            if runs is not None:
                hold = min(hold, runs)
        shifts = self._act(name, acted, scan, start)
        self._advance(channel, scan, start, max(hold, decided), shifts, final)

    def _act(
        self, name: str, acted: list[tuple[Guard, Finding]], scan: TextScan, start: int
    ) -> list[tuple[int, int, int]]:
        """Block on a final finding of a blocking guard; otherwise record and redact. Returns the
        redacted spans (start, end, change in length), in text order."""
        for guard in self.guards:
            blocks = [f for g, f in acted if g is guard and guard.action == "block"]
            if blocks:
                before = len(self.state.records)
                try:
                    refuse(self.state, guard, blocks, "output")
                finally:
                    for record in self.state.records[before:]:
                        record.part = name
        redactions: list[tuple[int, int, str]] = []
        for guard, finding in acted:
            norm = scan.norms[None if guard.remote else guard.casefold][0]
            s, e = norm.span(finding.start, finding.end)
            key = (guard.name, name, start + s, finding.label)
            if key in self._seen:
                continue
            self._seen.add(key)
            self.state.records.append(GuardRecord(guard.name, guard.kind, guard.action, "output", name, finding.label))
            if guard.action == "redact":
                redactions.append((start + s, start + e, finding.label))
        # Later spans first, so earlier offsets stay valid while the text is rewritten.
        shifts = []
        taken_from = None
        for s, e, label in sorted(set(redactions), reverse=True):
            if taken_from is not None and e > taken_from:
                continue  # overlaps a span redacted already
            delta = self._redact(name, s, e, label)
            if delta is not None:
                shifts.append((s, e, delta))
                taken_from = s
        return shifts[::-1]

    def _advance(
        self,
        channel: _Channel,
        scan: TextScan,
        start: int,
        hold: int,
        shifts: list[tuple[int, int, int]],
        final: bool,
    ) -> None:
        """Move the hold-back point (and the next scan's start) forward; drop text out of reach.
        `hold` is in the scanned text, before this scan's redactions (`shifts`)."""
        if final:
            channel.hold = channel.scan_from = channel.end
            channel.text, channel.base = "", channel.end
            return
        norms = scan.norms.get(False) or scan.norms.get(True)
        if norms:
            norm = norms[0]
            at = max(0, index(norm, hold) - CONTEXT_CHARS)
            context = norm.span(at, at)[0]
        else:
            context = max(0, hold - CONTEXT_CHARS)
        channel.hold = max(channel.hold, _shifted(start + hold, shifts))
        scan_from = max(channel.scan_from, _shifted(start + context, shifts), channel.hold - MAX_CONTEXT_RAW)
        channel.scan_from = min(scan_from, channel.hold)
        cut = channel.scan_from - channel.base
        if cut > 0:
            channel.text = channel.text[cut:]
            channel.base = channel.scan_from
        held = channel.end - channel.hold
        channel.next_scan = channel.end + (int(held * RESCAN_SHARE) if held > RESCAN_FROM else 0)

    def _redact(self, name: str, s: int, e: int, label: str) -> int | None:
        """Replace [s, e) of the channel's text and held pieces with a placeholder; the change in length."""
        channel = self._channels[name]
        text = channel.text
        lo, hi = s - channel.base, e - channel.base
        if s >= e or lo < 0 or hi > len(text):
            return None
        token = placeholder(self.state, label, text[lo:hi])
        channel.text = text[:lo] + token + text[hi:]
        delta = len(token) - (e - s)
        channel.end += delta
        self._seen = {(g, c, at + delta if c == name and at >= e else at, label_) for g, c, at, label_ in self._seen}
        # Held pieces of a channel are its text's tail, in order: rewrite the ones the span
        # touches (the first gets the placeholder), then lay them out again from where they began.
        pieces = [p for held in self._held for p in held.pieces if p.channel == name]
        if not pieces or pieces[0].start > s:
            return delta  # cannot happen: a match is found while all of it is held
        placed = False
        for held in self._held:
            for piece in held.pieces:
                if piece.channel != name:
                    continue
                end = piece.start + len(piece.text)
                if end <= s or piece.start >= e:
                    continue
                a, b = max(s, piece.start) - piece.start, min(e, end) - piece.start
                piece.text = piece.text[:a] + ("" if placed else token) + piece.text[b:]
                placed = True
                held.dirty = True
        pos = pieces[0].start
        for piece in pieces:
            piece.start = pos
            pos += len(piece.text)
        return delta

    def _release(self) -> list[_Held]:
        out = []
        while self._held:
            held = self._held[0]
            if any(p.start + len(p.text) > self._channels[p.channel].hold for p in held.pieces):
                break
            out.append(held)
            self._held.popleft()
        return out


def _shifted(offset: int, shifts: Sequence[tuple[int, int, int]]) -> int:
    """An offset in a text before redactions (spans in text order) as it is after them; inside
    a redacted span it is the span's start."""
    change = 0
    for s, e, delta in shifts:
        if offset >= e:
            change += delta
        elif offset > s:
            return s + change
    return offset + change
