"""Google Gemini: translation both ways, the SSE decoder on the fake's real bytes, errors, the fake over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest

from sluicegate.config.model import ProviderConfig, ServerConfig
from sluicegate.errors import BadRequest, NotFound, RateLimited, SluicegateError, UpstreamError, UpstreamUnavailable
from sluicegate.providers.base import provider_types
from sluicegate.providers.gemini import GeminiProvider, GeminiStreamDecoder, build_body
from sluicegate.scrub import Scrubber
from sluicegate.testing import FakeUpstream, Reply, serve_in_thread
from tests.conftest import CANARY_KEY, RunningGateway, assert_openai_error, run_gateway

KEY = "AIzaSy-test-key-0123456789abcdef"
MODEL = "gemini-2.5-flash"


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def fake() -> FakeUpstream:
    return FakeUpstream(required_key=KEY)


@pytest.fixture(scope="module")
def fake_url(fake: FakeUpstream) -> Iterator[str]:
    with serve_in_thread(fake) as url:
        yield url


@pytest.fixture
def up(fake: FakeUpstream, fake_url: str) -> FakeUpstream:
    fake.reset()
    return fake


def provider(base_url: str | None = None, headers: dict[str, str] | None = None) -> GeminiProvider:
    ptype = provider_types()["gemini"]
    config = ProviderConfig(name="gem", type="gemini", base_url=base_url, headers=headers or {})
    made = ptype.factory(config, ptype.preset)
    assert isinstance(made, GeminiProvider)
    return made


def call(stream: bool = False, body: dict[str, Any] | None = None, dialect: str = "openai") -> Any:
    return SimpleNamespace(
        route=SimpleNamespace(upstream_model=MODEL),
        model_requested="public-gemini",
        stream=stream,
        dialect=dialect,
        body=body or {},
        snapshot=SimpleNamespace(server=ServerConfig()),
    )


def post(p: GeminiProvider, chat: dict[str, Any], stream: bool = False, key: str = KEY) -> httpx.Response:
    url = p.url_for("chat", MODEL, stream)
    body = p.build_request(call(stream), chat)
    return httpx.post(url, content=body, headers=p.request_headers(call(stream), key, url, body), timeout=10)


def raw_stream(p: GeminiProvider, chat: dict[str, Any]) -> bytes:
    return post(p, chat, stream=True).content


def decode(raw: bytes, splits: list[int], expected: int = 1) -> tuple[list[dict[str, Any]], bool]:
    decoder = GeminiStreamDecoder("gem", MODEL, expected)
    chunks: list[dict[str, Any]] = []
    start = 0
    for end in [*splits, len(raw)]:
        chunks.extend(decoder.feed(raw[start:end]))
        start = end
    chunks.extend(decoder.close())
    return chunks, decoder.done


def summary(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client reassembles from neutral chunks (first choice)."""
    out: dict[str, Any] = {"content": "", "reasoning": "", "calls": {}, "finish": None, "usage": None, "roles": []}
    for c in chunks:
        if not c["choices"]:
            out["usage"] = c["usage"]
            continue
        choice = c["choices"][0]
        delta = choice["delta"]
        if "role" in delta:
            out["roles"].append(delta["role"])
        out["content"] += delta.get("content") or ""
        out["reasoning"] += delta.get("reasoning_content") or ""
        for tc in delta.get("tool_calls") or ():
            entry = out["calls"].setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
            entry["id"] = tc.get("id", entry["id"])
            entry["name"] += tc["function"].get("name", "")
            entry["arguments"] += tc["function"].get("arguments", "")
        if choice["finish_reason"]:
            out["finish"] = choice["finish_reason"]
    return out


def unsupported(exc: pytest.ExceptionInfo[BadRequest]) -> str:
    assert exc.value.code == "unsupported_feature" and exc.value.status == 400
    return exc.value.message


# ------------------------------------------------------------------------------------ provider basics


