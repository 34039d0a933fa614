"""Ollama's native API: translation both ways, the NDJSON decoder on the fake's real streams,
errors, the fake over HTTP (stream by default), and calls through the gateway."""

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
from sluicegate.errors import BadRequest, RateLimited, UpstreamError, UpstreamUnavailable
from sluicegate.providers.base import provider_types
from sluicegate.providers.ollama_native import OllamaNativeProvider
from sluicegate.scrub import Scrubber
from sluicegate.testing import FakeUpstream, Reply, serve_in_thread
from tests.conftest import RunningGateway, run_gateway

KEY = "ollama-proxy-key-0123456789"
PNG_B64 = "iVBORw0KGgo="
PNG = f"data:image/png;base64,{PNG_B64}"


def provider(base_url: str = "http://127.0.0.1:11434") -> OllamaNativeProvider:
    ptype = provider_types()["ollama_native"]
    made = ptype.factory(ProviderConfig(name="ol", type="ollama_native", base_url=base_url), ptype.preset)
    assert isinstance(made, OllamaNativeProvider)
    return made


def call(p: OllamaNativeProvider, stream: bool = False) -> Any:
    route = SimpleNamespace(upstream_model="llama3.2", provider=p)
    return SimpleNamespace(
        route=route,
        model_requested="local-chat",
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
    app = FakeUpstream(required_key=KEY, models=["llama3.2", "qwen3"])
    with serve_in_thread(app) as url:
        yield app, url


def post(url: str, body: dict[str, Any], key: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/api/chat", json=body, headers=headers, timeout=5, **kw)


# ---------------------------------------------------------------------------------- request


def test_registered_keyless_with_optional_bearer() -> None:
    ptype = provider_types()["ollama_native"]
    assert ptype.preset.base_url == "http://127.0.0.1:11434" and not ptype.preset.needs_key
    assert provider_types()["ollama"].preset.base_url == "http://127.0.0.1:11434/v1"  # the OpenAI-compatible one
    p = provider()
    assert p.native_dialect == "ollama" and p.label == "Ollama"
    assert p.url_for("chat", "llama3.2", stream=True) == "http://127.0.0.1:11434/api/chat"
    assert "Authorization" not in p.request_headers(call(p), None, "", b"")
    assert p.request_headers(call(p), "k1", "", b"")["Authorization"] == "Bearer k1"
    with pytest.raises(BadRequest):
        p.url_for("embeddings", "nomic-embed-text")


def test_build_request_translates_messages_and_options() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "Need the weather.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"c":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
            {"role": "tool", "tool_call_id": "unknown", "content": "?"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "max_tokens": 64,
        "temperature": 0.1,
        "top_p": 0.8,
        "top_k": 20,
        "seed": 3,
        "stop": "END",
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "reasoning_effort": "medium",
        "user": "u",
    }
    out = build(chat)
    assert out["model"] == "llama3.2"
    assert out["stream"] is False  # always explicit: Ollama would stream otherwise
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Metric units."},
        {"role": "user", "content": "What is this?", "images": [PNG_B64]},
        {
            "role": "assistant",
            "content": "",
            "thinking": "Need the weather.",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"c": "Oslo"}}}],
        },
        {"role": "tool", "content": "12C", "tool_name": "get_weather"},
        {"role": "tool", "content": "?"},
    ]
    assert out["tools"] == [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    assert out["options"] == {
        "temperature": 0.1,
        "top_p": 0.8,
        "top_k": 20,
        "seed": 3,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "num_predict": 64,
        "stop": ["END"],
    }
    assert out["format"] == {"type": "object"} and out["think"] == "medium"
    assert "user" not in out and "max_tokens" not in out
    assert build({"messages": [{"role": "user", "content": "hi"}]}, stream=True)["stream"] is True


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"response_format": {"type": "json_object"}}, {"format": "json"}),
        ({"response_format": {"type": "text"}}, {}),
        ({"reasoning_effort": "none"}, {"think": False}),
        ({"reasoning_effort": "minimal"}, {"think": "low"}),
        ({"thinking_budget": 2048}, {"think": True}),
        ({"thinking_budget": 0}, {"think": False}),
        ({"tool_choice": "none"}, {}),
        ({"tool_choice": "auto"}, {"tools": True}),
    ],
)
def test_build_request_options(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    out = build({"messages": [{"role": "user", "content": "hi"}], "tools": tools, **extra})
    assert out.get("format") == expected.get("format") and out.get("think") == expected.get("think")
    assert ("tools" in out) == ("tool_choice" not in extra or bool(expected.get("tools")))


@pytest.mark.parametrize(
    ("chat", "names"),
    [
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
                ]
            },
            "Image URLs",
        ),
        ({"tool_choice": "required"}, "Forcing a tool call"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "Forcing a tool call"),
        ({"n": 3}, "Several choices"),
        ({"logprobs": True}, "Log probabilities"),
        ({"parallel_tool_calls": False}, "parallel tool calls"),
        ({"prediction": {"type": "content", "content": "x"}}, "'prediction' parameter"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}]}, "System"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            "not a JSON object",
        ),
    ],
)
def test_build_request_refuses_what_ollama_cannot_carry(chat: dict[str, Any], names: str) -> None:
    with pytest.raises(BadRequest) as info:
        build({"messages": [{"role": "user", "content": "hi"}], **chat})
    assert info.value.status == 400 and names in info.value.message
    assert "Ollama (provider 'ol')" in info.value.message


