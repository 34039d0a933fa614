"""Anthropic: translation both ways, the SSE decoder, error mapping, and the fake checked with the official SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import anthropic
import httpx
import orjson
import pytest

from sluicegate import neutral
from sluicegate.config.loader import parse_config
from sluicegate.config.model import ProviderConfig, ServerConfig
from sluicegate.errors import BadRequest, RateLimited, UpstreamError, UpstreamUnavailable
from sluicegate.providers.anthropic import AnthropicProvider, AnthropicStreamDecoder
from sluicegate.providers.base import provider_types
from sluicegate.scrub import Scrubber
from sluicegate.testing import FakeUpstream, Reply, serve_in_thread

KEY = "sk-ant-test-0123456789abcdef"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def fake() -> FakeUpstream:
    return FakeUpstream(required_key=KEY)


@pytest.fixture(scope="module")
def url(fake: FakeUpstream) -> Iterator[str]:
    with serve_in_thread(fake) as base:
        yield base


@pytest.fixture
def up(fake: FakeUpstream, url: str) -> FakeUpstream:
    fake.reset()
    return fake


def provider(base_url: str = "https://api.anthropic.com", **options: Any) -> AnthropicProvider:
    config = ProviderConfig(
        name="claude", type="anthropic", base_url=base_url, options=options, headers={"x-team": "t1"}
    )
    return AnthropicProvider(config, provider_types()["anthropic"].preset)


def call(
    body: dict[str, Any] | None = None,
    *,
    dialect: str = "openai",
    headers: dict[bytes, bytes] | None = None,
    stream: bool = False,
) -> Any:
    return SimpleNamespace(
        route=SimpleNamespace(upstream_model="claude-sonnet-4-5"),
        model_requested="public-name",
        dialect=dialect,
        headers=headers or {},
        body=body,
        stream=stream,
        snapshot=SimpleNamespace(server=ServerConfig()),
    )


def build(chat: dict[str, Any], **options: Any) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(provider(**options).build_request(call(), {"model": "public-name", **chat}))
    return out


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# ----------------------------------------------------------------------------------------- neutral -> Messages


def test_system_developer_and_cache_control_go_to_system() -> None:
    out = build(
        {
            "messages": [
                {"role": "system", "content": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                user("hi"),
            ]
        }
    )
    assert out["model"] == "claude-sonnet-4-5"
    assert out["system"] == [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Use French."},
    ]
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert out["max_tokens"] == 4096


def test_user_parts_images_and_pdf() -> None:
    out = build(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                        {
                            "type": "file",
                            "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a"},
                        },
                    ],
                }
            ]
        }
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
    ]


def tool_conversation() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a weather bot."},
        user("Weather in Paris and Rome?"),
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "Two cities, two calls.",
            "reasoning_signature": "sig-1",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                {"id": "toolu_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "25C"}]},
        user("echo: thanks"),
    ]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_assistant_tool_calls_and_merged_tool_results() -> None:
    out = build({"messages": tool_conversation(), "tools": [WEATHER_TOOL]})
    assert out["system"] == [{"type": "text", "text": "You are a weather bot."}]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Two cities, two calls.", "signature": "sig-1"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
    ]
    # Both tool results and the next user text make one user turn, results first.
    assert out["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "25C"}]},
        {"type": "text", "text": "echo: thanks"},
    ]
    assert out["tools"] == [
        {
            "name": "weather",
            "description": "Current weather",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert "tool_choice" not in out


def test_consecutive_same_role_messages_merge() -> None:
    out = build({"messages": [user("a"), user("b"), {"role": "assistant", "content": ""}, user("c")]})
    assert out["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, {"type": "text", "text": "c"}],
        }
    ]


def test_thinking_without_signature_is_not_sent_back() -> None:
    out = build({"messages": [user("a"), {"role": "assistant", "content": "b", "reasoning_content": "x"}, user("c")]})
    assert out["messages"][1]["content"] == [{"type": "text", "text": "b"}]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "weather"}}, None, {"type": "tool", "name": "weather"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, True, None),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: Any) -> None:
    chat: dict[str, Any] = {"messages": [user("a")], "tools": [WEATHER_TOOL]}
    if choice is not None:
        chat["tool_choice"] = choice
    if parallel is not None:
        chat["parallel_tool_calls"] = parallel
    assert build(chat).get("tool_choice") == expected


def test_sampling_limits_user_and_stream() -> None:
    out = build(
        {
            "messages": [user("a")],
            "max_tokens": 50,
            "max_completion_tokens": 70,
            "stop": "END",
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "user": "u-42",
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": 1,
            "response_format": {"type": "text"},
        }
    )
    assert {k: v for k, v in out.items() if k not in ("model", "messages")} == {
        "max_tokens": 70,
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "u-42"},
        "stream": True,
    }
    assert build({"messages": [user("a")], "stop": ["x", "y"]}, default_max_tokens=99)["stop_sequences"] == ["x", "y"]
    assert build({"messages": [user("a")]}, default_max_tokens=99)["max_tokens"] == 99


def test_thinking_budget_and_reasoning_effort() -> None:
    out = build({"messages": [user("a")], "thinking_budget": 2000})
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert out["max_tokens"] == 4096 + 2000  # the answer keeps its default room
    out = build({"messages": [user("a")], "reasoning_effort": "high", "max_tokens": 5000})
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 4999} and out["max_tokens"] == 5000
    out = build({"messages": [user("a")], "reasoning_effort": "medium"})
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 8192} and out["max_tokens"] == 4096 + 8192
    assert "thinking" not in build({"messages": [user("a")], "reasoning_effort": "none"})
    with pytest.raises(BadRequest) as info:
        build({"messages": [user("a")], "reasoning_effort": "low", "max_tokens": 500})
    assert info.value.param == "max_tokens"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"seed": 7}, "seed"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"store": True}, "store"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"verbosity": "low"}, "verbosity"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
        ({"tool_choice": {"type": "allowed_tools"}, "tools": [WEATHER_TOOL]}, "tool_choice"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_unsupported_features_are_refused(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        build({"messages": [user("a")], **extra})
    assert info.value.status == 400 and info.value.code == "unsupported_feature"
    assert info.value.param == param and "Anthropic" in info.value.message


def test_zero_penalties_and_null_seed_are_inert() -> None:
    out = build(
        {
            "messages": [user("a")],
            "presence_penalty": 0,
            "frequency_penalty": 0.0,
            "seed": None,
            "logprobs": False,
            "verbosity": "medium",
        }
    )
    assert set(out) == {"model", "messages", "max_tokens"}


def test_invalid_tool_arguments_are_a_400() -> None:
    bad = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{not json"}}],
    }
    with pytest.raises(BadRequest) as info:
        build({"messages": [user("a"), bad]})
    assert info.value.status == 400 and info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_translated_requests_are_accepted_by_the_fake(up: FakeUpstream, url: str) -> None:
    """The fake checks roles, alternation and tool_use/tool_result pairing as Anthropic does."""
    p = provider(url)
    chat = {"model": "x", "messages": tool_conversation(), "tools": [WEATHER_TOOL], "tool_choice": "auto"}
    body = p.build_request(call(), chat)
    target = p.url_for("chat", "claude-sonnet-4-5")
    assert target == url + "/v1/messages"
    resp = httpx.post(target, content=body, headers=p.request_headers(call(), KEY, target, body))
    assert resp.status_code == 200, resp.text
    completion = p.parse_response(resp.json(), call())
    assert completion["choices"][0]["message"]["content"] == "thanks"
    sent = up.requests[-1]
    assert sent.headers["x-api-key"] == KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["x-team"] == "t1"


# ----------------------------------------------------------------------------------------- Messages -> neutral


def message(content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def test_parse_response_text_tools_thinking_and_usage() -> None:
    data = message(
        [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Let me "},
            {"type": "text", "text": "look."},
            {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {"city": "Oslo"}},
        ],
        "tool_use",
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
    )
    frozen = orjson.dumps(data)
    out = provider().parse_response(data, call())
    assert orjson.dumps(data) == frozen  # not mutated
    assert out["id"] == "msg_1" and out["object"] == "chat.completion" and out["model"] == "claude-sonnet-4-5"
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {"id": "toolu_9", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
        ],
        "reasoning_content": "hmm",
        "reasoning_signature": "sig",
    }
    assert out["usage"] == neutral.usage(130, 5, cached=100, cache_creation=20)


def test_parse_response_only_tool_use_has_null_content() -> None:
    data = message([{"type": "tool_use", "id": "t", "name": "f", "input": {}}], "tool_use")
    msg = provider().parse_response(data, call())["choices"][0]["message"]
    assert msg["content"] is None and msg["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons(stop: str, finish: str) -> None:
    out = provider().parse_response(message([{"type": "text", "text": "x"}], stop), call())
    assert out["choices"][0]["finish_reason"] == finish


def test_parse_response_refuses_other_bodies() -> None:
    with pytest.raises(UpstreamError):
        provider().parse_response({"choices": []}, call())


# ----------------------------------------------------------------------------------------- stream decoder


def fake_stream(url: str, up: FakeUpstream, reply: Reply, **extra: Any) -> bytes:
    up.enqueue(reply)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 200, "messages": [user("hi there")], "stream": True, **extra}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    resp = httpx.post(url + "/v1/messages", json=body, headers=headers)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    return resp.content


def collect(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer a neutral stream adds up to."""
    out: dict[str, Any] = {"content": "", "reasoning": "", "signature": "", "tools": {}, "finish": None, "usage": None}
    for c in chunks:
        if not c["choices"]:
            out["usage"] = c["usage"]
            continue
        choice = c["choices"][0]
        delta = choice["delta"]
        out["content"] += delta.get("content") or ""
        out["reasoning"] += delta.get("reasoning_content") or ""
        out["signature"] += delta.get("reasoning_signature") or ""
        for tc in delta.get("tool_calls") or ():
            entry = out["tools"].setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in tc:
                assert entry["id"] is None, "only the opening delta carries the id"
                entry["id"], entry["name"] = tc["id"], tc["function"]["name"]
            entry["arguments"] += tc["function"].get("arguments") or ""
        if choice["finish_reason"]:
            out["finish"] = choice["finish_reason"]
    return out