def test_registration_urls_and_headers() -> None:
    p = provider(headers={"x-extra": "1"})
    assert p.base_url == "https://generativelanguage.googleapis.com/v1beta"
    assert p.native_dialect == "gemini" and p.label == "Google Gemini"
    assert p.url_for("chat", MODEL) == f"{p.base_url}/models/{MODEL}:generateContent"
    assert p.url_for("chat", MODEL, True) == f"{p.base_url}/models/{MODEL}:streamGenerateContent?alt=sse"
    assert p.url_for("chat", "tuned/x y") == f"{p.base_url}/models/tuned%2Fx%20y:generateContent"
    assert p.url_for("chat", MODEL) is p.url_for("chat", MODEL)  # cached
    with pytest.raises(NotFound):
        p.url_for("embeddings", MODEL)
    headers = p.request_headers(call(), KEY, p.url_for("chat", MODEL), b"{}")
    assert headers == {"Content-Type": "application/json", "x-extra": "1", "x-goog-api-key": KEY}
    assert KEY not in p.url_for("chat", MODEL, True)


# ------------------------------------------------------------------------------------ request translation

PNG = "iVBORw0KGgoAAAANSUhEUg=="
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_system_images_and_merging() -> None:
    body = build_body(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Look:"},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg?size=2"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/render"}},
                        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                        {"type": "text", "text": "What is it?"},
                    ],
                },
                {"role": "assistant", "content": "Un chat."},
                {"role": "assistant", "content": ""},  # empty: no parts, nothing sent
                {"role": "user", "content": "Merci"},
            ]
        }
    )
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]}
    assert body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "Look:"},
                {"inlineData": {"mimeType": "image/png", "data": PNG}},
                {"fileData": {"fileUri": "https://example.com/cat.jpg?size=2", "mimeType": "image/jpeg"}},
                {"fileData": {"fileUri": "https://example.com/render"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                {"text": "What is it?"},
            ],
        },
        {"role": "model", "parts": [{"text": "Un chat."}]},
        {"role": "user", "parts": [{"text": "Merci"}]},
    ]
    assert "generationConfig" not in body and "tools" not in body


