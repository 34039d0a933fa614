"""Neutral stream chunks as Anthropic Messages SSE events (`MessagesStreamEncoder`).

Part of the Anthropic dialect (`sluicegate.dialects.anthropic`); the message it streams matches
what `render.render_response` answers without streaming
(https://docs.anthropic.com/en/api/messages-streaming).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sluicegate.dialects.anthropic.bodies import sse_error, sse_event
from sluicegate.dialects.anthropic.render import message_id, render_usage, stop_reason, tool_id
from sluicegate.dialects.base import StreamEncoder

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.errors import SluicegateError


#: the content_block_start of a thinking or text block, before its first delta
_EMPTY_BLOCKS: dict[str, dict[str, Any]] = {
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
    "text": {"type": "text", "text": ""},
}


class MessagesStreamEncoder(StreamEncoder):
    """Neutral chunks as Anthropic SSE events: one content block open at a time, switching
    between thinking, text and each tool call; the stop reason and usage close the message."""

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.started = False
        #: "thinking" | "text" | "tool" of the open block, None when none is open
        self.open: str | None = None
        self.index = -1
        #: neutral tool-call index -> content block index
        self.tools: dict[int, int] = {}
        self.open_tool: int | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.id = "msg_unknown"
        self.model = call.model_requested or ""

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self.started = True
        self.id = message_id(chunk.get("id"))
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # known at the end: see message_delta
        }
        return sse_event(b"message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        self.open_tool = None
        return sse_event(b"content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.open = kind
        return out + sse_event(
            b"content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}
        )

    def _in(self, kind: str) -> bytes:
        """Opens a thinking or text block unless one of that kind is the open block."""
        if self.open == kind:
            return b""
        return self._open(kind, _EMPTY_BLOCKS[kind])

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        at = self.index if index is None else index
        return sse_event(b"content_block_delta", {"type": "content_block_delta", "index": at, "delta": delta})

    def encode(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self.started else self._start(chunk)
        if "usage" in chunk and isinstance(chunk["usage"], dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                out += self._in("thinking") + self._delta({"type": "thinking_delta", "thinking": reasoning})
            signature = delta.get("reasoning_signature")
            if isinstance(signature, str) and signature:
                out += self._in("thinking") + self._delta({"type": "signature_delta", "signature": signature})
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._in("text") + self._delta({"type": "text_delta", "text": text})
            for tool_call in delta.get("tool_calls") or ():
                out += self._tool_call(tool_call)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        return out

    def _tool_call(self, tool_call: dict[str, Any]) -> bytes:
        out = b""
        at = tool_call.get("index", 0)
        function = tool_call.get("function") or {}
        if at not in self.tools:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": tool_id(tool_call.get("id"), f"toolu_{self.call.request_id}_{at}"),
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._open("tool", block)
            self.tools[at] = self.index
            self.open_tool = at
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # an earlier tool call's late arguments go to its own block index
            out += self._delta({"type": "input_json_delta", "partial_json": arguments}, self.tools[at])
        return out

    def finish(self) -> bytes:
        out = b"" if self.started else self._start({})
        out += self._close()
        stop = stop_reason(self.finish_reason, bool(self.tools))
        usage = render_usage(self.usage) if self.usage is not None else {"output_tokens": 0}
        out += sse_event(
            b"message_delta",
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage},
        )
        return out + sse_event(b"message_stop", {"type": "message_stop"})

    def error(self, error: SluicegateError) -> bytes:
        return sse_error(error)