def decode(data: bytes, pieces: list[bytes]) -> tuple[list[dict[str, Any]], AnthropicStreamDecoder]:
    decoder = AnthropicStreamDecoder("claude", "claude-sonnet-4-5")
    chunks: list[dict[str, Any]] = []
    for piece in pieces:
        chunks.extend(decoder.feed(piece))
    chunks.extend(decoder.close())
    return chunks, decoder


def test_stream_decoder_on_the_fakes_stream_split_everywhere(up: FakeUpstream, url: str) -> None:
    reply = Reply(
        content="Looking it up.",
        reasoning="The user wants weather.",
        tool_calls=[{"name": "weather", "arguments": {"city": "Paris"}}, {"name": "time", "arguments": {"tz": "CET"}}],
        cached_tokens=2,
    )
    data = fake_stream(url, up, reply)
    assert b"event: ping\n" in data and b"input_json_delta" in data and b"signature_delta" in data

    whole, decoder = decode(data, [data])
    assert decoder.done
    assert whole[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert whole[-1]["choices"] == [] and whole[-2]["choices"][0]["finish_reason"] == "tool_calls"
    got = collect(whole)
    assert got["content"] == "Looking it up."
    assert got["reasoning"] == "The user wants weather." and got["signature"]
    assert [(t["name"], orjson.loads(t["arguments"])) for t in got["tools"].values()] == [
        ("weather", {"city": "Paris"}),
        ("time", {"tz": "CET"}),
    ]
    assert all(t["id"].startswith("toolu_") for t in got["tools"].values())
    usage = got["usage"]
    assert usage["prompt_tokens"] == 5 and usage["prompt_tokens_details"] == {
        "cached_tokens": 2,
        "cache_creation_tokens": 0,
    }
    assert usage["completion_tokens"] == 3 + (5 + 1) + (5 + 1)  # pieces + per call its fragments + 1

    # The same chunks whatever the split: every two-piece split, and one byte at a time.
    for k in range(1, len(data)):
        chunks, decoder = decode(data, [data[:k], data[k:]])
        assert decoder.done and collect(chunks) == got, k
    chunks, decoder = decode(data, [data[i : i + 1] for i in range(len(data))])
    assert decoder.done and collect(chunks) == got


def test_stream_decoder_text_and_max_tokens(up: FakeUpstream, url: str) -> None:
    data = fake_stream(url, up, Reply(), messages=[user("echo: one two three four")], max_tokens=2)
    chunks, decoder = decode(data, [data[i : i + 7] for i in range(0, len(data), 7)])
    got = collect(chunks)
    assert decoder.done and got["content"] == "one two" and got["finish"] == "length" and got["tools"] == {}
    assert got["usage"]["completion_tokens"] == 2


def test_stream_cut_before_message_stop_is_not_done(up: FakeUpstream, url: str) -> None:
    data = fake_stream(url, up, Reply(content="a b c"))
    cut = data[: data.index(b"event: message_stop")]
    chunks, decoder = decode(cut, [cut])
    # message_delta carried the finish and the final usage; only message_stop ends the stream
    assert not decoder.done and all(c["choices"] or c["usage"] for c in chunks)


@pytest.mark.parametrize(
    ("kind", "error", "status"),
    [
        ("overloaded_error", UpstreamUnavailable, 503),
        ("rate_limit_error", RateLimited, 429),
        ("api_error", UpstreamError, 502),
    ],
)
def test_stream_error_event(kind: str, error: type[Exception], status: int) -> None:
    # https://docs.anthropic.com/en/api/messages-streaming#error-events
    data = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":'
        b'"assistant","content":[],"model":"m","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1,'
        b'"output_tokens":1}}}\n\nevent: ping\ndata: {"type": "ping"}\n\n'
        b'event: future_event\ndata: {"type":"future_event"}\n\n'
    )
    decoder = AnthropicStreamDecoder("claude", "m")
    assert len(decoder.feed(data)) == 1
    event = b'event: error\ndata: {"type":"error","error":{"type":"' + kind.encode() + b'","message":"Overloaded"}}\n\n'
    with pytest.raises(error) as info:
        decoder.feed(event)
    assert info.value.status == status and "claude" in info.value.message  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "error", "gateway_status"),
    [
        (400, UpstreamError, 400),
        (401, UpstreamError, 502),
        (403, UpstreamError, 502),
        (404, UpstreamError, 404),
        (413, UpstreamError, 413),
        (429, RateLimited, 429),
        (500, UpstreamError, 502),
        (529, UpstreamUnavailable, 503),
    ],
)
def test_error_statuses_map_to_gateway_errors(
    up: FakeUpstream, url: str, status: int, error: type[Exception], gateway_status: int
) -> None:
    up.enqueue(Reply(status=status, error_message=f"scripted {status} mentioning {KEY}", retry_after=3))
    p = provider(url)
    body = p.build_request(call(), {"model": "x", "messages": [user("a")]})
    resp = httpx.post(url + "/v1/messages", content=body, headers=p.request_headers(call(), KEY, url, body))
    assert resp.status_code == status and resp.headers["retry-after"] == "3"
    data = resp.json()
    assert data["type"] == "error" and data["request_id"].startswith("req_")
    assert p.error_message(resp.content) == f"scripted {status} mentioning {KEY}"
    exc = p.parse_error(status, resp.content, 3.0, Scrubber([KEY]))
    assert type(exc) is error and exc.status == gateway_status
    assert KEY not in exc.message
    if status == 429:
        assert exc.retry_after == 3.0


