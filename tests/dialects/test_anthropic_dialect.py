"""The Anthropic Messages dialect: validation, translation to the neutral chat body, rendering of
neutral answers (checked with the official `anthropic` SDK's own models, accumulator and client),
errors, and the texts guards see."""

from __future__ import annotations

import copy
from typing import Any

import anthropic
import httpx
import httpx2
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message

from sluicegate import neutral
from sluicegate.call import Call
from sluicegate.dialects import anthropic as dialect
from sluicegate.dialects.paths import replace_paths
from sluicegate.errors import (
    BadRequest,
    BodyTooLarge,
    Forbidden,
    InvalidJSON,
    NotFound,
    RateLimited,
    SluicegateError,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import CANARY_KEY, RunningGateway

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
PDF = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg=="
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"


def make_call(model: str = "claude-sonnet-4-5") -> Call:
    call = Call("req_test1", "messages", None, {})  # type: ignore[arg-type]
    call.model_requested = model
    return call


def body(**extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    out.update(extra)
    return out


def parse(value: dict[str, Any]) -> Call:
    call = make_call()
    dialect.parse_messages(call, value)
    return call


# -- validation -----------------------------------------------------------------------------------


def test_parse_body_rejects_non_objects() -> None:
    assert dialect.parse_body(b'{"a": 1}') == {"a": 1}
    for raw in (b"", b"[1]", b"{not json"):
        with pytest.raises(InvalidJSON):
            dialect.parse_body(raw)


def test_valid_body_fills_the_call() -> None:
    call = parse(body(stream=True, temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["END"]))
    assert call.model_requested == "claude-sonnet-4-5" and call.stream is True
    assert parse(body()).stream is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": None}, "model: Field required"),
        ({"model": 3}, "model: Input should be a valid string"),
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": "10"}, "max_tokens: Input should be a valid integer"),
        ({"max_tokens": True}, "max_tokens: Input should be a valid integer"),
        ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
        ({"messages": None}, "messages: Field required"),
        ({"messages": "hi"}, "messages: Input should be a valid list"),
        ({"messages": []}, "messages: at least one message is required"),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role: Input should be 'user', 'assistant' or 'system'",
        ),
        ({"messages": [{"role": "user"}]}, "messages.0.content: Field required"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content: Input should be a valid string or"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0.type: Field required"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text: Input should"),
        ({"system": 5}, "system: Input should be a valid string or a valid list"),
        ({"system": [{"type": "image", "text": "x"}]}, "system.0.type: Input should be 'text'"),
        ({"stream": "yes"}, "stream: Input should be a valid boolean"),
        ({"tools": {}}, "tools: Input should be a valid list"),
        ({"tools": [{"name": "x"}]}, "tools.0.input_schema: Input should be a valid dictionary"),
        ({"tool_choice": "auto"}, "tool_choice: Input should be a valid dictionary"),
        ({"tool_choice": {"type": "some"}}, "tool_choice.type: Input should be"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name: Field required"),
        ({"temperature": "hot"}, "temperature: Input should be a valid number"),
        ({"temperature": 1.5}, "temperature: Input should be between 0 and 1"),
        ({"top_p": None, "top_k": 2.5}, "top_k: Input should be a valid integer"),
        ({"stop_sequences": "END"}, "stop_sequences: Input should be a valid list"),
        ({"stop_sequences": ["a", 1]}, "stop_sequences.1: Input should be a valid string"),
        ({"thinking": True}, "thinking: Input should be a valid dictionary"),
        ({"thinking": {"type": "on"}}, "thinking.type: Input should be"),
        ({"thinking": {"type": "enabled"}}, "thinking.enabled.budget_tokens: Field required"),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 100}},
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        ),
        ({"metadata": "u1"}, "metadata: Input should be a valid dictionary"),
        ({"metadata": {"user_id": 7}}, "metadata.user_id: Input should be a valid string"),
    ],
)
def test_validation_errors(change: dict[str, Any], message: str) -> None:
    value = body()
    for key, item in change.items():
        if item is None:
            value.pop(key, None)
        else:
            value[key] = item
    with pytest.raises(BadRequest) as info:
        parse(value)
    assert info.value.status == 400
    assert info.value.message.startswith(message), info.value.message
    assert orjson.loads(dialect.error_body(info.value))["error"]["type"] == "invalid_request_error"


