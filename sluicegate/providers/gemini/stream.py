"""Gemini stream: `streamGenerateContent?alt=sse` events -> neutral chunks (`GeminiStreamDecoder`).

Part of `sluicegate.providers.gemini`; each event is a whole `GenerateContentResponse`, read with
the helpers of `response.py`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sluicegate import neutral
from sluicegate.providers.base import json_error_message, reported_error
from sluicegate.providers.framing import MAX_EVENT_BYTES, SSEDecoder
from sluicegate.providers.gemini.response import (
    call_arguments,
    call_id,
    candidate_parts,
    finish_reason,
    indexed_candidates,
    model_version,
    prompt_blocked,
    response_id,
    usage_of,
)


class GeminiStreamDecoder(SSEDecoder):
    """`streamGenerateContent?alt=sse`: each `data:` event is a whole `GenerateContentResponse`
    holding the next parts of each candidate; the stream ends after the event that carries the
    last candidate's `finishReason` (no end marker). Each functionCall part arrives whole."""

    def __init__(self, provider: str, model: str, expected: int = 1, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        super().__init__(provider, max_event_bytes)
        self.model = model
        self.expected = expected
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.started: set[int] = set()
        self.finished: set[int] = set()
        self.calls: dict[int, int] = {}  # candidate index -> function calls so far
        #: the last event that carried `usageMetadata` (each carries the counts so far)
        self.usage_event: dict[str, Any] | None = None
        self._first = True

    def event(self, name: str | None, event: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        error = event.get("error")
        if error:
            # {"error": {"code", "message", "status"}} (https://ai.google.dev/gemini-api/docs/troubleshooting)
            found = error if isinstance(error, dict) else {}
            detail = json_error_message(event, ("error", "message"), ("error",))
            raise reported_error(self.provider, found.get("status"), detail, found.get("code"))
        self._event(event, out)
        return out

    def close(self) -> list[dict[str, Any]]:
        # The body ended: complete when every candidate that appeared has finished.
        out: list[dict[str, Any]] = []
        if not self.done and self.finished and self.finished >= self.started:
            self._end(out)
        return out

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return neutral.chunk(self.id, self.model, self.created, delta, finish, index=index)

    def _open(self, index: int, out: list[dict[str, Any]]) -> None:
        if index not in self.started:
            self.started.add(index)
            out.append(self._chunk(index, {"role": "assistant", "content": ""}))

    def _event(self, event: dict[str, Any], out: list[dict[str, Any]]) -> None:
        if self._first:
            self._first = False
            self.model = model_version(event) or self.model
            answer_id = response_id(event)
            if answer_id:
                self.id = f"chatcmpl-{answer_id}"
        if isinstance(event.get("usageMetadata"), dict):
            self.usage_event = event
        candidates = event.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            if prompt_blocked(event):
                self._open(0, out)
                out.append(self._chunk(0, {}, "content_filter"))
                self.finished.add(0)
                self._end(out)
            return
        for index, candidate in indexed_candidates(candidates):
            if index in self.finished:
                continue
            self._open(index, out)
            for part in candidate_parts(candidate):
                delta: dict[str, Any] = {}
                text = part.get("text")
                if isinstance(text, str) and text:
                    delta["reasoning_content" if part.get("thought") is True else "content"] = text
                call = part.get("functionCall")
                if isinstance(call, dict):
                    n = self.calls.get(index, 0)
                    self.calls[index] = n + 1
                    delta["tool_calls"] = [
                        neutral.tool_call_delta(
                            n, id_=call_id(call), name=call.get("name", ""), arguments=call_arguments(call)
                        )
                    ]
                signature = part.get("thoughtSignature")
                if isinstance(signature, str) and signature:
                    delta["reasoning_signature"] = signature
                if delta:
                    out.append(self._chunk(index, delta))
            reason = candidate.get("finishReason")
            if reason:
                self.finished.add(index)
                out.append(self._chunk(index, {}, finish_reason(reason, index in self.calls)))
        if len(self.finished) >= self.expected and self.finished >= self.started:
            self._end(out)

    def _end(self, out: list[dict[str, Any]]) -> None:
        self.done = True
        usage = usage_of(self.usage_event, self.provider) if self.usage_event is not None else None
        if usage is not None:
            out.append(neutral.usage_chunk(self.id, self.model, self.created, usage))
