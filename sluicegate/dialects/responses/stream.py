"""Neutral stream chunks as Responses streaming events (`ResponsesStreamEncoder`).

Part of the Responses dialect (`sluicegate.dialects.responses`); the closing `response.completed`
carries the same Response that `render.render_response` answers without streaming.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate.dialects.base import StreamEncoder
from sluicegate.dialects.responses.render import (
    content_part,
    echo,
    function_item,
    message_item,
    reasoning_item,
    render_usage,
    response_object,
    status_of,
    suffix,
)

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.errors import SluicegateError

_DELTA_EVENTS = {
    "output_text": "response.output_text.delta",
    "refusal": "response.refusal.delta",
    "reasoning_text": "response.reasoning_text.delta",
}
_DONE_EVENTS = {
    "output_text": "response.output_text.done",
    "refusal": "response.refusal.done",
    "reasoning_text": "response.reasoning_text.done",
}
_DONE_FIELDS = {"output_text": "text", "refusal": "refusal", "reasoning_text": "text"}


class _Item:
    """One output item being streamed."""

    __slots__ = ("call_id", "id", "index", "kind", "name", "parts", "status")

    def __init__(self, kind: str, id_: str, index: int, call_id: str = "", name: str = "") -> None:
        self.kind = kind  # reasoning | message | function_call
        self.id = id_
        self.index = index
        #: None while open, then "completed" or "incomplete"
        self.status: str | None = None
        #: content parts as [kind, text] (message: output_text | refusal; reasoning: reasoning_text);
        #: a function call keeps its arguments as the one part
        self.parts: list[list[str]] = [["arguments", ""]] if kind == "function_call" else []
        self.call_id = call_id
        self.name = name


def _at(item: _Item) -> dict[str, Any]:
    """Where an item's last content part sits, as its events say it."""
    return {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts) - 1}


