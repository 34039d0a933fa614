"""Cache entries: a neutral answer as the model gave it, made while it passes and read back in
whichever form a hit needs.

An entry holds either the neutral completion (a complete answer) or the neutral chunks of a
stream, in the order and sizes the model streamed them, with the usage. A streamed request served
from a complete answer gets it as the chunks a stream of it has; a complete request served from
a stream gets the chunks put together. Each part is serialised as it is recorded (later stages may
change the objects the relay passes on: an encoder drops a field, a guard redacts), so the entry
is the answer as the upstream gave it, and a recording past its size bound stops at once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from sluicegate import neutral

if TYPE_CHECKING:
    from sluicegate.call import Call

#: the entry format (`{"v": 1, ...}`); an entry of another is not read
FORMAT = 1


class Recorder:
    """Records the neutral answer of a call that missed, for its entry."""

    __slots__ = ("chunks", "completion", "finished", "limit", "size", "usage")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.completion: bytes | None = None
        self.chunks: list[bytes] | None = []
        #: a chunk with a finish reason was seen (a stream that has one ended its answer)
        self.finished = False
        #: a chunk carried usage
        self.usage = False

    def drop(self) -> None:
        """Record nothing of this answer: it holds what the neutral answer cannot carry."""
        self.chunks = None
        self.completion = None
        self.finished = False

    def answer(self, completion: dict[str, Any]) -> None:
        """A complete answer (neutral), with its usage."""
        if self.chunks is None:
            return
        data = orjson.dumps(completion)
        if len(data) > self.limit:
            self.chunks = None
            return
        self.completion = data
        self.finished = True

    def chunk(self, chunk: dict[str, Any]) -> None:
        """The next chunk of a stream (neutral)."""
        chunks = self.chunks
        if chunks is None or self.completion is not None:
            return
        data = orjson.dumps(chunk)
        self.size += len(data) + 1
        if self.size > self.limit:
            self.chunks = None  # too large: not stored
            return
        chunks.append(data)
        if chunk.get("usage") is not None:
            self.usage = True
        if not self.finished:
            for choice in chunk.get("choices") or ():
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    self.finished = True

    def entry(self, call: Call) -> bytes | None:
        """The entry of the recorded answer; None when there is none whole (too large, or a
        stream without its end), or it was cut by a content filter."""
        if not self.finished:
            return None
        head = b'{"v":1,"created":' + str(int(time.time())).encode() + b","
        if self.completion is not None:
            if b'"finish_reason":"content_filter"' in self.completion:
                return None
            return head + b'"completion":' + self.completion + b"}"
        chunks = self.chunks
        if not chunks:
            return None
        if any(b'"finish_reason":"content_filter"' in c for c in chunks):
            return None
        parts = list(chunks)
        if not self.usage and call.prompt_tokens is not None and call.completion_tokens is not None:
            # The upstream streamed no usage and the gateway counted: the entry keeps the count.
            first = orjson.loads(parts[0])
            usage = neutral.usage(call.prompt_tokens, call.completion_tokens)
            parts.append(orjson.dumps(neutral.usage_chunk(first.get("id") or "", first.get("model") or "",
                                                          first.get("created") or 0, usage)))  # fmt: skip
        return head + b'"chunks":[' + b",".join(parts) + b"]}"


#: Anthropic content blocks the neutral answer carries; an answer with another kind (server tool
#: results, citations' documents, redacted thinking) is not stored: a hit could not give it back
NEUTRAL_BLOCKS = frozenset({"text", "tool_use", "thinking"})


def carried(content: Any) -> bool:
    """Whether every block of an Anthropic answer's content has a neutral form (and no citations)."""
    if not isinstance(content, list):
        return True
    return all(isinstance(b, dict) and b.get("type") in NEUTRAL_BLOCKS and not b.get("citations") for b in content)


class Entry:
    """A stored answer, read back."""

    __slots__ = ("created", "data")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        created = data.get("created")
        self.created = float(created) if isinstance(created, int | float) else 0.0

    @classmethod
    def read(cls, raw: bytes) -> Entry | None:
        """An entry from its bytes; None when they are not one (another format, damaged)."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or data.get("v") != FORMAT:
            return None
        if not isinstance(data.get("completion"), dict) and not isinstance(data.get("chunks"), list):
            return None
        return cls(data)

    def age(self, now: float | None = None) -> int:
        """Whole seconds since the entry was stored."""
        return max(0, int((now or time.time()) - self.created))

    @property
    def streamed(self) -> bool:
        return isinstance(self.data.get("chunks"), list)

    def chunks(self) -> list[dict[str, Any]]:
        """The stored chunks (a stream), each a fresh object."""
        chunks = self.data["chunks"]
        return [c for c in chunks if isinstance(c, dict)]

    def completion(self) -> dict[str, Any]:
        """The answer as a neutral completion: as stored, or a stored stream put together."""
        completion = self.data.get("completion")
        if isinstance(completion, dict):
            return completion
        return assemble(self.chunks())


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Neutral chunks put together as the completion they stream: per choice its role, texts
    (content, reasoning, refusal) and tool calls joined, its finish reason; the usage."""
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        if not head:
            head = chunk
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice["index"] if type(choice.get("index")) is int else 0
            state = choices.setdefault(index, {"message": {"role": "assistant"}, "tools": {}, "finish": None})
            delta = choice.get("delta")
            if isinstance(delta, dict):
                _merge(state, delta)
            if choice.get("finish_reason"):
                state["finish"] = choice["finish_reason"]
    out_choices = []
    for index in sorted(choices):
        state = choices[index]
        message = state["message"]
        message.setdefault("content", None)
        tools = state["tools"]
        if tools:
            message["tool_calls"] = [tools[i] for i in sorted(tools)]
        out_choices.append({"index": index, "message": message, "finish_reason": state["finish"] or "stop"})
    return {
        "id": head.get("id") or "",
        "object": "chat.completion",
        "created": head.get("created") or 0,
        "model": head.get("model") or "",
        "choices": out_choices,
        "usage": usage,
    }


def _merge(state: dict[str, Any], delta: dict[str, Any]) -> None:
    message = state["message"]
    for key in ("content", "reasoning_content", "refusal"):
        text = delta.get(key)
        if isinstance(text, str):
            message[key] = (message.get(key) or "") + text
    if isinstance(delta.get("reasoning_signature"), str):
        message["reasoning_signature"] = delta["reasoning_signature"]
    for call in delta.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        at = call.get("index") if type(call.get("index")) is int else 0
        tool = state["tools"].setdefault(at, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if isinstance(call.get("id"), str):
            tool["id"] = call["id"]
        function = call.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                tool["function"]["name"] += function["name"]
            if isinstance(function.get("arguments"), str):
                tool["function"]["arguments"] += function["arguments"]
