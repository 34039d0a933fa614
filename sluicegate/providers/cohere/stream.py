"""Cohere stream: v2 chat SSE events -> neutral chunks (`CohereStreamDecoder`).

Part of `sluicegate.providers.cohere`; finish reasons and usage are read as `response.py` reads them.
"""

from __future__ import annotations

import time
from typing import Any

from sluicegate import neutral
from sluicegate.providers.base import json_error_message, reported_error
from sluicegate.providers.cohere.response import finish_reason, obj, usage_of
from sluicegate.providers.framing import MAX_EVENT_BYTES, SSEDecoder

#: tool calls one answer may index
MAX_TOOLS = 1024


class CohereStreamDecoder(SSEDecoder):
    """Cohere v2 SSE (https://docs.cohere.com/reference/chat-stream): each `data:` is a JSON event
    whose `type` names it; `message-end` carries the finish reason and usage and ends the stream."""

    def __init__(self, provider: str, model: str, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        super().__init__(provider, max_event_bytes)
        self.id = ""
        self.model = model
        self.created = int(time.time())
        self.started = False
        self.tools = 0

    def _chunk(self, delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
        return neutral.chunk(self.id, self.model, self.created, delta, finish)

    def _open(self, out: list[dict[str, Any]]) -> None:
        self.started = True
        out.append(self._chunk({"role": "assistant", "content": ""}))

    def event(self, name: str | None, event: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        kind = event.get("type") or name
        if kind == "error" or (isinstance(event.get("message"), str) and "delta" not in event):
            # An error the server hit mid-stream: `{"message": ...}` as its error bodies have it.
            raise reported_error(self.provider, None, json_error_message(event, ("message",), ("error",)))
        self._event(kind, event, out)
        return out

    def _event(self, kind: Any, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        delta = obj(event.get("delta"))
        message = obj(delta.get("message"))
        if kind == "message-start":
            self.id = str(event.get("id") or self.id)
            self._open(out)
            return
        if not self.started and kind != "message-end":
            self._open(out)  # Cohere always opens with message-start; be lenient if it did not
        if kind == "content-delta":
            content = obj(message.get("content"))
            if isinstance(content.get("thinking"), str) and content["thinking"]:
                out.append(self._chunk({"reasoning_content": content["thinking"]}))
            if isinstance(content.get("text"), str) and content["text"]:
                out.append(self._chunk({"content": content["text"]}))
        elif kind == "tool-plan-delta":
            plan = message.get("tool_plan")
            if isinstance(plan, str) and plan:
                out.append(self._chunk({"reasoning_content": plan}))
        elif kind == "tool-call-start":
            tc = obj(message.get("tool_calls"))
            fn = obj(tc.get("function"))
            index = self._tool_index(event)
            delta_call = neutral.tool_call_delta(
                index, id_=str(tc.get("id") or ""), name=str(fn.get("name") or ""), arguments=fn.get("arguments") or ""
            )
            out.append(self._chunk({"tool_calls": [delta_call]}))
        elif kind == "tool-call-delta":
            tc = obj(message.get("tool_calls"))
            fn = obj(tc.get("function"))
            arguments = fn.get("arguments")
            if isinstance(arguments, str) and arguments:
                at = _index(event.get("index"))
                index = at if at is not None else max(self.tools - 1, 0)
                out.append(self._chunk({"tool_calls": [neutral.tool_call_delta(index, arguments=arguments)]}))
        elif kind == "message-end":
            finish = finish_reason(self.provider, delta.get("finish_reason"), delta.get("error"))
            out.append(self._chunk(None, finish))
            usage = usage_of(delta.get("usage"), self.provider)
            if usage is not None:
                out.append(neutral.usage_chunk(self.id, self.model, self.created, usage))
            self.done = True
        # content-start/-end, tool-call-end, citation-start/-end, debug: nothing to relay

    def _tool_index(self, event: dict[str, Any]) -> int:
        index = _index(event.get("index"))
        if index is None:
            index = self.tools
        self.tools = max(self.tools, index + 1)
        return index


def _index(value: Any) -> int | None:
    """A tool-call index the upstream gave, when it is a small integer."""
    return value if type(value) is int and 0 <= value < MAX_TOOLS else None