def test_count_tokens_needs_no_max_tokens() -> None:
    call = make_call()
    dialect.parse_count_tokens(call, {"model": "m", "messages": [{"role": "user", "content": "x"}], "system": "s"})
    assert call.model_requested == "m" and call.stream is False
    with pytest.raises(BadRequest, match="messages: Field required"):
        dialect.parse_count_tokens(make_call(), {"model": "m"})
    assert dialect.count_tokens_body(42) == b'{"input_tokens":42}'


# -- to_chat --------------------------------------------------------------------------------------

CACHE = {"type": "ephemeral"}


def claude_code_request() -> dict[str, Any]:
    """Shaped like what Claude Code sends: system blocks with cache_control, many tools (the last
    cached), thinking, metadata, multi-turn tool use with thinking and tool results, an image."""
    tools: list[Any] = [
        {
            "name": f"Tool{i}",
            "description": f"Tool number {i}",
            "input_schema": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "a path"}},
                "required": ["path"],
                "additionalProperties": False,
                "$schema": "http://json-schema.org/draft-07/schema#",
            },
        }
        for i in range(20)
    ]
    tools[-1]["cache_control"] = CACHE
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": True,
        "temperature": 1,
        "metadata": {"user_id": "user_abc_account_x_session_y"},
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": CACHE},
            {"type": "text", "text": "Working directory: /repo", "cache_control": CACHE},
        ],
        "tools": tools,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                    {"type": "text", "text": "Read main.py", "cache_control": CACHE},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should read it.", "signature": SIGNATURE},
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_01A", "name": "Tool1", "input": {"path": "main.py"}},
                    {"type": "tool_use", "id": "toolu_01B", "name": "Tool2", "input": {"path": "b.py"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "print('hi')"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01B",
                        "content": [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}],
                        "is_error": True,
                        "cache_control": CACHE,
                    },
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "text", "text": "What does it do?"},
                ],
            },
        ],
    }


def test_to_chat_claude_code_request() -> None:
    request = claude_code_request()
    parse(request)
    original = copy.deepcopy(request)
    chat = dialect.to_chat(request)
    assert request == original  # the client's body is not mutated
    assert chat["model"] == "claude-sonnet-4-5" and chat["max_tokens"] == 32000 and chat["stream"] is True
    assert chat["temperature"] == 1 and chat["thinking_budget"] == 31999
    assert chat["user"] == "user_abc_account_x_session_y"
    messages = chat["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert messages[0]["content"] == [
        {"type": "text", "text": "You are Claude Code.", "cache_control": CACHE},
        {"type": "text", "text": "Working directory: /repo", "cache_control": CACHE},
    ]
    assert messages[1]["content"][1] == {"type": "text", "text": "Read main.py", "cache_control": CACHE}
    assistant = messages[2]
    assert assistant["content"] == "Reading."
    assert assistant["reasoning_content"] == "I should read it."
    assert assistant["reasoning_signature"] == SIGNATURE
    assert assistant["tool_calls"] == [
        {"id": "toolu_01A", "type": "function", "function": {"name": "Tool1", "arguments": '{"path":"main.py"}'}},
        {"id": "toolu_01B", "type": "function", "function": {"name": "Tool2", "arguments": '{"path":"b.py"}'}},
    ]
    assert messages[3] == {"role": "tool", "tool_call_id": "toolu_01A", "content": "print('hi')"}
    assert messages[4] == {
        "role": "tool",
        "tool_call_id": "toolu_01B",
        "content": "[tool error] line 1\nline 2",
        "cache_control": CACHE,
    }
    assert messages[5]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "What does it do?"},
    ]
    assert neutral.parse_data_url(messages[5]["content"][0]["image_url"]["url"]) == ("image/png", PNG)
    assert len(chat["tools"]) == 20
    assert chat["tools"][0] == {
        "type": "function",
        "function": {
            "name": "Tool0",
            "description": "Tool number 0",
            "parameters": request["tools"][0]["input_schema"],
        },
    }
    assert chat["tools"][-1]["cache_control"] == CACHE
    assert "cache_control" not in chat["tools"][0]


