"""Cohere v2 chat: translation both ways, the SSE decoder on the fake's real streams, errors, the
fake over HTTP, and calls through the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import orjson
import pytest

from sluicegate.config.model import ProviderConfig, ServerConfig
from sluicegate.errors import BadRequest, RateLimited, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from sluicegate.providers.base import provider_types
from sluicegate.providers.cohere import CohereProvider
from sluicegate.scrub import Scrubber
from sluicegate.testing import FakeUpstream, Reply, serve_in_thread
from tests.conftest import CANARY_KEY, RunningGateway, run_gateway

KEY = "co-test-key-0123456789"
PNG = "data:image/png;base64,iVBORw0KGgo="


def provider(base_url: str = "https://api.cohere.com") -> CohereProvider:
    ptype = provider_types()["cohere"]
    config = ProviderConfig(name="co", type="cohere", base_url=base_url, api_key="env://CO_KEY")
    made = ptype.factory(config, ptype.preset)
    assert isinstance(made, CohereProvider)
    return made


def call(p: CohereProvider, stream: bool = False) -> Any:
    route = SimpleNamespace(upstream_model="command-a-03-2025", provider=p)
    return SimpleNamespace(
        route=route,
        model_requested="co-chat",
        stream=stream,
        body=None,
        snapshot=SimpleNamespace(server=ServerConfig()),
    )


def build(chat: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    p = provider()
    return orjson.loads(p.build_request(call(p, stream), chat))  # type: ignore[no-any-return]


def collect(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client would assemble from neutral chunks."""
    out: dict[str, Any] = {"content": "", "reasoning": "", "tools": {}, "finish": None, "usage": None, "roles": 0}
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        if "usage" in c:
            assert c["choices"] == []
            out["usage"] = c["usage"]
        for choice in c["choices"]:
            delta = choice["delta"]
            out["roles"] += "role" in delta
            out["content"] += delta.get("content") or ""
            out["reasoning"] += delta.get("reasoning_content") or ""
            for tc in delta.get("tool_calls") or ():
                slot = out["tools"].setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
                if "id" in tc:
                    slot["id"] = tc["id"]
                slot["name"] += tc["function"].get("name") or ""
                slot["arguments"] += tc["function"].get("arguments") or ""
            if choice["finish_reason"] is not None:
                out["finish"] = choice["finish_reason"]
    return out


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeUpstream, str]]:
    app = FakeUpstream(required_key=KEY)
    with serve_in_thread(app) as url:
        yield app, url


def post(url: str, body: dict[str, Any], key: str | None = KEY, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v2/chat", json=body, headers=headers, timeout=5, **kw)


# ---------------------------------------------------------------------------------- request


def test_registered_with_its_url_and_bearer_key() -> None:
    ptype = provider_types()["cohere"]
    assert ptype.preset.base_url == "https://api.cohere.com" and ptype.preset.needs_key
    p = provider()
    assert p.native_dialect == "cohere" and p.label == "Cohere"
    assert p.url_for("chat", "command-a", stream=True) == "https://api.cohere.com/v2/chat"
    headers = p.request_headers(call(p), "sekret", "", b"")
    assert headers["Authorization"] == "Bearer sekret"
    with pytest.raises(BadRequest):
        p.url_for("embeddings", "embed-v4.0")


def test_build_request_translates_messages_and_parameters() -> None:
    chat = {
        "model": "co-chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "I will look it up.",
                "tool_calls": [
                    {"id": "get_weather_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "get_weather_1", "content": "12C"},
            {"role": "assistant", "content": "It is 12C.", "reasoning_content": "Easy."},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
        "max_completion_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": "END",
        "seed": 7,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        "reasoning_effort": "high",
        "stream_options": {"include_usage": True},
        "user": "u-1",
    }
    out = build(chat, stream=True)
    assert out["model"] == "command-a-03-2025" and out["stream"] is True
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use metric units."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "get_weather_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
            "tool_plan": "I will look it up.",
        },
        {"role": "tool", "tool_call_id": "get_weather_1", "content": "12C"},
        {
            "role": "assistant",
            "content": [{"type": "thinking", "thinking": "Easy."}, {"type": "text", "text": "It is 12C."}],
        },
        {"role": "user", "content": "Thanks"},
    ]
    assert out["tools"] == [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    assert out["tool_choice"] == "REQUIRED"
    assert (out["max_tokens"], out["p"], out["k"], out["stop_sequences"]) == (50, 0.9, 40, ["END"])
    assert (out["temperature"], out["seed"], out["frequency_penalty"], out["presence_penalty"]) == (0.2, 7, 0.1, 0.2)
    assert out["response_format"] == {"type": "json_object", "json_schema": {"type": "object"}}
    assert out["thinking"] == {"type": "enabled"}
    for absent in ("top_p", "top_k", "stop", "stream_options", "user", "reasoning_effort", "max_completion_tokens"):
        assert absent not in out


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"tool_choice": "none"}, {"tool_choice": "NONE"}),
        ({"tool_choice": "auto"}, {}),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, {"tool_choice": "REQUIRED"}),
        ({"thinking_budget": 1024}, {"thinking": {"type": "enabled", "token_budget": 1024}}),
        ({"reasoning_effort": "none"}, {"thinking": {"type": "disabled"}}),
        ({"response_format": {"type": "json_object"}}, {"response_format": {"type": "json_object"}}),
        ({"response_format": {"type": "text"}}, {}),
        ({"stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]}),
    ],
)
def test_build_request_options(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}]
    out = build({"messages": [{"role": "user", "content": "hi"}], "tools": tools, **extra})
    assert out["strict_tools"] is True and "strict" not in out["tools"][0]["function"]
    for key in ("tool_choice", "thinking", "response_format", "stop_sequences"):
        assert out.get(key) == expected.get(key)