def test_built_requests_are_accepted_by_the_fake(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    chat = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "echo: x y"}, {"type": "image_url", "image_url": {"url": PNG}}],
            },
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
            {"role": "user", "content": "echo: x y"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_object"},
        "reasoning_effort": "high",
        "max_tokens": 5,
    }
    p = provider(url)
    body = p.build_request(call(p), chat)
    resp = httpx.post(url + "/api/chat", content=body, headers=p.request_headers(call(p), None, "", body), timeout=5)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"  # stream: false was sent
    out = p.parse_response(resp.json(), call(p))
    assert out["choices"][0]["message"]["content"] == "x y"
    assert app.requests[-1].json()["messages"][2]["tool_name"] == "f"


# ---------------------------------------------------------------------------------- response


def test_parse_response_text_thinking_usage() -> None:
    p = provider()
    data = {
        "model": "qwen3:8b",
        "created_at": "2025-06-01T10:00:00.123456789Z",
        "message": {"role": "assistant", "content": "Hello", "thinking": "Greet back."},
        "done_reason": "length",
        "done": True,
        "prompt_eval_count": 26,
        "eval_count": 298,
    }
    out = p.parse_response(data, call(p))
    assert out["model"] == "qwen3:8b" and out["id"].startswith("chatcmpl-")
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hello", "reasoning_content": "Greet back."}
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 26, "completion_tokens": 298, "total_tokens": 324}


def test_parse_response_tool_calls_get_ids() -> None:
    p = provider()
    data = {
        "model": "llama3.2",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"location": "Paris, FR", "format": "celsius"}}},
                {"function": {"name": "get_time", "arguments": {}}},
            ],
        },
        "done_reason": "stop",
        "done": True,
        "eval_count": 33,
    }
    out = p.parse_response(data, call(p))
    message = out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "tool_calls"  # "stop" with tool calls
    assert message["content"] is None
    first, second = message["tool_calls"]
    assert first["id"].startswith("call_") and first["id"] != second["id"] and first["type"] == "function"
    assert orjson.loads(first["function"]["arguments"]) == {"location": "Paris, FR", "format": "celsius"}
    assert second["function"] == {"name": "get_time", "arguments": "{}"}
    assert out["usage"]["prompt_tokens"] == 0 and out["usage"]["completion_tokens"] == 33  # zero counts are omitted


def test_parse_response_garbage_and_error_bodies() -> None:
    p = provider()
    with pytest.raises(UpstreamError, match="not an Ollama chat response"):
        p.parse_response({"response": "generate, not chat"}, call(p))
    with pytest.raises(UpstreamError, match="model exploded"):
        p.parse_response({"error": "model exploded"}, call(p))


# ---------------------------------------------------------------------------------- stream decoder