def test_to_chat_sampling_tool_choice_and_stops() -> None:
    chat = dialect.to_chat(
        body(
            top_p=0.8,
            top_k=5,
            stop_sequences=["END", "STOP"],
            system="Be brief.",
            tools=[{"name": "f", "input_schema": {"type": "object"}, "type": "custom"}],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
        )
    )
    assert chat["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert chat["top_p"] == 0.8 and chat["top_k"] == 5 and chat["stop"] == ["END", "STOP"]
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert "stream" not in chat and "thinking_budget" not in chat
    assert dialect.to_chat(body(tool_choice={"type": "auto"}))["tool_choice"] == "auto"
    assert dialect.to_chat(body(tool_choice={"type": "none"}))["tool_choice"] == "none"
    assert dialect.to_chat(body(tool_choice={"type": "tool", "name": "f"}))["tool_choice"] == {
        "type": "function",
        "function": {"name": "f"},
    }
    assert "parallel_tool_calls" not in dialect.to_chat(body(tool_choice={"type": "auto"}))


def test_to_chat_documents_and_image_urls() -> None:
    content = [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
            "title": "r.pdf",
        },
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "The grass is green."},
            "title": "Facts",
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}, "cache_control": CACHE},
        {"type": "text", "text": "Summarise."},
    ]
    chat = dialect.to_chat(body(messages=[{"role": "user", "content": content}]))
    assert chat["messages"][0]["content"] == [
        {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "r.pdf"}},
        {"type": "text", "text": "Facts"},
        {"type": "text", "text": "The grass is green."},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}, "cache_control": CACHE},
        {"type": "text", "text": "Summarise."},
    ]


def test_to_chat_thinking_variants_and_output_config() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT"},
                {"type": "thinking", "thinking": "a", "signature": "s1"},
                {"type": "thinking", "thinking": "b", "signature": "s2"},
                {"type": "text", "text": "answer"},
            ],
        },
        {"role": "user", "content": "more"},
    ]
    chat = dialect.to_chat(body(messages=messages, thinking={"type": "adaptive"}))
    assistant = chat["messages"][1]
    assert assistant["reasoning_content"] == "a\nb" and "reasoning_signature" not in assistant
    assert assistant["content"] == "answer"
    assert chat["reasoning_effort"] == "high"
    chat = dialect.to_chat(body(thinking={"type": "adaptive"}, output_config={"effort": "low"}))
    assert chat["reasoning_effort"] == "low"
    assert "thinking_budget" not in dialect.to_chat(body(thinking={"type": "disabled"}))
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat = dialect.to_chat(body(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
    # a turn of only redacted thinking leaves nothing to carry
    only = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
    ]
    assert [m["role"] for m in dialect.to_chat(body(messages=only))["messages"]] == ["user"]


def test_to_chat_top_level_cache_control_marks_the_last_block() -> None:
    chat = dialect.to_chat(body(cache_control=CACHE))
    assert chat["messages"][-1]["content"] == [{"type": "text", "text": "Hello", "cache_control": CACHE}]


def test_to_chat_count_tokens_body() -> None:
    chat = dialect.to_chat({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


def test_context_management_noop_is_accepted_others_refused() -> None:
    keep_all = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    dialect.to_chat(body(context_management=keep_all))
    with pytest.raises(BadRequest, match="context_management"):
        dialect.to_chat(body(context_management={"edits": [{"type": "clear_tool_uses_20250919"}]}))


@pytest.mark.parametrize(
    ("change", "feature"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search_20250305"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "bash_20250124"),
        ({"tools": [{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]}, "text_editor_20250728"),
        ({"tools": [{"type": "computer_20250124", "name": "computer"}]}, "computer_20250124"),
        (
            {"tools": [{"name": "f", "input_schema": {"type": "object"}, "input_examples": [{"a": 1}]}]},
            "the tool field 'input_examples'",
        ),
        ({"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]}, "'mcp_servers'"),
        ({"container": "container_1"}, "'container'"),
        ({"output_config": {"effort": "max"}}, "output_config.effort"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t", "content": []}]}
                ]
            },
            "'search_result'",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "container_upload", "file_id": "f"}]}]},
            "container_upload",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "content": [{"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}],
                    },
                ]
            },
            "'server_tool_use'",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [
                                    {
                                        "type": "image",
                                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                                    }
                                ],
                            }
                        ],
                    }
                ]
            },
            "an image inside a tool_result",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            "an image with a 'file' source",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}],
                    }
                ]
            },
            "a document with a 'url' source",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                                "citations": {"enabled": True},
                            }
                        ],
                    }
                ]
            },
            "document citations",
        ),
    ],
)
def test_unsupported_features_are_refused_by_name(change: dict[str, Any], feature: str) -> None:
    value = body(**change)
    parse(value)  # valid Anthropic: only the translation refuses it
    with pytest.raises(BadRequest) as info:
        dialect.to_chat(value)
    assert info.value.status == 400 and info.value.code == "unsupported_feature"
    assert feature in info.value.message, info.value.message