class ResponsesStreamEncoder(StreamEncoder):
    """Neutral chunks as Responses streaming events: `event: <type>` + `data: {...}` each.

    Events: https://platform.openai.com/docs/api-reference/responses-streaming. Output items are
    opened as their first delta arrives (reasoning, message text or refusal, one function call per
    neutral tool index) and closed when another kind of output starts or at the end; `finish` sends
    `response.completed` (or `response.incomplete`) with the whole Response and its usage.
    """

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.seq = 0
        self.started = False
        self.suffix = suffix(call)
        self.echo = echo(call)
        self.model = call.model_requested or ""
        self.created = int(time.time())
        self.items: list[_Item] = []
        #: the open reasoning or message item
        self.current: _Item | None = None
        #: neutral tool-call index -> its function_call item
        self.tools: dict[int, _Item] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _event(self, out: list[bytes], kind: str, data: dict[str, Any]) -> None:
        payload = orjson.dumps({"type": kind, "sequence_number": self.seq, **data})
        self.seq += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n")

    def _snapshot(self, status: str, incomplete: dict[str, Any] | None = None) -> dict[str, Any]:
        done = status != "in_progress"
        return response_object(
            self.call,
            self.echo,
            model=self.model,
            created=self.created,
            status=status,
            output=[self._item_json(item) for item in self.items] if done else [],
            incomplete=incomplete,
            usage=render_usage(self.usage) if done else None,
        )

    def _start(self, out: list[bytes]) -> None:
        self.started = True
        self._event(out, "response.created", {"response": self._snapshot("in_progress")})
        self._event(out, "response.in_progress", {"response": self._snapshot("in_progress")})

    def encode(self, chunk: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if not self.started:
            model = chunk.get("model")
            if isinstance(model, str) and model:
                self.model = model
            self._start(out)
        if "usage" in chunk and isinstance(chunk["usage"], dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(out, delta)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _delta(self, out: list[bytes], delta: dict[str, Any]) -> None:
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            self._text(out, "reasoning", "reasoning_text", reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._text(out, "message", "output_text", content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._text(out, "message", "refusal", refusal)
        for tool_call in delta.get("tool_calls") or ():
            if isinstance(tool_call, dict):
                self._tool_delta(out, tool_call)

    def _open(self, out: list[bytes], kind: str, id_: str, call_id: str = "", name: str = "") -> _Item:
        item = _Item(kind, id_, len(self.items), call_id, name)
        self.items.append(item)
        self._event(out, "response.output_item.added", {"output_index": item.index, "item": self._item_json(item)})
        return item

    def _text(self, out: list[bytes], kind: str, part_kind: str, text: str) -> None:
        item = self.current
        if item is None or item.kind != kind:
            if item is not None:
                self._close(out, item)
            prefix = "rs" if kind == "reasoning" else "msg"
            n = sum(1 for i in self.items if i.kind == kind)
            item = self.current = self._open(out, kind, f"{prefix}_{self.suffix}" + (f"_{n}" if n else ""))
        if not item.parts or item.parts[-1][0] != part_kind:
            if item.parts:
                self._close_part(out, item)
            item.parts.append([part_kind, ""])
            self._event(out, "response.content_part.added", {**_at(item), "part": content_part(part_kind, "")})
        item.parts[-1][1] += text
        data: dict[str, Any] = {**_at(item), "delta": text}
        if part_kind == "output_text":
            data["logprobs"] = []
        self._event(out, _DELTA_EVENTS[part_kind], data)

    def _tool_delta(self, out: list[bytes], tool_call: dict[str, Any]) -> None:
        index = tool_call.get("index", 0)
        function = tool_call.get("function") or {}
        item = self.tools.get(index)
        if item is None:
            if self.current is not None:
                self._close(out, self.current)
                self.current = None
            n = len(self.tools)
            call_id = tool_call.get("id") or f"call_{self.suffix}_{n}"
            item = self._open(out, "function_call", f"fc_{self.suffix}_{n}", call_id, function.get("name") or "")
            self.tools[index] = item
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments and item.status is None:
            item.parts[0][1] += arguments
            self._event(
                out,
                "response.function_call_arguments.delta",
                {"item_id": item.id, "output_index": item.index, "delta": arguments},
            )

    def _close_part(self, out: list[bytes], item: _Item) -> None:
        kind, text = item.parts[-1]
        data: dict[str, Any] = {**_at(item), _DONE_FIELDS[kind]: text}
        if kind == "output_text":
            data["logprobs"] = []
        self._event(out, _DONE_EVENTS[kind], data)
        self._event(out, "response.content_part.done", {**_at(item), "part": content_part(kind, text)})

    def _close(self, out: list[bytes], item: _Item, status: str = "completed") -> None:
        if item.status is not None:
            return
        if item.kind == "function_call":
            self._event(
                out,
                "response.function_call_arguments.done",
                {"item_id": item.id, "output_index": item.index, "name": item.name, "arguments": item.parts[0][1]},
            )
        elif item.parts:
            self._close_part(out, item)
        item.status = status
        self._event(out, "response.output_item.done", {"output_index": item.index, "item": self._item_json(item)})

    def _item_json(self, item: _Item) -> dict[str, Any]:
        status = item.status or "in_progress"
        if item.kind == "function_call":
            arguments = item.parts[0][1] if item.status else ""
            return function_item(item.id, item.call_id, item.name, arguments, status)
        parts = [content_part(kind, text) for kind, text in item.parts] if item.status else []
        if item.kind == "reasoning":
            return reasoning_item(item.id, parts, status)
        return message_item(item.id, parts, status)

    def finish(self) -> bytes:
        out: list[bytes] = []
        if not self.started:
            self._start(out)
        status, incomplete = status_of(self.finish_reason)
        last = self.items[-1] if self.items else None
        for item in self.items:
            self._close(out, item, "incomplete" if status == "incomplete" and item is last else "completed")
        self.current = None
        kind = "response.completed" if status == "completed" else "response.incomplete"
        self._event(out, kind, {"response": self._snapshot(status, incomplete)})
        return b"".join(out)

    def error(self, error: SluicegateError) -> bytes:
        out: list[bytes] = []
        self._event(out, "error", {"code": error.code, "message": error.message, "param": error.param})
        return b"".join(out)