@pytest.mark.parametrize(
    ("chat", "names"),
    [
        ({"n": 2}, "Several choices"),
        ({"logprobs": True}, "Log probabilities"),
        ({"logit_bias": {"1": 5}}, "Logit bias"),
        ({"parallel_tool_calls": False}, "parallel tool calls"),
        ({"functions": [{"name": "f"}]}, "'functions' parameter"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"response_format": {"type": "grammar"}}, "response_format"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
            "input_audio content",
        ),
        ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}]}, "System"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "role 'function'"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "a"}},
                    {"type": "function", "function": {"name": "b"}},
                ],
                "tool_choice": {"type": "function", "function": {"name": "a"}},
            },
            "naming one of several",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "a", "strict": True}},
                    {"type": "function", "function": {"name": "b"}},
                ]
            },
            "strict",
        ),
    ],
)
def test_build_request_refuses_what_cohere_cannot_carry(chat: dict[str, Any], names: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **chat}
    with pytest.raises(BadRequest) as info:
        build(body)
    assert info.value.status == 400
    assert names in info.value.message and "Cohere (provider 'co')" in info.value.message


def test_built_requests_are_accepted_by_the_fake(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "echo: a b c"}, {"type": "image_url", "image_url": {"url": PNG}}],
            },
        ],
        "tools": [
            {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
        ],
        "tool_choice": "none",
        "top_p": 0.5,
        "top_k": 5,
        "max_tokens": 10,
        "stop": ["zzz"],
        "thinking_budget": 100,
    }
    p = provider(url)
    body = p.build_request(call(p), chat)
    resp = httpx.post(url + "/v2/chat", content=body, headers=p.request_headers(call(p), KEY, "", body), timeout=5)
    assert resp.status_code == 200, resp.text
    neutral = p.parse_response(resp.json(), call(p))
    assert neutral["choices"][0]["message"]["content"] == "a b c"
    assert neutral["choices"][0]["finish_reason"] == "stop"
    assert app.requests[-1].headers["authorization"] == f"Bearer {KEY}"


# ---------------------------------------------------------------------------------- response