# -- render_response ------------------------------------------------------------------------------


def test_render_text_response_validates_with_the_sdk() -> None:
    completion = neutral.completion(
        "chatcmpl-123",
        "gpt-4o",
        {"role": "assistant", "content": "Hi there"},
        "stop",
        neutral.usage(100, 7, cached=30, cache_creation=20),
    )
    rendered = dialect.render_response(completion, make_call())
    message = Message.model_validate(rendered)
    assert message.id == "msg_chatcmpl-123" and message.model == "gpt-4o"
    assert message.content[0].type == "text" and message.content[0].text == "Hi there"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == 50 and message.usage.output_tokens == 7
    assert message.usage.cache_read_input_tokens == 30 and message.usage.cache_creation_input_tokens == 20
    assert dialect.render_response(completion, make_call())["id"] == rendered["id"]  # stable


def test_render_thinking_and_tool_use() -> None:
    message_in = {
        "role": "assistant",
        "content": "Let me check.",
        "reasoning_content": "Need the weather.",
        "reasoning_signature": SIGNATURE,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "noop", "arguments": ""}},
            {"id": "call_3", "type": "function", "function": {"name": "bad", "arguments": "{not json"}},
        ],
    }
    completion = neutral.completion("abc", "m", message_in, "tool_calls", neutral.usage(10, 5))
    message = Message.model_validate(dialect.render_response(completion, make_call()))
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "text", "tool_use", "tool_use", "tool_use"]
    thinking, _text, weather, noop, bad = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Need the weather." and thinking.signature == SIGNATURE
    assert weather.type == "tool_use" and weather.id == "call_1" and weather.input == {"city": "Paris"}
    assert noop.type == "tool_use" and noop.input == {}
    assert bad.type == "tool_use" and bad.input == {}
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_render_stop_reasons(finish: str | None, stop: str) -> None:
    completion = neutral.completion("x", "m", {"role": "assistant", "content": "t"}, finish, None)
    rendered = dialect.render_response(completion, make_call())
    assert rendered["stop_reason"] == stop
    assert Message.model_validate(rendered).usage.output_tokens == 0


# -- stream encoder -------------------------------------------------------------------------------


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event; checks the `type` matches the event name."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = orjson.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append((lines["event"], data))
    return out


def encode(chunks: list[dict[str, Any]]) -> bytes:
    encoder = dialect.MessagesStreamEncoder(make_call())
    return b"".join(encoder.encode(c) for c in chunks) + encoder.finish()


def accumulate(raw: bytes) -> Any:
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _name, data in sse_events(raw):
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)  # type: ignore[arg-type]
    return snapshot


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return neutral.chunk("chatcmpl-9", "gpt-4o", 1700000000, delta, finish)


def text_stream() -> list[dict[str, Any]]:
    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": ", world"}),
        chunk(finish="stop"),
        neutral.usage_chunk("chatcmpl-9", "gpt-4o", 1700000000, neutral.usage(12, 3, cached=2)),
    ]


