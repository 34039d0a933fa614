"""Extraction yields every text the model reads or writes: a fixture field it misses fails here."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate import tokens
from sluicegate.dialects.openai import chunk_texts, format_path, request_texts, response_texts, set_path
from sluicegate.dialects.paths import JSON, USER, Key, PathError, TokenIds, replace_paths

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


# -- user-defined JSON, keys, numbers, paths -------------------------------------------------------


def test_schemas_and_arguments_are_read_whole() -> None:
    """Inside a tool's schema and a call's arguments, names like `data` or `type` hide nothing:
    every key, string and number is read; the arguments also as decoded JSON."""
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"data": "\\u0041B"}'}}
                ],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"url": {"id": 7}}}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"K": 4111111111111111}}},
    }
    got = [(format_path(p), t) for p, t in request_texts("chat", body)]
    assert ("messages[1].tool_calls[0].function.arguments{json}{key}", "data") in got
    assert ("messages[1].tool_calls[0].function.arguments{json}.*", "AB") in got
    assert ("tools[0].function.parameters.*{key}", "url") in got
    assert ("tools[0].function.parameters.*.*.*", "7") in got
    assert ("response_format.json_schema.schema{key}", "K") in got
    assert ("response_format.json_schema.schema.*", "4111111111111111") in got
    # the envelope's own names and settings are not text
    assert not {"role", "type", "function", "json_schema", "m", "c", "name"} & {t for _, t in got}


def test_audit_paths_never_show_user_names() -> None:
    path = ("tools", 0, "function", "parameters", USER, "properties", "bob@example.com", Key("sk_live_x"))
    assert format_path(path) == "tools[0].function.parameters.*.*{key}"
    assert format_path(("Bob@Example.com", "content")) == "*.content"
    assert format_path(("prompt", 1, TokenIds("o200k_base"))) == "prompt[1]{tokens}"


def test_replace_paths_renames_keys_in_place_and_copies() -> None:
    body = {"a": {"x": 1, "bob@example.com": {"n": 4111111111111111}, "z": 2}, "s": '{"k": "v"}'}
    items = [
        (("a", USER, "bob@example.com", "n"), "<CARD_1>"),
        (("a", USER, Key("bob@example.com")), "<EMAIL_1>"),
        (("s", JSON, Key("k")), "<K>"),
        (("s", JSON, "k"), "<V>"),
    ]
    new = replace_paths(body, items, copy=True)
    assert new == {"a": {"x": 1, "<EMAIL_1>": {"n": "<CARD_1>"}, "z": 2}, "s": '{"<K>":"<V>"}'}
    assert list(new["a"]) == ["x", "<EMAIL_1>", "z"]
    assert body == {"a": {"x": 1, "bob@example.com": {"n": 4111111111111111}, "z": 2}, "s": '{"k": "v"}'}
    # unchanged numbers stay numbers when their text is written back
    same = {"n": 3}
    set_path(same, ("n",), "3")
    assert same == {"n": 3}
    with pytest.raises(PathError):
        replace_paths(body, [(("nope", "deeper"), "x")], copy=True)


def test_token_ids_written_back_as_token_ids() -> None:
    ids = tokens.encode_ids("mail bob@example.com", "o200k_base")
    ((path, text),) = request_texts("completions", {"model": "gpt-4o", "prompt": ids})
    assert text == "mail bob@example.com"
    new = replace_paths({"prompt": ids}, [(path, "mail <EMAIL_1>")], copy=True)
    assert tokens.decode_ids(new["prompt"], "o200k_base") == "mail <EMAIL_1>"


def test_deep_bodies_are_walked_without_recursion() -> None:
    deep: Any = "Project Nightingale"
    for _ in range(1000):
        deep = [deep]
    assert request_texts("chat", {"model": "m", "messages": [{"role": "user", "content": deep}]})[0][1] == (
        "Project Nightingale"
    )


def test_chunk_channels_continue_across_chunks() -> None:
    def chunk(delta: dict[str, Any]) -> dict[str, Any]:
        return {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 1, "delta": delta}]}

    channels = [
        channel
        for delta in (
            {"role": "assistant", "content": "a"},
            {"content": [{"type": "text", "text": "b"}]},
            {"reasoning": "r", "reasoning_signature": "sig"},
            {"tool_calls": [{"index": 2, "id": "call_1", "type": "function", "function": {"name": "f"}}]},
            {"tool_calls": [{"index": 2, "function": {"arguments": "{"}}]},
            {"function_call": {"arguments": "{"}},
            {"audio": {"id": "a", "data": "AAAA", "transcript": "t"}},
        )
        for channel, _, _ in chunk_texts(chunk(delta))
    ]
    assert channels == [
        "1.content",
        "1.content.text",
        "1.reasoning",
        "1.tool_calls[2].function.name",
        "1.tool_calls[2].function.arguments",
        "1.function_call.arguments",
        "1.audio.transcript",
    ]