def stream_bytes(url: str, app: FakeUpstream, reply: Reply | None = None, **body: Any) -> bytes:
    if reply is not None:
        app.enqueue(reply)
    resp = post(url, {"model": "llama3.2", **body})  # no `stream`: Ollama streams by default
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-ndjson"
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
    raw = stream_bytes(url, app, messages=[{"role": "user", "content": "echo: héllo wörld"}])
    assert raw.count(b"\n") == 3 and raw.endswith(b"\n")
    for splits in every_split(raw):
        chunks, done = decode(raw, splits)
        got = collect(chunks)
        assert done and got["roles"] == 1
        assert got["content"] == "héllo wörld" and got["finish"] == "stop"
        assert got["usage"] == {"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8}
        assert chunks[-1]["model"] == "llama3.2"


def test_decoder_thinking_and_tool_calls(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    reply = Reply(
        reasoning="Check both.",
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}],
    )
    raw = stream_bytes(url, app, reply, messages=[{"role": "user", "content": "weather?"}], think=True)
    for splits in every_split(raw):
        got = collect(decode(raw, splits)[0])
        assert got["reasoning"] == "Check both." and got["finish"] == "tool_calls"
        first, second = got["tools"][0], got["tools"][1]
        assert first["id"].startswith("call_") and first["name"] == "get_weather"
        assert orjson.loads(first["arguments"]) == {"city": "Paris"}
        assert second["name"] == "get_time" and second["arguments"] == "{}"


def test_decoder_length_and_last_line_without_newline(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    raw = stream_bytes(url, app, messages=[{"role": "user", "content": "echo: a b c d"}], options={"num_predict": 2})
    got = collect(decode(raw.rstrip(b"\n"), [])[0])  # the final object, unterminated, comes out on close()
    assert got["content"] == "a b" and got["finish"] == "length" and got["usage"]["completion_tokens"] == 2


def test_decoder_content_on_the_done_line() -> None:
    raw = (
        b'{"model":"gemma3","created_at":"t","message":{"role":"assistant","content":"Hi"},"done":false}\n'
        b'{"model":"gemma3","created_at":"t","message":{"role":"assistant","content":"!"},"done":true,'
        b'"done_reason":"stop","prompt_eval_count":4,"eval_count":2}\n'
    )
    chunks, done = decode(raw, [])
    got = collect(chunks)
    assert done and got["content"] == "Hi!" and got["finish"] == "stop" and got["usage"]["total_tokens"] == 6


def test_decoder_error_line_raises() -> None:
    raw = (
        b'{"model":"gemma3","created_at":"t","message":{"role":"assistant","content":"I"},"done":false}\n'
        b'{"error":"an error was encountered while running the model"}\n'
    )
    with pytest.raises(UpstreamError, match="an error was encountered while running the model"):
        decode(raw, [])
    with pytest.raises(UpstreamError, match="not JSON"):
        decode(b"{oops\n", [])


def test_decoder_cut_stream_is_not_done(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    app.enqueue(Reply(fault="reset", chunks_before_fault=2))
    raw = b""
    with httpx.stream(
        "POST", url + "/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "echo: a b c d"}]}
    ) as resp:
        with pytest.raises(httpx.HTTPError):
            for piece in resp.iter_raw():
                raw += piece
    chunks, done = decode(raw, [])
    assert not done and collect(chunks)["content"] == "a b"


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "kind", "client_status"),
    [
        (400, UpstreamError, 400),
        (401, UpstreamError, 502),
        (404, UpstreamError, 404),
        (429, RateLimited, 429),
        (500, UpstreamError, 502),
        (502, UpstreamUnavailable, 503),
        (503, UpstreamUnavailable, 503),
    ],
)
def test_error_mapping(status: int, kind: type[Exception], client_status: int) -> None:
    p = provider()
    body = orjson.dumps({"error": f'model "llama9" not found, try pulling it first ({KEY})'})
    error = p.parse_error(status, body, None, Scrubber([KEY]))
    assert type(error) is kind and error.status == client_status
    assert KEY not in error.message and "provider 'ol'" in error.message
    if status == 404:
        assert 'model "llama9" not found' in error.message


def test_error_message_shapes() -> None:
    p = provider()
    assert p.error_message(b'{"error":"model is required"}') == "model is required"
    assert p.error_message(b"404 page not found") == "404 page not found"


# ---------------------------------------------------------------------------------- the fake over HTTP


def test_fake_streams_by_default_and_answers_json_when_told(fake: tuple[FakeUpstream, str]) -> None:
    _, url = fake
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "echo: hi"}]}
    streamed = post(url, body)
    assert streamed.headers["content-type"] == "application/x-ndjson"
    lines = [orjson.loads(line) for line in streamed.content.splitlines()]
    assert [line["done"] for line in lines] == [False, True] and lines[0]["message"]["content"] == "hi"
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == 1
    single = post(url, {**body, "stream": False})
    assert single.headers["content-type"] == "application/json"
    data = single.json()
    assert data["message"] == {"role": "assistant", "content": "hi"} and data["done"] is True
    assert data["prompt_eval_count"] == 5 and data["eval_count"] == 1


