"""Output guards on a stream: a bounded hold-back window, scanned as the answer arrives.

Events are held until the text they carry is more than `window` characters (the largest reach of
the output guards) behind the newest text, so a match can still be stopped before any of it
reaches the client; the first tokens wait for at most `window` characters. A guard without a
bounded reach holds the whole answer. On a match `feed` raises `Blocked`: the relay then ends
the stream with an error event and cancels the upstream.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.guardrails.engine import Blocked, CallGuards, GuardRecord, run_guards

if TYPE_CHECKING:
    from sluicegate.guardrails.base import Guard


def _delta_texts(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(channel, text) pairs an OpenAI stream chunk adds: content, refusal, reasoning, tool calls."""
    out: list[tuple[str, str]] = []
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0)
        text = choice.get("text")
        if isinstance(text, str) and text:
            out.append((f"{index}.text", text))
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        for key in ("content", "refusal", "reasoning_content"):
            value = delta.get(key)
            if isinstance(value, str) and value:
                out.append((f"{index}.{key}", value))
        for call in delta.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                for key in ("name", "arguments"):
                    value = fn.get(key)
                    if isinstance(value, str) and value:
                        out.append((f"{index}.tool_calls[{call.get('index', 0)}].{key}", value))
    return out


class StreamGuard:
    """Holds back and scans the events of one streamed answer."""

    def __init__(self, state: CallGuards, guards: tuple[Guard, ...], window: int | None) -> None:
        self.state = state
        self.guards = guards
        self.window = window
        self._text: dict[str, str] = {}
        self._scanned: dict[str, int] = {}
        #: held events, each with the text end it needs scanned past `window` before release
        self._held: deque[tuple[bytes, dict[str, int]]] = deque()
        self._seen: set[tuple[str, str, int, str]] = set()

    async def feed(self, event: bytes) -> list[bytes]:
        """Take one SSE event; return the events that may go to the client now."""
        needs: dict[str, int] = {}
        if event.startswith(b"data: {"):
            try:
                data = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                data = None
            if isinstance(data, dict):
                for channel, piece in _delta_texts(data):
                    text = self._text.get(channel, "") + piece
                    self._text[channel] = text
                    needs[channel] = len(text)
        self._held.append((event, needs))
        if self.window is None:
            return []
        for channel in needs:
            await self._scan(channel, final=False)
        return self._release()

    async def finish(self) -> list[bytes]:
        """End of the answer: scan what is left and release every held event."""
        for channel in list(self._text):
            await self._scan(channel, final=True)
        out = [event for event, _ in self._held]
        self._held.clear()
        return out

    async def _scan(self, channel: str, *, final: bool) -> None:
        text = self._text[channel]
        done = self._scanned.get(channel, 0)
        window = self.window
        if window is None:
            start = 0
        else:
            # Rescan the last `window` characters: a match may straddle the previous scan's end.
            start = max(0, done - window)
        if len(text) <= done and not final:
            return
        region = text[start:]
        before = len(self.state.records)
        try:
            hits, _ = await run_guards(self.state, self.guards, [region], "output")
        except Blocked:
            for record in self.state.records[before:]:
                record.part = channel
            raise
        for guard, finding in hits:
            key = (guard.name, channel, start + finding.start, finding.label)
            if key in self._seen:
                continue
            self._seen.add(key)
            # `redact` on a stream is applied as a block: the text cannot be recalled once sent, and
            # the held window is rewritten nowhere else; a block is the safe reading of the rule.
            action = "flag" if guard.action == "flag" else "block"
            self.state.records.append(GuardRecord(guard.name, guard.kind, action, "output", channel, finding.label))
            if action == "block":
                raise Blocked(
                    f"Blocked by guard '{guard.name}': the output contains {finding.label}",
                    rule=f"guards.{guard.name}",
                )
        self._scanned[channel] = len(text)

    def _release(self) -> list[bytes]:
        window = self.window or 0
        out = []
        while self._held:
            event, needs = self._held[0]
            if any(end > self._scanned.get(ch, 0) - window for ch, end in needs.items()):
                break
            out.append(event)
            self._held.popleft()
        return out