def test_parse_response_text_thinking_and_usage() -> None:
    p = provider()
    data = {
        "id": "c0ffee",
        "finish_reason": "MAX_TOKENS",
        "message": {
            "role": "assistant",
            "content": [{"type": "thinking", "thinking": "Hmm."}, {"type": "text", "text": "Hello"}],
        },
        "usage": {
            "billed_units": {"input_tokens": 5, "output_tokens": 3},
            "tokens": {"input_tokens": 71.0, "output_tokens": 9.0},
            "cached_tokens": 64,
        },
    }
    out = p.parse_response(data, call(p))
    assert out["id"] == "c0ffee" and out["object"] == "chat.completion" and out["model"] == "command-a-03-2025"
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello", "reasoning_content": "Hmm."}
    assert choice["finish_reason"] == "length"
    assert out["usage"] == {
        "prompt_tokens": 71,
        "completion_tokens": 9,
        "total_tokens": 80,
        "prompt_tokens_details": {"cached_tokens": 64},
    }


def test_parse_response_tool_calls_with_plan() -> None:
    p = provider()
    data = {
        "id": "x",
        "finish_reason": "TOOL_CALL",
        "message": {
            "role": "assistant",
            "tool_plan": "I will check the weather.",
            "tool_calls": [
                {
                    "id": "get_weather_a1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"c":"P"}'},
                }
            ],
        },
        "usage": {"billed_units": {"input_tokens": 10, "output_tokens": 4}},
    }
    out = p.parse_response(data, call(p))
    message = out["choices"][0]["message"]
    assert message["content"] is None and message["reasoning_content"] == "I will check the weather."
    assert message["tool_calls"] == [
        {"id": "get_weather_a1", "type": "function", "function": {"name": "get_weather", "arguments": '{"c":"P"}'}}
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"]["prompt_tokens"] == 10 and "prompt_tokens_details" not in out["usage"]  # billed fallback


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("COMPLETE", "stop"),
        ("STOP_SEQUENCE", "stop"),
        ("MAX_TOKENS", "length"),
        ("TOOL_CALL", "tool_calls"),
        ("complete", "stop"),
    ],
)
def test_finish_reasons(reason: str, finish: str) -> None:
    p = provider()
    data = {"id": "x", "finish_reason": reason, "message": {"role": "assistant", "content": []}}
    assert p.parse_response(data, call(p))["choices"][0]["finish_reason"] == finish


def test_error_and_timeout_finishes_raise() -> None:
    p = provider()
    with pytest.raises(UpstreamError, match="failed while generating: boom"):
        p.parse_response({"id": "x", "finish_reason": "ERROR", "error": "boom", "message": {}}, call(p))
    with pytest.raises(UpstreamTimeout):
        p.parse_response({"id": "x", "finish_reason": "TIMEOUT", "message": {}}, call(p))
    with pytest.raises(UpstreamError, match="not a Cohere chat response"):
        p.parse_response({"message": "nope"}, call(p))


# ---------------------------------------------------------------------------------- stream decoder


def stream_bytes(url: str, reply: Reply | None, app: FakeUpstream, **body: Any) -> bytes:
    if reply is not None:
        app.enqueue(reply)
    resp = post(url, {"model": "command-a", "stream": True, **body})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    return resp.content


def decode(raw: bytes, splits: list[int]) -> tuple[list[dict[str, Any]], bool]:
    p = provider()
    decoder = p.stream_decoder(call(p, stream=True))
    chunks: list[dict[str, Any]] = []
    last = 0
    for at in [*splits, len(raw)]:
        chunks.extend(decoder.feed(raw[last:at]))
        last = at
    chunks.extend(decoder.close())
    return chunks, decoder.done


def every_split(raw: bytes) -> Iterator[list[int]]:
    yield list(range(1, len(raw)))  # one byte at a time
    for i in range(1, len(raw)):  # two pieces, cut at every byte
        yield [i]