def test_wrong_key_401_never_carries_the_key(up: FakeUpstream, url: str) -> None:
    p = provider(url)
    wrong = "sk-ant-wrong-key-42424242"
    body = p.build_request(call(), {"model": "x", "messages": [user("a")]})
    resp = httpx.post(url + "/v1/messages", content=body, headers=p.request_headers(call(), wrong, url, body))
    assert resp.status_code == 401
    assert resp.json()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    exc = p.parse_error(401, resp.content, None, Scrubber([wrong]))
    assert exc.status == 502 and exc.code == "upstream_auth_error" and wrong not in str(exc)


def test_error_message_of_other_bodies() -> None:
    p = provider()
    assert p.error_message(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert p.error_message(b'{"type":"error","error":{"type":"api_error","message":"boom"}}') == "boom"


# ----------------------------------------------------------------------------------------- request plumbing


def test_urls_headers_and_passthrough_body() -> None:
    p = provider("https://api.anthropic.com/", anthropic_version="2024-01-01")
    assert p.url_for("chat", "m") == p.url_for("messages", "m") == "https://api.anthropic.com/v1/messages"
    assert p.url_for("count_tokens", "m") == "https://api.anthropic.com/v1/messages/count_tokens"

    translated = p.request_headers(call(headers={b"anthropic-beta": b"ignored"}), KEY, "", b"")
    assert translated == {
        "content-type": "application/json",
        "anthropic-version": "2024-01-01",
        "x-team": "t1",
        "x-api-key": KEY,
    }
    client_headers = {b"anthropic-version": b"2023-06-01", b"anthropic-beta": b"interleaved-thinking-2025-05-14"}
    passthrough = p.request_headers(call(dialect="anthropic", headers=client_headers), KEY, "", b"")
    assert passthrough["anthropic-version"] == "2023-06-01"
    assert passthrough["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert p.request_headers(call(), None, "", b"").get("x-api-key") is None
    assert "anthropic-beta" not in p.request_headers(call(), KEY, "", b"")  # the cached headers stayed clean

    body = {"model": "public-name", "max_tokens": 10, "messages": [user("a")], "metadata": {"user_id": "u"}}
    sent = orjson.loads(p.prepare_body(call(body, dialect="anthropic")))
    assert sent == {**body, "model": "claude-sonnet-4-5"} and body["model"] == "public-name"


def test_options_are_checked() -> None:
    text = """\
providers:
  - name: claude
    type: anthropic
    api_key: env://ANTHROPIC
    options: {anthropic_version: "2023-06-01", default_max_tokens: 0, beta: x}
"""
    _, issues = parse_config(text)
    got = sorted(str(i) for i in issues if not i.warning)
    assert any("default_max_tokens" in g for g in got) and any("beta" in g and "unknown key" in g for g in got)
    assert provider().options.default_max_tokens == 4096


# ----------------------------------------------------------------------------------------- fake fidelity


def sdk(url: str, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def test_sdk_create_text(up: FakeUpstream, url: str) -> None:
    msg = sdk(url).messages.create(
        model="claude-fake-1",
        max_tokens=100,
        system="Be kind.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "echo: hello there"}]}],
        stop_sequences=["never"],
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.content[0].type == "text" and msg.content[0].text == "hello there"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.usage.input_tokens == (2 + 3) + (3 + 3) and msg.usage.output_tokens == 2
    assert msg.usage.cache_read_input_tokens == 0 and msg.usage.cache_creation_input_tokens == 0
    assert up.requests[-1].headers["anthropic-version"]


def test_sdk_stop_sequence_and_max_tokens(up: FakeUpstream, url: str) -> None:
    msg = sdk(url).messages.create(
        model="m", max_tokens=100, messages=[user("echo: one two STOP three")], stop_sequences=["STOP"]
    )
    assert msg.content[0].text == "one two " and msg.stop_reason == "stop_sequence" and msg.stop_sequence == "STOP"  # type: ignore[union-attr]
    msg = sdk(url).messages.create(model="m", max_tokens=1, messages=[user("echo: one two")])
    assert msg.stop_reason == "max_tokens" and msg.content[0].text == "one"  # type: ignore[union-attr]


def test_sdk_tool_use_round_trip(up: FakeUpstream, url: str) -> None:
    tools: Any = [{"name": "weather", "description": "w", "input_schema": WEATHER_TOOL["function"]["parameters"]}]  # type: ignore[index]
    up.enqueue(Reply(tool_calls=[{"name": "weather", "arguments": {"city": "Paris"}}], cached_tokens=1))
    msg = sdk(url).messages.create(model="m", max_tokens=100, tools=tools, messages=[user("weather?")])
    assert msg.stop_reason == "tool_use" and msg.usage.cache_read_input_tokens == 1
    use = msg.content[0]
    assert use.type == "tool_use" and use.name == "weather" and use.input == {"city": "Paris"}
    assert use.id.startswith("toolu_")
    # The tool result goes back; the fake checks the pairing.
    follow: Any = [
        user("weather?"),
        {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]},
    ]
    msg = sdk(url).messages.create(model="m", max_tokens=100, tools=tools, messages=follow)
    assert msg.stop_reason == "end_turn"
    stray: Any = [user("a"), {"role": "assistant", "content": "b"}, follow[2]]
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk(url).messages.create(model="m", max_tokens=100, messages=stray)
    assert "unexpected `tool_use_id`" in str(info.value)


def test_sdk_stream_with_thinking_and_tools(up: FakeUpstream, url: str) -> None:
    up.enqueue(
        Reply(
            content="On it.",
            reasoning="Need the tool.",
            tool_calls=[{"name": "weather", "arguments": '{"city": "Rome"}'}],
        )
    )
    with sdk(url).messages.stream(
        model="m",
        max_tokens=2000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[user("weather in Rome")],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    thinking, text, tool = final.content
    assert thinking.type == "thinking" and thinking.thinking == "Need the tool." and thinking.signature
    assert text.type == "text" and text.text == "On it."
    assert tool.type == "tool_use" and tool.input == {"city": "Rome"}
    assert final.stop_reason == "tool_use" and final.usage.output_tokens > 0 and final.usage.input_tokens == 6


def test_sdk_stream_text(up: FakeUpstream, url: str) -> None:
    with sdk(url).messages.stream(model="m", max_tokens=50, messages=[user("echo: streaming works")]) as stream:
        assert "".join(stream.text_stream) == "streaming works"
        assert stream.get_final_message().stop_reason == "end_turn"


def test_sdk_count_tokens(up: FakeUpstream, url: str) -> None:
    count = sdk(url).messages.count_tokens(model="m", system="sys prompt", messages=[user("a b c")])
    assert count.input_tokens == (3 + 3) + (2 + 3)


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, anthropic.BadRequestError),
        (403, anthropic.PermissionDeniedError),
        (404, anthropic.NotFoundError),
        (413, anthropic.APIStatusError),
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (529, anthropic.OverloadedError),
    ],
)
def test_sdk_error_types(up: FakeUpstream, url: str, status: int, exc: type[Exception]) -> None:
    expected = {
        400: "invalid_request_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        529: "overloaded_error",
    }[status]
    up.enqueue(Reply(status=status, retry_after=2 if status == 429 else None))
    with pytest.raises(exc) as info:
        sdk(url).messages.create(model="m", max_tokens=5, messages=[user("a")])
    err = cast(anthropic.APIStatusError, info.value)
    assert err.status_code == status and cast(dict[str, Any], err.body)["error"]["type"] == expected
    assert err.response.headers["request-id"].startswith("req_")
    if status == 429:
        assert err.response.headers["retry-after"] == "2"


def test_sdk_auth(up: FakeUpstream, url: str) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        sdk(url, "sk-ant-nope").messages.create(model="m", max_tokens=5, messages=[user("a")])
    assert "sk-ant-nope" not in str(info.value.body)


def post(url: str, body: Any, **headers: str) -> httpx.Response:
    base = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    return httpx.post(url + "/v1/messages", content=orjson.dumps(body), headers={**base, **headers})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_tokens": 5, "messages": [user("a")]}, "model: Field required"),
        ({"model": "m", "messages": [user("a")]}, "max_tokens: Field required"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages: at least one message is required"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "s"}, user("a")]},
            'Unexpected role "system"',
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "tool", "content": "s"}]},
            "messages.0.role: Input should be 'user' or 'assistant'",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": "s"}, user("a")]},
            'first message must use the "user" role',
        ),
        ({"model": "m", "max_tokens": 5, "messages": [user("")]}, "non-empty content"),
        (
            {
                "model": "m",
                "max_tokens": 1500,
                "messages": [user("a")],
                "thinking": {"type": "enabled", "budget_tokens": 2000},
            },
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
    ],
)
def test_fake_validates_like_anthropic(up: FakeUpstream, url: str, body: dict[str, Any], message: str) -> None:
    resp = post(url, body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]
    assert up.requests[-1].json() == body  # recorded before it was refused


