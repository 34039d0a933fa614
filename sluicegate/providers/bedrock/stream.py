"""ConverseStream -> neutral chunks: the Bedrock provider's StreamDecoder, reading AWS
event-stream frames with botocore (imported when a stream opens).
"""

from __future__ import annotations

import time
from typing import Any

from sluicegate import neutral
from sluicegate.errors import RateLimited, SluicegateError, UpstreamError, UpstreamUnavailable
from sluicegate.providers.base import MAX_DETAIL_CHARS, StreamDecoder
from sluicegate.providers.bedrock.response import converse_usage, error_text, finish_reason, new_id
from sluicegate.providers.framing import InvalidStream, event_json


class BedrockStreamDecoder(StreamDecoder):
    """ConverseStream: AWS event-stream frames (binary, CRC-checked), one JSON event each
    (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStreamOutput.html).

    messageStart -> the role chunk; contentBlockStart(toolUse) -> a tool call's id and name;
    contentBlockDelta -> text, tool input JSON or reasoning; messageStop -> the finish chunk;
    metadata -> the usage chunk, and the end of the stream."""

    def __init__(self, provider: str, model: str) -> None:
        from botocore.eventstream import EventStreamBuffer

        self.provider = provider
        self.model = model
        self.id = new_id()
        self.created = int(time.time())
        self.buffer = EventStreamBuffer()
        self.done = False
        #: contentBlockIndex -> index of the tool call among the answer's tool calls
        self.tools: dict[int, int] = {}

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        from botocore.eventstream import ParserError

        self.buffer.add_data(data)
        out: list[dict[str, Any]] = []
        try:
            for message in self.buffer:
                self._message(message.headers, message.payload, out)
        except ParserError:
            raise InvalidStream(f"provider '{self.provider}' sent a corrupted event-stream frame") from None
        return out

    def _message(self, headers: dict[str, Any], payload: bytes, out: list[dict[str, Any]]) -> None:
        kind = headers.get(":message-type")
        if kind == "exception":
            raise self._exception(str(headers.get(":exception-type") or ""), payload)
        if kind == "error":
            code = headers.get(":error-code") or "error"
            detail = str(headers.get(":error-message") or "")[:MAX_DETAIL_CHARS]
            raise UpstreamError(f"provider '{self.provider}' reported an error in the stream: {code}: {detail}")
        if kind != "event":
            return
        event = event_json(self.provider, payload)
        name = headers.get(":event-type")
        if name == "contentBlockDelta":
            self._delta(event, out)
        elif name == "messageStart":
            out.append(self._chunk({"role": event.get("role") or "assistant", "content": ""}))
        elif name == "contentBlockStart":
            start = event.get("start")
            use = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(use, dict):
                index = self._tool_index(event)
                call = neutral.tool_call_delta(
                    index, id_=str(use.get("toolUseId") or ""), name=str(use.get("name") or ""), arguments=""
                )
                out.append(self._chunk({"tool_calls": [call]}))
        elif name == "messageStop":
            out.append(neutral.chunk(self.id, self.model, self.created, {}, finish_reason(event.get("stopReason"))))
        elif name == "metadata":
            usage = converse_usage(event.get("usage"), self.provider)
            if usage is not None:
                out.append(neutral.usage_chunk(self.id, self.model, self.created, usage))
            self.done = True
        # contentBlockStop and events this decoder does not know carry nothing neutral

    def _delta(self, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return
        if isinstance(delta.get("text"), str):
            out.append(self._chunk({"content": delta["text"]}))
        elif isinstance(delta.get("toolUse"), dict):
            arguments = delta["toolUse"].get("input")
            if isinstance(arguments, str):
                call = neutral.tool_call_delta(self._tool_index(event), arguments=arguments)
                out.append(self._chunk({"tool_calls": [call]}))
        elif isinstance(delta.get("reasoningContent"), dict):
            reasoning = delta["reasoningContent"]
            if isinstance(reasoning.get("text"), str):
                out.append(self._chunk({"reasoning_content": reasoning["text"]}))
            if isinstance(reasoning.get("signature"), str):
                out.append(self._chunk({"reasoning_signature": reasoning["signature"]}))

    def _tool_index(self, event: dict[str, Any]) -> int:
        block = event.get("contentBlockIndex")
        key = block if isinstance(block, int) else -1
        index = self.tools.get(key)
        if index is None:
            index = self.tools[key] = len(self.tools)
        return index

    def _chunk(self, delta: dict[str, Any]) -> dict[str, Any]:
        return neutral.chunk(self.id, self.model, self.created, delta)

    def _exception(self, kind: str, payload: bytes) -> SluicegateError:
        detail = error_text(payload)
        where = f"provider '{self.provider}'"
        if kind == "throttlingException":
            return RateLimited(
                f"{where} is rate limiting: {detail or 'too many requests'}", code="upstream_rate_limited"
            )
        if kind == "serviceUnavailableException":
            return UpstreamUnavailable(f"{where} is unavailable: {detail or 'service unavailable'}")
        return UpstreamError(f"{where} reported an error in the stream ({kind or 'exception'}): {detail}")
