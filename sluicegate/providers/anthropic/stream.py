"""Anthropic provider, streaming: the Messages SSE stream -> neutral chunks (`AnthropicStreamDecoder`).

Made per call by `AnthropicProvider.stream_decoder`; finish reasons and usage come from `response.py`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from sluicegate import neutral
from sluicegate.errors import RateLimited, SluicegateError, UpstreamError, UpstreamUnavailable
from sluicegate.providers.anthropic.response import FINISH, usage_of
from sluicegate.providers.base import StreamDecoder, json_error_message
from sluicegate.providers.framing import SSEParser, event_json


class AnthropicStreamDecoder(StreamDecoder):
    """Messages SSE (https://docs.anthropic.com/en/api/messages-streaming) -> neutral chunks.

    `message_start` gives the role chunk; block deltas give content, tool call and reasoning
    deltas; `message_delta` the finish chunk; `message_stop` the usage chunk, then the end.
    `ping` and event types not known here are skipped (the API may add some); `error` raises.
    """

    def __init__(self, provider: str, model: str) -> None:
        self.provider = provider
        self.model = model
        self.id = ""
        self.created = 0
        self.sse = SSEParser()
        self.done = False
        #: content block index -> position among the tool_use blocks
        self.tools: dict[int, int] = {}
        self.usage: dict[str, Any] = {}

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, payload in self.sse.feed(data):
            if self.done:
                break
            event = event_json(self.provider, payload)
            kind = event.get("type", name)
            if kind == "content_block_delta":
                self._delta(event, out)
            elif kind == "content_block_start":
                self._start(event, out)
            elif kind == "message_start":
                self._message_start(event, out)
            elif kind == "message_delta":
                delta = event.get("delta") or {}
                self._add_usage(event.get("usage"))
                finish = FINISH.get(delta.get("stop_reason") or "", "stop")
                out.append(neutral.chunk(self.id, self.model, self.created, {}, finish))
            elif kind == "message_stop":
                out.append(neutral.usage_chunk(self.id, self.model, self.created, usage_of(self.usage)))
                self.done = True
            elif kind == "error":
                raise self._error(event)
        return out

    def _message_start(self, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        message = event.get("message") or {}
        self.id = str(message.get("id") or "")
        self.model = str(message.get("model") or self.model)
        self.created = int(time.time())
        self._add_usage(message.get("usage"))
        out.append(neutral.chunk(self.id, self.model, self.created, {"role": "assistant"}))

    def _add_usage(self, usage: Any) -> None:
        """Merge a usage object (`message_start` has the input counts, `message_delta` the final output count)."""
        if isinstance(usage, dict):
            self.usage.update((k, v) for k, v in usage.items() if v is not None)

    def _start(self, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        block = event.get("content_block") or {}
        kind = block.get("type")
        delta: dict[str, Any]
        if kind == "tool_use":
            index = self.tools[event.get("index", -1)] = len(self.tools)
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
        d = event.get("delta") or {}
        kind = d.get("type")
        delta: dict[str, Any]
        if kind == "text_delta":
            delta = {"content": d.get("text", "")}
        elif kind == "input_json_delta":
            fragment = d.get("partial_json")
            index = self.tools.get(event.get("index", -1))
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

    def _error(self, event: dict[str, Any]) -> SluicegateError:
        # https://docs.anthropic.com/en/api/messages-streaming#error-events
        error = event.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        detail = json_error_message(event, ("error", "message")) or str(kind or "error")
        where = f"provider '{self.provider}'"
        if kind == "overloaded_error":
            return UpstreamUnavailable(f"{where} is unavailable (overloaded): {detail}")
        if kind == "rate_limit_error":
            return RateLimited(f"{where} is rate limiting: {detail}", code="upstream_rate_limited")
        return UpstreamError(f"{where} reported an error in the stream ({kind}): {detail}")