def test_stream_text_events_in_order() -> None:
    events = sse_events(encode(text_stream()))
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_chatcmpl-9" and start["content"] == [] and start["stop_reason"] is None
    delta = events[5][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {
        "input_tokens": 10,
        "output_tokens": 3,
        "cache_read_input_tokens": 2,
        "cache_creation_input_tokens": 0,
    }


def test_stream_text_accumulates_to_a_message() -> None:
    message = Message.model_validate(accumulate(encode(text_stream())).to_dict())
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hello, world"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 10 and message.usage.output_tokens == 3
    assert message.usage.cache_read_input_tokens == 2


def tool_stream() -> list[dict[str, Any]]:
    return [
        chunk({"role": "assistant", "reasoning_content": "Think "}),
        chunk({"reasoning_content": "hard."}),
        chunk({"reasoning_signature": SIGNATURE}),
        chunk({"content": "Checking."}),
        chunk({"tool_calls": [neutral.tool_call_delta(0, id_="call_a", name="get_weather", arguments="")]}),
        chunk({"tool_calls": [neutral.tool_call_delta(0, arguments='{"city": ')]}),
        chunk({"tool_calls": [neutral.tool_call_delta(0, arguments='"Paris"}')]}),
        chunk({"tool_calls": [neutral.tool_call_delta(1, id_="call_b", name="get_time", arguments='{"tz": "CET"}')]}),
        chunk(finish="tool_calls"),
        neutral.usage_chunk("chatcmpl-9", "gpt-4o", 1700000000, neutral.usage(40, 25, reasoning=10)),
    ]


def test_stream_thinking_and_tool_use_accumulate() -> None:
    raw = encode(tool_stream())
    events = sse_events(raw)
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert [s["type"] for s in starts] == ["thinking", "text", "tool_use", "tool_use"]
    assert starts[2] == {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    assert stops == [0, 1, 2, 3]
    message = Message.model_validate(accumulate(raw).to_dict())
    thinking, text, weather, time_ = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Think hard." and thinking.signature == SIGNATURE
    assert text.type == "text" and text.text == "Checking."
    assert weather.type == "tool_use" and weather.id == "call_a" and weather.input == {"city": "Paris"}
    assert time_.type == "tool_use" and time_.name == "get_time" and time_.input == {"tz": "CET"}
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 25


def test_stream_with_nothing_still_opens_and_closes_the_message() -> None:
    events = sse_events(dialect.MessagesStreamEncoder(make_call()).finish())
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert events[1][1]["usage"] == {"output_tokens": 0}


def sdk_client(handler: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="sk-test",
        base_url="http://gateway.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def test_sdk_client_streams_and_creates_through_the_dialect() -> None:
    """The SDK's own client (its SSE decoder, MessageStream, response parsing) reads our bytes."""
    stream_bytes = encode(tool_stream())
    completion = neutral.completion("c1", "m", {"role": "assistant", "content": "plain"}, "stop", neutral.usage(3, 1))
    json_bytes = orjson.dumps(dialect.render_response(completion, make_call()))

    def handler(request: httpx2.Request) -> httpx2.Response:
        if orjson.loads(request.content).get("stream"):
            return httpx2.Response(200, content=stream_bytes, headers={"content-type": "text/event-stream"})
        return httpx2.Response(200, content=json_bytes, headers={"content-type": "application/json"})

    client = sdk_client(handler)
    args: dict[str, Any] = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    with client.messages.stream(**args) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == ["Checking."]
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.content[2].input == {"city": "Paris"}  # type: ignore[union-attr]
    created = client.messages.create(**args)
    assert created.content[0].text == "plain" and created.usage.input_tokens == 3


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (BadRequest("bad"), "invalid_request_error"),
        (BodyTooLarge("big"), "request_too_large"),
        (Unauthorized("who"), "authentication_error"),
        (Forbidden("no"), "permission_error"),
        (NotFound("where"), "not_found_error"),
        (RateLimited("slow"), "rate_limit_error"),
        (UpstreamError("up"), "api_error"),
        (UpstreamUnavailable("busy"), "overloaded_error"),
        (UpstreamTimeout("late"), "timeout_error"),
        (SluicegateError("boom"), "api_error"),
        (SluicegateError("over", status=529), "overloaded_error"),
        (SluicegateError("gone", status=405), "invalid_request_error"),
    ],
)
def test_error_body_types(error: SluicegateError, kind: str) -> None:
    assert orjson.loads(dialect.error_body(error)) == {
        "type": "error",
        "error": {"type": kind, "message": error.message},
    }


@pytest.mark.parametrize(
    ("error", "exception"),
    [
        (BadRequest("bad"), anthropic.BadRequestError),
        (Unauthorized("who"), anthropic.AuthenticationError),
        (Forbidden("no"), anthropic.PermissionDeniedError),
        (NotFound("where"), anthropic.NotFoundError),
        (RateLimited("slow"), anthropic.RateLimitError),
        (UpstreamError("up"), anthropic.InternalServerError),
    ],
)
def test_sdk_raises_the_right_error(error: SluicegateError, exception: type[Exception]) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            error.status, content=dialect.error_body(error), headers={"content-type": "application/json"}
        )

    with pytest.raises(exception) as info:
        sdk_client(handler).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert error.message in str(info.value)