def test_multi_turn_tools_resolve_function_names() -> None:
    chat = {
        "messages": [
            {"role": "user", "content": "Weather in Paris and time in Rome?"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "I should call both.",
                "reasoning_signature": "c2lnLTE=",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    },
                    {"id": "call_b", "type": "function", "function": {"name": "clock", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
            {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21, "sky": "clear"}'},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": WEATHER}},
            {"type": "function", "function": {"name": "clock"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    }
    body = build_body(chat)
    assert body["contents"][1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnLTE="},
            {"functionCall": {"name": "clock", "args": {}}},
        ],
    }
    # Both tool results and the next user text share one user content; names come from the calls.
    assert body["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "clock", "response": {"result": "12:00"}}},
            {"functionResponse": {"name": "weather", "response": {"result": {"temp": 21, "sky": "clear"}}}},
            {"text": "Thanks"},
        ],
    }
    assert len(body["contents"]) == 3
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {"name": "weather", "description": "Weather", "parametersJsonSchema": WEATHER},
                {"name": "clock"},
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}}


@pytest.mark.parametrize(
    ("choice", "config"),
    [("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"})],
)
def test_tool_choice_modes(choice: str, config: dict[str, Any]) -> None:
    body = build_body({"messages": [{"role": "user", "content": "x"}], "tool_choice": choice})
    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_generation_config_and_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = build_body(
        {
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 50,
            "max_tokens": 99,
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "stop": "END",
            "n": 2,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
            "thinking_budget": 2048,
            "reasoning_effort": "high",  # the explicit budget wins
            "user": "u-1",
            "metadata": {"k": "v"},
            "stream": True,
        }
    )
    assert body["generationConfig"] == {
        "maxOutputTokens": 50,
        "temperature": 0.2,
        "topP": 0.9,
        "topK": 40,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "candidateCount": 2,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
        "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True},
    }
    json_mode = build_body({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})
    assert json_mode["generationConfig"] == {"responseMimeType": "application/json"}
    text = build_body({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"}})
    assert "generationConfig" not in text


@pytest.mark.parametrize(
    ("effort", "thinking"),
    [
        ("none", {"thinkingBudget": 0}),
        ("minimal", {"thinkingBudget": 512, "includeThoughts": True}),
        ("low", {"thinkingBudget": 1024, "includeThoughts": True}),
        ("medium", {"thinkingBudget": 8192, "includeThoughts": True}),
        ("high", {"thinkingBudget": 24576, "includeThoughts": True}),
    ],
)
def test_reasoning_effort_maps_to_a_thinking_budget(effort: str, thinking: dict[str, Any]) -> None:
    body = build_body({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": effort})
    assert body["generationConfig"]["thinkingConfig"] == thinking


@pytest.mark.parametrize(
    ("extra", "feature"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"audio": {"voice": "alloy"}}, "audio output"),
        ({"modalities": ["text", "audio"]}, "output modalities"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"functions": [{"name": "f"}]}, "legacy functions"),
        ({"tools": [{"type": "web_search"}]}, "tools of type 'web_search'"),
        ({"tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
        ({"reasoning_effort": "xhigh"}, "reasoning_effort 'xhigh'"),
        ({"response_format": {"type": "grammar"}}, "response_format 'grammar'"),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}, "file ids"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, "'video'"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
            "media URLs",
        ),
        (
            {
                "messages": [
                    {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
                ]
            },
            "system",
        ),
    ],
)
def test_what_cannot_be_carried_is_refused(extra: dict[str, Any], feature: str) -> None:
    chat: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(BadRequest) as exc:
        build_body(chat)
    message = unsupported(exc)
    assert feature in message and "Google Gemini" in message


def test_tool_result_for_an_unknown_call_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as exc:
        build_body(
            {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}]}
        )
    assert exc.value.param == "messages[1].tool_call_id"
    # A legacy function message names its function itself.
    body = build_body(
        {"messages": [{"role": "user", "content": "x"}, {"role": "function", "name": "f", "content": "1"}]}
    )
    assert body["contents"][0]["parts"][1] == {"functionResponse": {"name": "f", "response": {"result": 1}}}


# ------------------------------------------------------------------------------------ response translation


def test_parse_response_candidates_thoughts_calls_and_usage() -> None:
    data = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Thinking about it.", "thought": True},
                        {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "U0lH"},
                        {"functionCall": {"id": "fc-7", "name": "clock", "args": {}}},
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            },
            {
                "content": {"role": "model", "parts": [{"text": "Hi"}, {"text": " there"}]},
                "finishReason": "MAX_TOKENS",
                "index": 1,
            },
        ],
        "usageMetadata": {
            "promptTokenCount": 100,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 30,
            "cachedContentTokenCount": 64,
            "totalTokenCount": 150,
        },
        "modelVersion": "gemini-2.5-flash-001",
        "responseId": "resp123",
    }
    out = provider().parse_response(data, call())
    assert out["id"] == "chatcmpl-resp123" and out["model"] == "gemini-2.5-flash-001"
    assert out["object"] == "chat.completion"
    first, second = out["choices"]
    message = first["message"]
    assert first["finish_reason"] == "tool_calls" and first["index"] == 0
    assert message["content"] is None and message["reasoning_content"] == "Thinking about it."
    assert message["reasoning_signature"] == "U0lH"
    calls = message["tool_calls"]
    assert calls[0]["id"].startswith("call_") and len(calls[0]["id"]) > 10
    assert calls[0]["function"] == {"name": "weather", "arguments": '{"city":"Paris"}'}
    assert calls[1]["id"] == "fc-7" and calls[1]["function"] == {"name": "clock", "arguments": "{}"}
    assert second == {"index": 1, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "length"}
    assert out["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
    ],
)
def test_finish_reasons(reason: str, finish: str) -> None:
    data = {"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"}, "finishReason": reason}]}
    out = provider().parse_response(data, call())
    assert out["choices"][0]["finish_reason"] == finish
    assert out["model"] == MODEL and "usage" not in out