def test_decoder_text_stream_at_every_byte_boundary(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    raw = stream_bytes(url, Reply(cached_tokens=3), app, messages=[{"role": "user", "content": "echo: héllo wörld"}])
    for splits in every_split(raw):
        chunks, done = decode(raw, splits)
        got = collect(chunks)
        assert done
        assert got["content"] == "héllo wörld" and got["roles"] == 1 and got["finish"] == "stop"
        assert got["usage"]["prompt_tokens"] == 6 and got["usage"]["completion_tokens"] == 2
        assert got["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}


def test_decoder_tool_calls_and_plan(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    reply = Reply(
        reasoning="I will look.",
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}],
    )
    raw = stream_bytes(url, reply, app, messages=[{"role": "user", "content": "weather?"}])
    assert b"event: tool-plan-delta" in raw and b"event: tool-call-start" in raw
    for splits in every_split(raw):
        got = collect(decode(raw, splits)[0])
        assert got["reasoning"] == "I will look." and got["finish"] == "tool_calls"
        first, second = got["tools"][0], got["tools"][1]
        assert first["id"].startswith("get_weather_") and first["name"] == "get_weather"
        assert orjson.loads(first["arguments"]) == {"city": "Paris"}
        assert second["name"] == "get_time" and second["arguments"] == "{}"


def test_decoder_thinking_and_max_tokens(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    raw = stream_bytes(
        url,
        Reply(reasoning="Let me think."),
        app,
        messages=[{"role": "user", "content": "echo: a b c d"}],
        max_tokens=2,
    )
    got = collect(decode(raw, [])[0])
    assert got["reasoning"] == "Let me think." and got["content"] == "a b" and got["finish"] == "length"


def test_decoder_stop_sequence(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    raw = stream_bytes(
        url, None, app, messages=[{"role": "user", "content": "echo: one two END three"}], stop_sequences=["END"]
    )
    assert b'"finish_reason":"STOP_SEQUENCE"' in raw
    got = collect(decode(raw, [])[0])
    assert got["content"] == "one two " and got["finish"] == "stop"


def test_decoder_cut_stream_is_not_done(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    app.enqueue(Reply(fault="reset", chunks_before_fault=2))
    with httpx.stream(
        "POST",
        url + "/v2/chat",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "echo: a b c d"}]},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as resp:
        raw = b""
        with pytest.raises(httpx.HTTPError):
            for piece in resp.iter_raw():
                raw += piece
    assert b"message-start" in raw and b"message-end" not in raw
    chunks, done = decode(raw, [])
    assert not done and collect(chunks)["content"] == "a"


def test_decoder_error_event_raises() -> None:
    raw = (
        b'event: message-start\ndata: {"type":"message-start","id":"x","delta":{"message":{"role":"assistant"}}}\n\n'
        b"event: message-end\n"
        b'data: {"type":"message-end","delta":{"finish_reason":"ERROR","error":"model overloaded"}}\n\n'
    )
    with pytest.raises(UpstreamError, match="model overloaded"):
        decode(raw, [])
    with pytest.raises(UpstreamError, match="not JSON"):
        decode(b"data: {oops\n\n", [])


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "kind", "client_status", "code"),
    [
        (400, UpstreamError, 400, "upstream_bad_request"),
        (401, UpstreamError, 502, "upstream_auth_error"),
        (402, UpstreamError, 502, "upstream_payment_required"),
        (404, UpstreamError, 404, "upstream_not_found"),
        (429, RateLimited, 429, "upstream_rate_limited"),
        (498, UpstreamError, 400, "upstream_bad_request"),
        (499, UpstreamError, 502, "upstream_error"),
        (500, UpstreamError, 502, "upstream_error"),
        (503, UpstreamUnavailable, 503, "upstream_unavailable"),
        (504, UpstreamTimeout, 504, "upstream_timeout"),
    ],
)
def test_error_mapping(status: int, kind: type[Exception], client_status: int, code: str) -> None:
    p = provider()
    body = orjson.dumps({"id": "e1", "message": f"something about {KEY}"})
    error = p.parse_error(status, body, 2.0 if status == 429 else None, Scrubber([KEY]))
    assert type(error) is kind and error.status == client_status and error.code == code
    assert KEY not in error.message and "provider 'co'" in error.message


def test_error_message_shapes() -> None:
    p = provider()
    assert p.error_message(b'{"id":"1","message":"invalid api token"}') == "invalid api token"
    assert p.error_message(b'{"data":"bad"}') == "bad"
    assert p.error_message(b"<html>502</html>") == "<html>502</html>"


# ---------------------------------------------------------------------------------- the fake over HTTP


