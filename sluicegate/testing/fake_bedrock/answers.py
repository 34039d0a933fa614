"""Answers of the fake Bedrock: the Converse JSON body, and ConverseStream events in AWS
event-stream binary frames (which tests also use to feed the provider's decoder directly).
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import orjson

from sluicegate.testing.wire import Answer, rand

EVENT_STREAM = b"application/vnd.amazon.eventstream"

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def event_frame(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One AWS event-stream message (https://docs.aws.amazon.com/AmazonS3/latest/API/RESTSelectObjectAppendix.html,
    the framing every AWS streaming API shares): prelude (total length, headers length, both
    uint32 big endian, then the prelude's CRC32), headers (name length byte, name, value type 7 =
    string, value length uint16, value), payload, and the CRC32 of everything before it."""
    raw = b"".join(
        struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
        for n, v in ((name.encode(), value.encode()) for name, value in headers)
    )
    prelude = struct.pack(">II", 16 + len(raw) + len(payload), len(raw))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(name: str, data: dict[str, Any]) -> bytes:
    """A ConverseStream event: JSON payload with the random-length padding field `p` Bedrock adds."""
    payload = {**data, "p": _PAD[: 1 + len(name) * 3 % len(_PAD)]}
    return event_frame(
        [(":event-type", name), (":content-type", "application/json"), (":message-type", "event")],
        orjson.dumps(payload),
    )


def exception_frame(kind: str, message: str) -> bytes:
    """An in-stream exception (ConverseStreamOutput's throttlingException, modelStreamErrorException ...)."""
    return event_frame(
        [(":exception-type", kind), (":content-type", "application/json"), (":message-type", "exception")],
        orjson.dumps({"message": message}),
    )


def _usage(answer: Answer) -> dict[str, Any]:
    """Converse TokenUsage: `inputTokens` leaves out the tokens read from the cache."""
    cached = answer.reply.cached_tokens or 0
    out: dict[str, Any] = {
        "inputTokens": answer.prompt_tokens - cached,
        "outputTokens": answer.completion_tokens,
        "totalTokens": answer.prompt_tokens + answer.completion_tokens,
    }
    if answer.reply.cached_tokens is not None:
        out["cacheReadInputTokens"] = cached
        out["cacheWriteInputTokens"] = 0
    return out


def _signature() -> str:
    return base64.b64encode(rand(48).encode()).decode()


def converse_body(answer: Answer) -> dict[str, Any]:
    """A Converse response (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_ResponseSyntax)."""
    content: list[dict[str, Any]] = []
    if answer.reasoning:
        content.append({"reasoningContent": {"reasoningText": {"text": answer.reasoning, "signature": _signature()}}})
    if answer.text:
        content.append({"text": answer.text})
    for tc in answer.tool_calls:
        content.append({"toolUse": {"toolUseId": tc.id, "name": tc.name, "input": orjson.loads(tc.arguments or "{}")}})
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": STOP_REASONS[answer.finish],
        "usage": _usage(answer),
        "metrics": {"latencyMs": 42},
    }


def stream_frames(answer: Answer) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """ConverseStream events (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStreamOutput.html):
    messageStart; per content block its deltas (toolUse blocks open with contentBlockStart) and
    contentBlockStop; messageStop; metadata."""
    head = [event("messageStart", {"role": "assistant"})]
    body: list[bytes] = []
    index = 0
    if answer.reasoning:
        for piece in answer.reasoning.split(" "):
            body.append(
                event(
                    "contentBlockDelta",
                    {"contentBlockIndex": index, "delta": {"reasoningContent": {"text": piece + " "}}},
                )
            )
        body.append(
            event(
                "contentBlockDelta",
                {"contentBlockIndex": index, "delta": {"reasoningContent": {"signature": _signature()}}},
            )
        )
        body.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    if answer.pieces:
        for piece in answer.pieces:
            body.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}))
        body.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    for tc in answer.tool_calls:
        start = {"toolUse": {"toolUseId": tc.id, "name": tc.name}}
        body.append(event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
        for fragment in tc.fragments:
            body.append(
                event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": fragment}}})
            )
        body.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    tail = [
        event("messageStop", {"stopReason": STOP_REASONS[answer.finish]}),
        event("metadata", {"usage": _usage(answer), "metrics": {"latencyMs": 42}}),
    ]
    return head, body, tail