def test_stream_error_event_reaches_the_sdk() -> None:
    encoder = dialect.MessagesStreamEncoder(make_call())
    raw = b"".join(encoder.encode(c) for c in text_stream()[:2]) + encoder.error(
        UpstreamUnavailable("provider overloaded")
    )
    events = sse_events(raw)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "provider overloaded"}},
    )
    assert (
        dialect.sse_error(UpstreamUnavailable("provider overloaded"))
        == raw[-len(dialect.sse_error(UpstreamUnavailable("provider overloaded"))) :]
    )

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    with pytest.raises(anthropic.APIStatusError, match="provider overloaded"):
        with sdk_client(handler).messages.stream(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        ) as s:
            s.until_done()


# -- texts for guards -----------------------------------------------------------------------------


def marked_request() -> dict[str, Any]:
    """A request with a distinct marker in every text field, and ids / base64 / enums elsewhere."""
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "MARK-system", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "tools": [
            {
                "name": "MARK-toolname",
                "description": "MARK-tooldesc",
                "input_schema": {
                    "type": "object",
                    "properties": {"q": {"type": "string", "description": "MARK-propdesc", "enum": ["MARK-enum"]}},
                    "required": ["q"],
                },
                "cache_control": {"type": "ephemeral"},
            }
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "MARK-usertext"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/ID-url.png"}},
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                        "title": "MARK-doctitle",
                        "context": "MARK-doccontext",
                    },
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "MARK-docdata"},
                    },
                    {
                        "type": "document",
                        "source": {"type": "content", "content": [{"type": "text", "text": "MARK-doccontent"}]},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "MARK-thinking", "signature": "ID-signature"},
                    {"type": "redacted_thinking", "data": "ID-redacted"},
                    {"type": "text", "text": "MARK-assistanttext"},
                    {
                        "type": "tool_use",
                        "id": "ID-toolu",
                        "name": "MARK-callname",
                        "input": {"q": "MARK-callarg", "n": 3},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "ID-toolu", "content": "MARK-resultstring"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "ID-toolu2",
                        "content": [{"type": "text", "text": "MARK-resultblock"}],
                        "is_error": True,
                    },
                ],
            },
            {"role": "assistant", "content": "MARK-assistantstring"},
        ],
    }


def test_request_texts_cover_every_text_field() -> None:
    request = marked_request()
    parse(request)
    texts = dialect.request_texts("messages", request)
    found = {text for _, text in texts}
    expected = {
        "MARK-system", "MARK-toolname", "MARK-tooldesc", "MARK-propdesc", "MARK-enum", "MARK-usertext",
        "MARK-doctitle", "MARK-doccontext", "MARK-docdata", "MARK-doccontent", "MARK-thinking",
        "MARK-assistanttext", "MARK-callname", "MARK-callarg", "MARK-resultstring", "MARK-resultblock",
        "MARK-assistantstring",
    }  # fmt: skip
    assert expected <= found, expected - found
    # tool schemas and inputs are user-defined JSON, read whole: keys and numbers too
    assert {"q", "n", "3"} <= found
    assert not any("ID-" in t or PNG in t or PDF in t or t in ("ephemeral", "1h") for t in found)
    assert dialect.request_texts("count_tokens", request) == texts
    assert dialect.request_texts("models", request) == []
    # every path points at its text, and a guard can rewrite them all (keys renamed, numbers replaced)
    for path, text in texts:
        if all(isinstance(step, str | int) for step in path):
            node: Any = request
            for key in path:
                node = node[key]
            assert str(node) == text
    before = copy.deepcopy(request)
    redacted = replace_paths(request, [(path, "[redacted]") for path, _ in texts], copy=True)
    assert request == before
    assert "MARK-" not in orjson.dumps(redacted).decode()
    assert PNG in orjson.dumps(redacted).decode()