def test_fake_auth(fake: tuple[FakeUpstream, str]) -> None:
    _, url = fake
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    missing = post(url, body, key=None)
    assert missing.status_code == 401 and missing.json()["message"] == "no api key supplied"
    wrong = post(url, body, key="wrong-key-123")
    assert wrong.status_code == 401 and set(wrong.json()) == {"id", "message"}
    assert wrong.json()["message"] == "invalid api token" and "wrong-key" not in wrong.text


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model parameter is required"),
        ({"model": "m", "messages": []}, "messages must not be empty"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": 0.5}, "top_p is not a valid field"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "p": 1.5}, "p must be between"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "REQUIRED"}, "needs tools"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
        ({"model": "m", "messages": [{"role": "bot", "content": "x"}]}, "role must be one of"),
    ],
)
def test_fake_validates_like_cohere(fake: tuple[FakeUpstream, str], body: dict[str, Any], fragment: str) -> None:
    _, url = fake
    resp = post(url, body)
    assert resp.status_code == 400 and fragment in resp.json()["message"]


def test_fake_scripted_errors_and_faults(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    app.enqueue(Reply(status=429, retry_after=3))
    resp = post(url, body)
    assert resp.status_code == 429 and resp.headers["retry-after"] == "3"
    assert resp.json()["message"].startswith("You are past the per minute request limit")
    app.enqueue(Reply(status=402, error_message="no credit"))
    assert post(url, body).json()["message"] == "no credit"
    app.enqueue(Reply(fault="reset"))
    with pytest.raises(httpx.HTTPError):
        post(url, body)
    app.enqueue(Reply(fault="hang"))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v2/chat", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=0.3)
    app.enqueue(Reply(content="scripted", prompt_tokens=11, completion_tokens=4))
    data = post(url, body).json()
    assert data["message"]["content"] == [{"type": "text", "text": "scripted"}]
    assert data["usage"]["tokens"] == {"input_tokens": 11, "output_tokens": 4}


# ---------------------------------------------------------------------------------- through the gateway

COHERE = """\
  - name: co
    type: cohere
    base_url: {upstream}
    api_key: env://TEST_UPSTREAM_KEY
"""


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("cohere"), upstream_url) as gw:
        text = gw.config_path.read_text()
        text = text.replace("models:\n", COHERE.format(upstream=upstream_url) + "models:\n", 1)
        text = text.replace("models:\n", "models:\n  - {name: co-chat, provider: co, model: command-a-03-2025}\n", 1)
        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        yield gw


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)


def test_gateway_chat_through_cohere(gw: RunningGateway, upstream: FakeUpstream) -> None:
    reply = client(gw).chat.completions.create(
        model="co-chat",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "echo: hi there"}],
        top_p=0.5,
    )
    assert reply.choices[0].message.content == "hi there" and reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 2
    sent = upstream.requests[-1]
    assert sent.path == "/v2/chat" and sent.headers["authorization"] == f"Bearer {CANARY_KEY}"
    body = sent.json()
    assert body["model"] == "command-a-03-2025" and body["p"] == 0.5 and body["stream"] is False
    audit = gw.last_audit()
    assert audit["provider"] == "co" and audit["completion_tokens"] == 2


def test_gateway_stream_and_tools_through_cohere(gw: RunningGateway, upstream: FakeUpstream) -> None:
    chunks = list(
        client(gw).chat.completions.create(
            model="co-chat",
            messages=[{"role": "user", "content": "echo: a b c"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert gw.last_audit()["completion_tokens"] == 3

    upstream.enqueue(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]))
    reply = client(gw).chat.completions.create(
        model="co-chat",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    call_ = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call_.function.name == "get_weather" and orjson.loads(call_.function.arguments) == {"city": "Oslo"}
    assert reply.choices[0].finish_reason == "tool_calls"


def test_gateway_refuses_what_cohere_cannot_carry(gw: RunningGateway, upstream: FakeUpstream) -> None:
    with gw.client() as http:
        resp = http.post(
            "/v1/chat/completions",
            json={"model": "co-chat", "messages": [{"role": "user", "content": "hi"}], "n": 2},
        )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "unsupported_feature"
    assert upstream.calls == 0


def test_gateway_relays_cohere_errors(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=404, error_message="model 'command-a-03-2025' not found"))
    with gw.client() as http:
        resp = http.post(
            "/v1/chat/completions", json={"model": "co-chat", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert resp.status_code == 404 and "not found" in resp.json()["error"]["message"]
    assert CANARY_KEY not in resp.text