def test_fake_auth_is_optional(fake: tuple[FakeUpstream, str]) -> None:
    _, url = fake
    body = {"model": "m", "stream": False, "messages": [{"role": "user", "content": "hi"}]}
    assert post(url, body).status_code == 200  # Ollama itself has no auth
    assert post(url, body, key=KEY).status_code == 200
    wrong = post(url, body, key="bad-key-999")
    assert wrong.status_code == 401 and wrong.json() == {"error": "unauthorized"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model is required"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, "of type string"),
        ({"model": "m", "messages": [{"role": "user", "content": "x", "images": ["not base64!"]}]}, "base64"),
        (
            {
                "model": "m",
                "messages": [
                    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
                ],
            },
            "ToolCallFunctionArguments",
        ),
        ({"model": "m", "messages": [], "format": "yaml"}, "invalid format"),
        ({"model": "m", "messages": [], "think": "max"}, "invalid think value"),
    ],
)
def test_fake_validates_like_ollama(fake: tuple[FakeUpstream, str], body: dict[str, Any], fragment: str) -> None:
    _, url = fake
    resp = post(url, body)
    assert resp.status_code == 400 and fragment in resp.json()["error"]


def test_fake_scripted_errors_faults_and_tags(fake: tuple[FakeUpstream, str]) -> None:
    app, url = fake
    body = {"model": "m", "stream": False, "messages": [{"role": "user", "content": "hi"}]}
    app.enqueue(Reply(status=404, error_message='model "m" not found, try pulling it first'))
    resp = post(url, body)
    assert resp.status_code == 404 and resp.json() == {"error": 'model "m" not found, try pulling it first'}
    app.enqueue(Reply(status=503))
    assert post(url, body).json()["error"].startswith("server busy")
    app.enqueue(Reply(fault="reset"))
    with pytest.raises(httpx.HTTPError):
        post(url, body)
    app.enqueue(Reply(fault="hang"))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/api/chat", json=body, timeout=0.3)
    loaded = post(url, {"model": "m", "messages": []})
    assert loaded.json()["done_reason"] == "load"
    models = httpx.get(url + "/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["llama3.2", "qwen3"] and len(models[0]["digest"]) == 64


# ---------------------------------------------------------------------------------- through the gateway

OLLAMA = """\
  - name: ol
    type: ollama_native
    base_url: {upstream}
"""


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("ollama"), upstream_url) as gw:
        text = gw.config_path.read_text()
        text = text.replace("models:\n", OLLAMA.format(upstream=upstream_url) + "models:\n", 1)
        text = text.replace("models:\n", "models:\n  - {name: local-chat, provider: ol, model: llama3.2}\n", 1)
        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        yield gw


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)


def test_gateway_chat_through_ollama(gw: RunningGateway, upstream: FakeUpstream) -> None:
    reply = client(gw).chat.completions.create(
        model="local-chat", messages=[{"role": "user", "content": "echo: hi there"}], max_tokens=50
    )
    assert reply.choices[0].message.content == "hi there" and reply.choices[0].finish_reason == "stop"
    sent = upstream.requests[-1]
    assert sent.path == "/api/chat" and "authorization" not in sent.headers
    body = sent.json()
    assert body["model"] == "llama3.2" and body["stream"] is False and body["options"] == {"num_predict": 50}
    assert gw.last_audit()["provider"] == "ol" and gw.last_audit()["completion_tokens"] == 2


def test_gateway_stream_and_tools_through_ollama(gw: RunningGateway, upstream: FakeUpstream) -> None:
    chunks = list(
        client(gw).chat.completions.create(
            model="local-chat",
            messages=[{"role": "user", "content": "echo: a b c"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert upstream.requests[-1].json()["stream"] is True
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3

    upstream.enqueue(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]))
    reply = client(gw).chat.completions.create(
        model="local-chat",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )
    call_ = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call_.id.startswith("call_") and orjson.loads(call_.function.arguments) == {"city": "Oslo"}
    assert reply.choices[0].finish_reason == "tool_calls"


def test_gateway_reports_an_ollama_stream_cut(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(fault="reset", chunks_before_fault=1))
    with (
        gw.client() as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "local-chat", "stream": True, "messages": [{"role": "user", "content": "echo: a b c"}]},
        ) as resp,
    ):
        text = resp.read().decode()
    assert resp.status_code == 200 and '"content":"a"' in text
    assert '"error"' in text and "[DONE]" not in text