def test_fake_needs_version_header_and_key(up: FakeUpstream, url: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [user("a")]}
    resp = httpx.post(url + "/v1/messages", json=body, headers={"x-api-key": KEY})
    assert resp.status_code == 400 and "anthropic-version" in resp.json()["error"]["message"]
    resp = httpx.post(url + "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "authentication_error"


def test_fake_faults(up: FakeUpstream, url: str) -> None:
    with pytest.raises(httpx.HTTPError):
        fake_stream(url, up, Reply(content="a b c d e f", fault="reset", chunks_before_fault=3))


# ----------------------------------------------------------------------------------------- through the gateway


ANTHROPIC_PROVIDER = """\
  - name: claude
    type: anthropic
    base_url: {upstream}
    api_key: env://TEST_UPSTREAM_KEY
"""


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.conftest import run_gateway

    with run_gateway(tmp_path_factory.mktemp("anthropic"), upstream_url) as gw:
        text = gw.config_path.read_text()
        text = text.replace("models:\n", ANTHROPIC_PROVIDER.format(upstream=upstream_url) + "models:\n", 1)
        text = text.replace("models:\n", "models:\n  - {name: claude-*, provider: claude}\n", 1)
        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        yield gw


def test_gateway_openai_client_to_anthropic(gw: Any, upstream: FakeUpstream) -> None:
    import openai

    from tests.conftest import CANARY_KEY

    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
    reply = client.chat.completions.create(
        model="claude-haiku", messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "echo: hi"}]
    )
    assert reply.choices[0].message.content == "hi" and reply.choices[0].finish_reason == "stop"
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == CANARY_KEY
    assert sent.json()["system"] == [{"type": "text", "text": "s"}] and sent.json()["max_tokens"] == 4096

    upstream.enqueue(Reply(tool_calls=[{"name": "weather", "arguments": {"city": "Oslo"}}]))
    chunks = list(
        client.chat.completions.create(
            model="claude-haiku",
            messages=[{"role": "user", "content": "weather?"}],
            tools=[cast(Any, WEATHER_TOOL)],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert calls[0].function and calls[0].function.name == "weather"
    assert orjson.loads("".join(tc.function.arguments or "" for tc in calls if tc.function)) == {"city": "Oslo"}
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 4

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "a"}], seed=1)
    assert "seed" in str(info.value)


def test_gateway_anthropic_client_passes_through(gw: Any, upstream: FakeUpstream) -> None:
    from tests.conftest import CANARY_KEY

    client = anthropic.Anthropic(
        base_url=gw.url,
        api_key=gw.keys["alice"],
        max_retries=0,
        default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
    )
    msg = client.messages.create(
        model="claude-haiku", max_tokens=50, system="s", messages=[{"role": "user", "content": "echo: passed"}]
    )
    assert msg.content[0].type == "text" and msg.content[0].text == "passed"
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == CANARY_KEY
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert sent.headers["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION
    assert sent.json() == {
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "echo: passed"}],
        "model": "claude-haiku",
        "system": "s",
    }
    upstream.enqueue(Reply(tool_calls=[{"name": "weather", "arguments": {"city": "Oslo"}}]))
    with client.messages.stream(
        model="claude-haiku", max_tokens=50, messages=[{"role": "user", "content": "weather?"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].type == "tool_use"
    assert final.content[0].input == {"city": "Oslo"}
    count = client.messages.count_tokens(model="claude-haiku", messages=[{"role": "user", "content": "a b"}])
    assert count.input_tokens == 5 and upstream.requests[-1].path == "/v1/messages/count_tokens"