def test_blocked_prompt_is_a_content_filter_completion() -> None:
    data = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}}
    out = provider().parse_response(data, call())
    assert out["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter"}
    ]
    assert out["usage"]["prompt_tokens"] == 8 and out["usage"]["completion_tokens"] == 0
    with pytest.raises(UpstreamError):
        provider().parse_response([1], call())
    # candidates holding no object: an empty answer, not a crash
    assert provider().parse_response({"candidates": [None, 3]}, call())["choices"][0]["message"]["content"] == ""


# ------------------------------------------------------------------------------------ round trips over HTTP


def test_round_trip_through_the_fake(up: FakeUpstream, fake_url: str) -> None:
    p = provider(fake_url + "/v1beta")
    chat = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "echo: hello gemini"}],
        "max_tokens": 100,
    }
    resp = post(p, chat)
    assert resp.status_code == 200, resp.text
    out = p.parse_response(resp.json(), call())
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "hello gemini"}
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["model"] == MODEL
    # prompt: 5 words + 3 per content (system instruction included); completion: 2 pieces
    assert out["usage"] == {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    sent = up.requests[-1]
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent" and sent.query == ""
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.json()["generationConfig"] == {"maxOutputTokens": 100}


def test_round_trip_tool_calls_reasoning_and_cache(up: FakeUpstream, fake_url: str) -> None:
    p = provider(fake_url + "/v1beta")
    up.enqueue(
        Reply(
            tool_calls=[{"name": "weather", "arguments": {"city": "Paris"}}],
            reasoning="Need the weather.",
            reasoning_tokens=5,
            cached_tokens=4,
            completion_tokens=12,
        )
    )
    chat: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}],
        "tool_choice": "required",
    }
    out = p.parse_response(post(p, chat).json(), call())
    message = out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert message["reasoning_content"] == "Need the weather."
    assert message["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city":"Paris"}'}
    assert message["reasoning_signature"]
    assert out["usage"]["completion_tokens"] == 12
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 5}
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    # The next turn carries the call, its signature and the result back; the fake accepts it.
    follow = {
        "messages": [
            *chat["messages"],
            message,
            {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": '{"temp": 20}'},
        ],
        "tools": chat["tools"],
    }
    resp = post(p, follow)
    assert resp.status_code == 200, resp.text
    sent = up.requests[-1].json()["contents"]
    assert sent[1]["parts"][0]["thoughtSignature"] == message["reasoning_signature"]
    assert sent[2]["parts"] == [{"functionResponse": {"name": "weather", "response": {"result": {"temp": 20}}}}]


def test_candidates_and_max_tokens(up: FakeUpstream, fake_url: str) -> None:
    p = provider(fake_url + "/v1beta")
    out = p.parse_response(
        post(p, {"messages": [{"role": "user", "content": "echo: a b c d"}], "n": 2, "max_tokens": 2}).json(), call()
    )
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert all(c["message"]["content"] == "a b" and c["finish_reason"] == "length" for c in out["choices"])


# ------------------------------------------------------------------------------------ stream decoder


def test_stream_decoder_at_every_byte_boundary(up: FakeUpstream, fake_url: str) -> None:
    p = provider(fake_url + "/v1beta")
    up.enqueue(Reply(content="Hello from the Gemini stream", reasoning="Let me think.", reasoning_tokens=3))
    raw = raw_stream(p, {"messages": [{"role": "user", "content": "hi"}]})
    assert raw.startswith(b"data: {") and b"\r\n\r\n" in raw and b"[DONE]" not in raw
    assert raw.count(b"data: ") == 3 + 5  # thought pieces + answer pieces, one event each
    expected = None
    for i in range(len(raw) + 1):
        chunks, done = decode(raw, [i])
        got = summary(chunks)
        assert done, i
        if expected is None:
            expected = got
        assert got == expected, i
    assert expected is not None
    assert expected["roles"] == ["assistant"]
    assert expected["content"] == "Hello from the Gemini stream"
    assert expected["reasoning"] == "Let me think."
    assert expected["finish"] == "stop"
    assert expected["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}
    assert expected["usage"]["completion_tokens"] == 5  # thoughts included, as Reply.completion_tokens counts them
    # one byte at a time too; the role chunk comes first and the usage chunk last
    chunks, done = decode(raw, list(range(1, len(raw))))
    assert done and summary(chunks) == expected
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["model"] == MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1


def test_stream_tool_calls_arrive_whole(up: FakeUpstream, fake_url: str) -> None:
    p = provider(fake_url + "/v1beta")
    up.enqueue(Reply(tool_calls=[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": [2, 3]}}]))
    raw = raw_stream(p, {"messages": [{"role": "user", "content": "go"}]})
    for i in range(0, len(raw) + 1, 7):
        chunks, done = decode(raw, [i, min(i + 3, len(raw))])
        got = summary(chunks)
        assert done and got["finish"] == "tool_calls"
        assert [(c["name"], c["arguments"]) for c in got["calls"].values()] == [("a", '{"x":1}'), ("b", '{"y":[2,3]}')]
        assert all(c["id"].startswith("call_") for c in got["calls"].values())
        assert sorted(got["calls"]) == [0, 1]


def test_stream_with_candidates(up: FakeUpstream, fake_url: str) -> None:
    p = provider(fake_url + "/v1beta")
    raw = raw_stream(p, {"messages": [{"role": "user", "content": "echo: one two three"}], "n": 2})
    chunks, done = decode(raw, [5, 50, 51], expected=2)
    assert done
    for index in (0, 1):
        text = "".join(
            c["choices"][0]["delta"].get("content") or ""
            for c in chunks
            if c["choices"] and c["choices"][0]["index"] == index
        )
        assert text == "one two three"
    finishes = [c["choices"][0]["index"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert sorted(finishes) == [0, 1]
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_stream_cut_error_and_blocked_prompt(up: FakeUpstream, fake_url: str) -> None:
    p = provider(fake_url + "/v1beta")
    up.enqueue(Reply(content="a b c d e f", fault="reset", chunks_before_fault=2))
    with pytest.raises(httpx.HTTPError):
        raw_stream(p, {"messages": [{"role": "user", "content": "x"}]})
    # the part that arrived decodes, but the stream is not done (a cut)
    partial = b'data: {"candidates":[{"content":{"parts":[{"text":"a"}],"role":"model"},"index":0}]}\r\n\r\n'
    chunks, done = decode(partial, [])
    assert not done and summary(chunks)["content"] == "a"
    error = b'data: {"error":{"code":500,"message":"An internal error has occurred.","status":"INTERNAL"}}\r\n\r\n'
    with pytest.raises(UpstreamError) as exc:
        decode(partial + error, [])
    assert "An internal error has occurred." in exc.value.message
    blocked = (
        b'data: {"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},"usageMetadata":{"promptTokenCount":4}}\r\n\r\n'
    )
    chunks, done = decode(blocked, [])
    assert done and summary(chunks)["finish"] == "content_filter" and chunks[-1]["usage"]["prompt_tokens"] == 4


# ------------------------------------------------------------------------------------ errors


def error_for(p: GeminiProvider, resp: httpx.Response, secret: str = KEY) -> SluicegateError:
    ra = resp.headers.get("retry-after")
    return p.parse_error(resp.status_code, resp.content, float(ra) if ra else None, Scrubber([secret]))


def test_bad_and_missing_keys_are_auth_failures(up: FakeUpstream, fake_url: str) -> None:
    p = provider(fake_url + "/v1beta")
    chat = {"messages": [{"role": "user", "content": "x"}]}
    wrong = post(p, chat, key="AIzaSy-wrong-key-999")
    assert wrong.status_code == 400
    body = wrong.json()["error"]
    assert body["status"] == "INVALID_ARGUMENT" and body["message"] == "API key not valid. Please pass a valid API key."
    assert body["details"][0]["reason"] == "API_KEY_INVALID"
    err = error_for(p, wrong, "AIzaSy-wrong-key-999")
    assert isinstance(err, UpstreamError) and err.code == "upstream_auth_error" and err.status == 502
    assert "AIzaSy" not in err.message
    missing = post(p, chat, key="")
    assert missing.status_code == 403 and missing.json()["error"]["status"] == "PERMISSION_DENIED"
    assert error_for(p, missing).code == "upstream_auth_error"
    # the key may also come as ?key= (the provider never sends it so)
    ok = httpx.post(p.url_for("chat", MODEL) + f"?key={KEY}", content=orjson.dumps(build_body(chat)), timeout=5)
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("status", "kind", "code", "gateway_status", "google"),
    [
        (400, UpstreamError, "upstream_bad_request", 400, "INVALID_ARGUMENT"),
        (404, UpstreamError, "upstream_not_found", 404, "NOT_FOUND"),
        (429, RateLimited, "upstream_rate_limited", 429, "RESOURCE_EXHAUSTED"),
        (500, UpstreamError, "upstream_error", 502, "INTERNAL"),
        (503, UpstreamUnavailable, "upstream_unavailable", 503, "UNAVAILABLE"),
    ],
)
def test_error_statuses_map_to_gateway_errors(
    up: FakeUpstream, fake_url: str, status: int, kind: type, code: str, gateway_status: int, google: str
) -> None:
    p = provider(fake_url + "/v1beta")
    up.enqueue(Reply(status=status, retry_after=7 if status == 429 else None))
    resp = post(p, {"messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["code"] == status and error["status"] == google and error["message"]
    err = error_for(p, resp)
    assert type(err) is kind and err.code == code and err.status == gateway_status
    assert error["message"][:40] in err.message and KEY not in err.message
    if status == 429:
        assert "retry-after" not in resp.headers  # Google says it in the body
        assert err.retry_after == 7.0


def test_upstream_validation_errors_reach_the_client(up: FakeUpstream, fake_url: str) -> None:
    p = provider(fake_url + "/v1beta")
    url = p.url_for("chat", MODEL)
    headers = {"x-goog-api-key": KEY}
    cases = [
        ({"contents": []}, "contents is not specified"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
        ({"contents": [{"role": "user", "parts": []}]}, "must not be empty"),
        ({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "model": "x"}, 'Unknown name "model"'),
        ({"contents": [{"role": "user", "parts": [{"txt": "x"}]}]}, 'Unknown name "txt"'),
        (
            {"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"max_tokens": 1}},
            "max_tokens",
        ),
    ]
    for body, words in cases:
        resp = httpx.post(url, content=orjson.dumps(body), headers=headers, timeout=5)
        assert resp.status_code == 400, body
        err = error_for(p, resp)
        assert err.status == 400 and words in err.message, (body, err.message)
    garbage = httpx.post(url, content=b"{nope", headers=headers, timeout=5)
    assert garbage.status_code == 400 and "Invalid JSON payload" in garbage.json()["error"]["message"]


# ------------------------------------------------------------------ the fake's stream forms and faults


def test_fake_streams_a_json_array_without_alt_sse(up: FakeUpstream, fake_url: str) -> None:
    url = f"{fake_url}/v1beta/models/{MODEL}:streamGenerateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "echo: x y z"}]}]}
    resp = httpx.post(url, content=orjson.dumps(body), headers={"x-goog-api-key": KEY}, timeout=5)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    events = resp.json()
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == "x y z"
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] == 3
    assert all("finishReason" not in e["candidates"][0] for e in events[:-1])


def test_fake_faults(up: FakeUpstream, fake_url: str) -> None:
    p = provider(fake_url + "/v1beta")
    chat = {"messages": [{"role": "user", "content": "x"}]}
    up.enqueue(Reply(fault="reset"))
    with pytest.raises(httpx.HTTPError):
        post(p, chat)
    up.enqueue(Reply(fault="hang"))
    with pytest.raises(httpx.ReadTimeout):
        url = p.url_for("chat", MODEL)
        httpx.post(url, content=p.build_request(call(), chat), headers={"x-goog-api-key": KEY}, timeout=0.3)
    up.enqueue(Reply(content="one two three four", fault="reset", chunks_before_fault=2))
    got = b""
    with pytest.raises(httpx.HTTPError):
        url = p.url_for("chat", MODEL, True)
        with httpx.stream("POST", url, content=p.build_request(call(True), chat), headers={"x-goog-api-key": KEY}) as r:
            for data in r.iter_bytes():
                got += data
    chunks, done = decode(got, [])
    assert not done and summary(chunks)["content"] == "one two"
    up.enqueue(Reply(content="ok", usage=False))
    out = p.parse_response(post(p, chat).json(), call())
    assert out["choices"][0]["message"]["content"] == "ok" and "usage" not in out


# ------------------------------------------------------------------------------------ through the gateway

GEMINI_PROVIDER = """\
  - name: gem
    type: gemini
    base_url: {upstream}/v1beta
    api_key: env://TEST_UPSTREAM_KEY
"""


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("gemini"), upstream_url) as gw:
        text = gw.config_path.read_text()
        text = text.replace("models:\n", GEMINI_PROVIDER.format(upstream=upstream_url) + "models:\n", 1)
        text = text.replace("models:\n", f"models:\n  - {{name: gem-flash, provider: gem, model: {MODEL}}}\n", 1)
        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        yield gw


def test_gateway_openai_client_to_gemini(gw: RunningGateway, upstream: FakeUpstream) -> None:
    with gw.client() as client:
        resp = client.post(
            "/v1/chat/completions",
            json={"model": "gem-flash", "messages": [{"role": "user", "content": "echo: via the gateway"}]},
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == "via the gateway"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 3
    sent = upstream.requests[-1]
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
    assert sent.headers["x-goog-api-key"] == CANARY_KEY and "key=" not in sent.query
    audit = gw.last_audit()
    assert audit["provider"] == "gem" and audit["completion_tokens"] == 3


def test_gateway_stream_and_tools(gw: RunningGateway, upstream: FakeUpstream) -> None:
    request = {
        "model": "gem-flash",
        "messages": [{"role": "user", "content": "echo: streamed through gemini"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with gw.client() as client, client.stream("POST", "/v1/chat/completions", json=request) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    assert summary(chunks)["content"] == "streamed through gemini"
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert upstream.requests[-1].query == "alt=sse"

    upstream.enqueue(Reply(tool_calls=[{"name": "weather", "arguments": {"city": "Oslo"}}]))
    tools = [{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}]
    with gw.client() as client:
        resp = client.post(
            "/v1/chat/completions",
            json={"model": "gem-flash", "messages": [{"role": "user", "content": "Weather?"}], "tools": tools},
        )
    message = resp.json()["choices"][0]["message"]
    assert resp.json()["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city":"Oslo"}'}
    assert "reasoning_signature" not in message


def test_gateway_errors_and_refusals(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=429, retry_after=3))
    with gw.client() as client:
        resp = client.post(
            "/v1/chat/completions", json={"model": "gem-flash", "messages": [{"role": "user", "content": "x"}]}
        )
        error = assert_openai_error(resp, 429, "upstream_rate_limited")
        assert "quota" in error["message"]
        resp = client.post(
            "/v1/chat/completions",
            json={"model": "gem-flash", "messages": [{"role": "user", "content": "x"}], "logprobs": True},
        )
        error = assert_openai_error(resp, 400, "unsupported_feature")
        assert "logprobs" in error["message"]