def test_response_texts() -> None:
    message_in = {
        "role": "assistant",
        "content": "MARK-text",
        "reasoning_content": "MARK-thinking",
        "reasoning_signature": "ID-sig",
        "tool_calls": [
            {"id": "ID-call", "type": "function", "function": {"name": "MARK-name", "arguments": '{"a": "MARK-arg"}'}}
        ],
    }
    rendered = dialect.render_response(
        neutral.completion("ID-1", "ID-model", message_in, "tool_calls", None), make_call()
    )
    found = {text for _, text in dialect.response_texts("messages", rendered)}
    assert found == {"MARK-text", "MARK-thinking", "MARK-name", "MARK-arg", "a"}  # the input's key too


# -- end to end: the anthropic SDK through the gateway to an OpenAI upstream ------------------------


def gateway_client(gateway: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.keys["alice"], max_retries=0)


def test_e2e_claude_code_like_request_is_translated(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    request = claude_code_request()
    request["model"] = "gpt-4o-mini"
    del request["stream"]  # Claude Code streams; the SDK's stream() sets it
    request["extra_body"] = {"temperature": request.pop("temperature")}  # this SDK version has no parameter for it
    request["messages"][-1]["content"][-1]["text"] = "echo: it prints hi"
    with gateway_client(gateway).messages.stream(**request) as stream:
        reply = stream.get_final_message()
    assert reply.type == "message" and reply.id.startswith("msg_")
    assert [b.type for b in reply.content] == ["text"] and reply.content[0].text == "it prints hi"  # type: ignore[union-attr]
    assert reply.stop_reason == "end_turn" and reply.usage.output_tokens == 3 and reply.usage.input_tokens > 0
    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    data = orjson.loads(sent.body)
    assert [m["role"] for m in data["messages"]] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert data["messages"][3]["tool_call_id"] == "toolu_01A" and len(data["tools"]) == 20
    assert data["max_tokens"] == 32000 and data["user"] == "user_abc_account_x_session_y"
    assert CANARY_KEY not in orjson.dumps(reply.to_dict()).decode()


def test_e2e_stream_text_and_tool_use(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    client = gateway_client(gateway)
    args: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "echo: one two three"}],
    }
    with client.messages.stream(**args) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three" and final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    upstream.enqueue(Reply(tool_calls=[{"name": "get_weather", "arguments": '{"city":"Paris"}'}]))
    tools: list[Any] = [
        {
            "name": "get_weather",
            "description": "Weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    with client.messages.stream(**args, tools=tools, tool_choice={"type": "any"}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    block = final.content[-1]
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    assert orjson.loads(upstream.requests[-1].body)["tool_choice"] == "required"


def test_e2e_errors_are_anthropic_shaped(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    headers = {"x-api-key": gateway.keys["alice"], "anthropic-version": "2023-06-01"}
    resp = httpx.post(gateway.url + "/v1/messages", json={"model": "gpt-4o-mini", "messages": []}, headers=headers)
    assert resp.status_code == 400
    assert resp.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    client = gateway_client(gateway)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError, match="web_search_20250305"):
        client.messages.create(
            model="gpt-4o-mini",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=gateway.url, api_key="wrong", max_retries=0).messages.create(
            model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    upstream.enqueue(Reply(status=429, retry_after=3))
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_e2e_count_tokens(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    client = gateway_client(gateway)
    small = client.messages.count_tokens(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    big = client.messages.count_tokens(
        model="gpt-4o-mini", system="You are a careful assistant. " * 20, messages=[{"role": "user", "content": "hi"}]
    )
    assert 0 < small.input_tokens < big.input_tokens
