"""Extraction yields every text the model reads or writes: a fixture field it misses fails here."""

from __future__ import annotations

from typing import Any

from sluicegate.dialects.openai import request_texts, response_texts

# A chat request using every text-bearing field of the OpenAI chat completions API
# (https://platform.openai.com/docs/api-reference/chat/create).
CHAT_REQUEST: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "developer", "content": "T-developer"},
        {"role": "system", "content": [{"type": "text", "text": "T-system-part"}], "name": "sys"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "T-user-part"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}},
            ],
        },
        {
            "role": "assistant",
            "content": "T-assistant",
            "refusal": "T-refusal",
            "reasoning_content": "T-reasoning",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "T-tool-name", "arguments": "T-args"}}
            ],
            "function_call": {"name": "T-legacy-name", "arguments": "T-legacy-args"},
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "T-tool-result"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "T-tool-result-part"}]},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "T-def-name",
                "description": "T-def-description",
                "parameters": {
                    "type": "object",
                    "properties": {"q": {"type": "string", "description": "T-param-description", "enum": ["T-enum"]}},
                },
            },
        }
    ],
    "user": "user-123",
    "stop": ["\n\n"],
}

CHAT_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": "T-answer",
                "refusal": "T-answer-refusal",
                "reasoning_content": "T-answer-reasoning",
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "T-call-name", "arguments": "T-call-args"},
                    }
                ],
            },
            "logprobs": {"content": [{"token": "x", "logprob": -0.1}]},
        }
    ],
}


def _marked(value: Any) -> set[str]:
    """Every string in a fixture that starts with `T-`: the texts a guard must see."""
    if isinstance(value, str):
        return {value} if value.startswith("T-") else set()
    if isinstance(value, dict):
        return set().union(*(_marked(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_marked(v) for v in value)) if value else set()
    return set()


def test_request_extraction_is_complete() -> None:
    got = {text for _, text in request_texts("chat", CHAT_REQUEST)}
    assert _marked(CHAT_REQUEST) <= got, _marked(CHAT_REQUEST) - got
    # identifiers and enums are not text the model reads
    assert not {"user", "user-123", "call_1", "gpt-4o", "low", "wav", "AAAA"} & got


def test_response_extraction_is_complete() -> None:
    got = {text for _, text in response_texts("chat", CHAT_RESPONSE)}
    assert _marked(CHAT_RESPONSE) == got


def test_completions_and_embeddings_inputs() -> None:
    assert [t for _, t in request_texts("completions", {"prompt": ["a", "b"], "suffix": "c"})] == ["a", "b", "c"]
    assert [t for _, t in request_texts("embeddings", {"input": "x"})] == ["x"]
    assert [t for _, t in response_texts("completions", {"choices": [{"text": "y", "index": 0}]})] == ["y"]
