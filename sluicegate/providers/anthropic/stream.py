"""Anthropic provider, streaming: the Messages SSE stream -> neutral chunks (`AnthropicStreamDecoder`).

Made per call by `AnthropicProvider.stream_decoder`; finish reasons and usage come from `response.py`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from sluicegate import neutral
from sluicegate.errors import SluicegateError
from sluicegate.providers.anthropic.response import FINISH, usage_of
from sluicegate.providers.base import json_error_message, reported_error
from sluicegate.providers.framing import MAX_EVENT_BYTES, SSEDecoder


class AnthropicStreamDecoder(SSEDecoder):
    """Messages SSE (https://docs.anthropic.com/en/api/messages-streaming) -> neutral chunks.

    `message_start` gives the role chunk; block deltas give content, tool call and reasoning
    deltas; `message_delta` the finish chunk and the usage chunk; `message_stop` the end.
    `ping` and event types not known here are skipped (the API may add some); `error` raises.
    """

    def __init__(self, provider: str, model: str, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        super().__init__(provider, max_event_bytes)
        self.model = model
        self.id = ""
        self.created = 0
        #: content block index -> position among the tool_use blocks
        self.tools: dict[Any, int] = {}
        self.usage: dict[str, Any] = {}
        self.usage_sent = False

    def event(self, name: str | None, event: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.done:
            return out
        kind = event.get("type", name)
        if kind == "content_block_delta":
            self._delta(event, out)
        elif kind == "content_block_start":
            self._start(event, out)
        elif kind == "message_start":
            self._message_start(event, out)
        elif kind == "message_delta":
            delta = event.get("delta")
            self._add_usage(event.get("usage"))
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            finish = FINISH.get(reason if isinstance(reason, str) else "", "stop")
            out.append(neutral.chunk(self.id, self.model, self.created, {}, finish))
            self._usage_chunk(out)
        elif kind == "message_stop":
            self._usage_chunk(out)
            self.done = True
        elif kind == "error" or name == "error":
            raise self.error(event)
        return out

    def _message_start(self, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        message = event.get("message")
        if not isinstance(message, dict):
            message = {}
        self.id = str(message.get("id") or "")
        self.model = str(message.get("model") or self.model)
        self.created = int(time.time())
        self._add_usage(message.get("usage"))
        out.append(neutral.chunk(self.id, self.model, self.created, {"role": "assistant"}))

    def _usage_chunk(self, out: list[dict[str, Any]]) -> None:
        """The usage chunk, once: after `message_delta`, which carries the final counts (so a
        relay knows them when it passes that event on), else at `message_stop`."""
        if self.usage_sent:
            return
        self.usage_sent = True
        usage = usage_of(self.usage, self.provider)
        if usage is not None:
            out.append(neutral.usage_chunk(self.id, self.model, self.created, usage))

    def _add_usage(self, usage: Any) -> None:
        """Merge a usage object (`message_start` has the input counts, `message_delta` the final output count)."""
        if isinstance(usage, dict):
            self.usage.update((k, v) for k, v in usage.items() if v is not None)

    def _start(self, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        block = event.get("content_block")
        if not isinstance(block, dict):
            return
        kind = block.get("type")
        delta: dict[str, Any]
        if kind == "tool_use":
            index = self.tools[_key(event.get("index"))] = len(self.tools)
            arguments = ""
            if block.get("input"):
                arguments = orjson.dumps(block["input"]).decode()
            delta = {
                "tool_calls": [
                    neutral.tool_call_delta(index, id_=block.get("id"), name=block.get("name"), arguments=arguments)
                ]
            }
        elif kind == "text" and block.get("text"):
            delta = {"content": block["text"]}
        elif kind == "thinking" and block.get("thinking"):
            delta = {"reasoning_content": block["thinking"]}
        else:
            return
        out.append(neutral.chunk(self.id, self.model, self.created, delta))

    def _delta(self, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        d = event.get("delta")
        if not isinstance(d, dict):
            return
        kind = d.get("type")
        delta: dict[str, Any]
        if kind == "text_delta":
            delta = {"content": d.get("text", "")}
        elif kind == "input_json_delta":
            fragment = d.get("partial_json")
            index = self.tools.get(_key(event.get("index")))
            if not fragment or index is None:
                return
            delta = {"tool_calls": [neutral.tool_call_delta(index, arguments=fragment)]}
        elif kind == "thinking_delta":
            delta = {"reasoning_content": d.get("thinking", "")}
        elif kind == "signature_delta":
            delta = {"reasoning_signature": d.get("signature", "")}
        else:
            return  # citations_delta and later additions have no neutral place
        out.append(neutral.chunk(self.id, self.model, self.created, delta))

    def error(self, event: dict[str, Any]) -> SluicegateError:
        """The gateway error for an `error` event (https://docs.anthropic.com/en/api/messages-streaming#error-events):
        `overloaded_error` stays an overload (503), `rate_limit_error` a rate limit."""
        error = event.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        return reported_error(self.provider, kind, json_error_message(event, ("error", "message")))


def _key(index: Any) -> Any:
    """A content block index as a dict key (an unhashable one from a broken upstream matches nothing)."""
    return index if isinstance(index, int | str) else -1
