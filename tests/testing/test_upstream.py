"""The fake upstream speaks the OpenAI wire format well enough for the official SDK, httpx and aiohttp."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from sluicegate.testing.upstream import (
    DEFAULT_TEXT,
    FakeUpstream,
    ReceivedRequest,
    Reply,
    mask_key,
    serve_in_thread,
    start_server,
)

AUTH = {"authorization": "Bearer sk-test"}
USER_HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
WEATHER = {"name": "get_weather", "arguments": '{"city":"Paris"}'}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeUpstream, str]]:
    app = FakeUpstream()
    with serve_in_thread(app) as url:
        yield app, url


@pytest.fixture
def app(served: tuple[FakeUpstream, str]) -> Iterator[FakeUpstream]:
    fake = served[0]
    fake.reset()
    yield fake
    fake.reset()
    fake.required_key = None
    fake.record = True
    fake.max_recorded = 1000


@pytest.fixture
def url(served: tuple[FakeUpstream, str], app: FakeUpstream) -> str:
    return served[1]


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, timeout=5) as sdk:
        yield sdk


def sse_events(text: str) -> list[Any]:
    """Parse an SSE body into JSON objects (and the string "[DONE]")."""
    assert text.endswith("\n\n")
    out: list[Any] = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def test_chat_non_stream_shape(client: openai.OpenAI, url: str) -> None:
    done = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}])
    assert done.object == "chat.completion"
    assert done.id.startswith("chatcmpl-")
    assert done.model == "gpt-4o-mini"
    assert done.choices[0].message.content == DEFAULT_TEXT
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (2 + 3, 9, 14)

    raw = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": USER_HI}, headers=AUTH).json()
    assert list(raw) == [
        "id", "object", "created", "model", "choices", "usage", "service_tier", "system_fingerprint",
    ]  # fmt: skip
    assert raw["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": DEFAULT_TEXT, "refusal": None, "annotations": []},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert raw["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    assert raw["system_fingerprint"].startswith("fp_")


def test_echo_and_scripted_reply(client: openai.OpenAI, app: FakeUpstream) -> None:
    multi_part: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": [{"type": "text", "text": "echo: héllo"}, {"type": "text", "text": " wörld"}]}
    ]
    done = client.chat.completions.create(model="m", messages=multi_part)
    assert done.choices[0].message.content == "héllo wörld"
    app.enqueue(Reply(content="scripted", model="other", prompt_tokens=7, completion_tokens=11, headers={"x-a": "b"}))
    raw = client.chat.completions.with_raw_response.create(model="m", messages=USER_HI)
    assert raw.headers["x-a"] == "b"
    assert raw.headers["x-request-id"].startswith("req_")
    done = raw.parse()
    assert (done.choices[0].message.content, done.model) == ("scripted", "other")
    assert done.usage is not None and (done.usage.prompt_tokens, done.usage.completion_tokens) == (7, 11)
    # queue empty again -> default text
    assert client.chat.completions.create(model="m", messages=USER_HI).choices[0].message.content == DEFAULT_TEXT


def test_chat_stream_with_usage(client: openai.OpenAI, url: str) -> None:
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "echo: Hello streaming world"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello streaming world"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1

    body = {"model": "m", "messages": USER_HI, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
    assert ": " not in text.replace("data: ", "")  # compact JSON
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    first, pieces, finish, usage = events[0], events[1:-3], events[-3], events[-2]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [p["choices"][0]["delta"]["content"] for p in pieces] == [
        "This",
        " is",
        " a",
        " mock",
        " response",
        " from",
        " the",
        " fake",
        " upstream.",
    ]
    assert all(e["usage"] is None and e["choices"][0]["logprobs"] is None for e in events[:-2])
    assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 4 + 9

    # without include_usage, no usage key at all
    body = {"model": "m", "messages": USER_HI, "stream": True}
    events = sse_events(httpx.post(url + "/v1/chat/completions", json=body, headers=AUTH).text)
    assert all("usage" not in e for e in events[:-1])


def test_usage_off(client: openai.OpenAI, app: FakeUpstream) -> None:
    app.enqueue(Reply(usage=False), Reply(usage=False))
    assert client.chat.completions.create(model="m", messages=USER_HI).usage is None
    chunks = list(client.chat.completions.create(
        model="m", messages=USER_HI, stream=True, stream_options={"include_usage": True}
    ))  # fmt: skip
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_tool_calls(client: openai.OpenAI, app: FakeUpstream, url: str) -> None:
    app.enqueue(Reply(tool_calls=[WEATHER, {"name": "noop", "arguments": {}}]))
    done = client.chat.completions.create(model="m", messages=USER_HI)
    msg = done.choices[0]
    assert msg.finish_reason == "tool_calls" and msg.message.content is None
    calls = msg.message.tool_calls or []
    assert [(c.type, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("function", "get_weather", '{"city":"Paris"}'),
        ("function", "noop", "{}"),
    ]
    assert calls[0].id.startswith("call_")

    app.enqueue(Reply(tool_calls=[WEATHER]))
    with client.chat.completions.stream(model="m", messages=USER_HI) as stream:
        final = stream.get_final_completion()
    fin = final.choices[0]
    assert fin.finish_reason == "tool_calls"
    assert fin.message.tool_calls is not None
    assert fin.message.tool_calls[0].function.name == "get_weather"
    assert fin.message.tool_calls[0].function.arguments == '{"city":"Paris"}'

    app.enqueue(Reply(tool_calls=[WEATHER]))
    body = {"model": "m", "messages": USER_HI, "stream": True}
    events = sse_events(httpx.post(url + "/v1/chat/completions", json=body, headers=AUTH).text)
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    opening = deltas[1]["tool_calls"][0]
    assert opening["function"] == {"name": "get_weather", "arguments": ""} and opening["type"] == "function"
    assert all(list(d["tool_calls"][0]) == ["index", "function"] for d in deltas[2:-1])
    assert "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:-1]) == '{"city":"Paris"}'


def test_n_and_max_tokens(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model="m", messages=USER_HI, n=2)
    assert [c.index for c in done.choices] == [0, 1]
    assert all(c.message.content == DEFAULT_TEXT for c in done.choices)
    assert done.usage is not None and done.usage.completion_tokens == 18
    done = client.chat.completions.create(model="m", messages=USER_HI, max_tokens=3)
    assert (done.choices[0].message.content, done.choices[0].finish_reason) == ("This is a", "length")
    chunks = list(
        client.chat.completions.create(model="m", messages=USER_HI, n=2, stream=True, max_completion_tokens=2)
    )
    texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i) for i in (0, 1)]
    assert texts == ["This is", "This is"]
    assert [c.choices[0].finish_reason for c in chunks[-2:]] == ["length", "length"]


def test_legacy_completions(client: openai.OpenAI) -> None:
    done = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="echo: say this")
    assert done.object == "text_completion"
    assert (done.choices[0].text, done.choices[0].finish_reason) == ("say this", "stop")
    assert done.usage is not None and (done.usage.prompt_tokens, done.usage.completion_tokens) == (3, 2)
    chunks = list(client.completions.create(model="m", prompt="x", stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == DEFAULT_TEXT
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 1 + 9


def test_embeddings(client: openai.OpenAI, url: str) -> None:
    b64 = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])  # SDK asks for base64
    floats = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float")
    assert [d.embedding for d in b64.data] == [d.embedding for d in floats.data]
    assert len(b64.data[0].embedding) == 8 and b64.data[0].embedding != b64.data[1].embedding
    assert abs(sum(x * x for x in b64.data[0].embedding) - 1.0) < 1e-5
    assert b64.usage.prompt_tokens == 2 and b64.model == "text-embedding-3-small"
    one = client.embeddings.create(model="e", input="alpha", dimensions=16, encoding_format="float")
    assert len(one.data[0].embedding) == 16
    raw = httpx.post(
        url + "/v1/embeddings", json={"model": "e", "input": "a", "encoding_format": "base64"}, headers=AUTH
    )
    item = raw.json()["data"][0]
    assert item["object"] == "embedding" and isinstance(item["embedding"], str)


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    assert client.models.retrieve("gpt-4o").owned_by == "fake-upstream"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_rate_limited(client: openai.OpenAI, app: FakeUpstream) -> None:
    app.enqueue(Reply(status=429, retry_after=2))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=USER_HI)
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.code == "rate_limit_exceeded" and info.value.type == "requests"
    app.enqueue(Reply(status=503, error_message="down for a bit"))
    with pytest.raises(openai.InternalServerError) as server_info:
        client.chat.completions.create(model="m", messages=USER_HI)
    assert server_info.value.body == {"message": "down for a bit", "type": "server_error", "param": None, "code": None}


def test_auth(app: FakeUpstream, url: str) -> None:
    body = {"model": "m", "messages": USER_HI}
    missing = httpx.post(url + "/v1/chat/completions", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    app.required_key = "sk-right-key-00"
    app.enqueue(Reply(content="kept for the next good request"))
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-abcdefghijyz", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as info:
            sdk.chat.completions.create(model="m", messages=USER_HI)
    assert "Incorrect API key provided: sk-ab***yz." in info.value.message
    assert "abcdefghij" not in str(info.value.body)
    good = httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-right-key-00"})
    assert good.json()["choices"][0]["message"]["content"] == "kept for the next good request"
    assert (mask_key("sk-abcdefyz"), mask_key("abcdefgh"), mask_key("sk-test")) == ("sk-ab***yz", "abc***gh", "***")


def test_bad_requests(url: str) -> None:
    def post(path: str, body: Any) -> httpx.Response:
        return httpx.post(url + path, content=body if isinstance(body, bytes) else orjson.dumps(body), headers=AUTH)

    for body, param in [
        ({"messages": USER_HI}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": USER_HI, "n": 0}, "n"),
    ]:
        resp = post("/v1/chat/completions", body)
        err = resp.json()["error"]
        assert (resp.status_code, err["type"], err["param"]) == (400, "invalid_request_error", param), body
    assert post("/v1/chat/completions", b"{nope").status_code == 400
    assert post("/v1/chat/completions", [1]).status_code == 400
    assert post("/v1/embeddings", {"model": "e"}).json()["error"]["param"] == "input"
    missing = httpx.post(url + "/v1/nothing", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Invalid URL (POST /v1/nothing)"
    wrong = httpx.get(url + "/v1/chat/completions", headers=AUTH)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


def test_reset_mid_stream(client: openai.OpenAI, app: FakeUpstream, url: str) -> None:
    app.enqueue(Reply(fault="reset", chunks_before_fault=2))
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):  # the SDK wraps the truncated chunked body
        for chunk in client.chat.completions.create(model="m", messages=USER_HI, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["", "This", " is"]

    async def with_aiohttp() -> list[bytes]:
        app.enqueue(Reply(fault="reset", chunks_before_fault=1))
        got: list[bytes] = []
        body = {"model": "m", "messages": USER_HI, "stream": True}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + "/v1/chat/completions", json=body, headers=AUTH) as resp,
        ):
            with pytest.raises(aiohttp.ClientPayloadError):
                async for line in resp.content:
                    got.append(line)
        return got

    lines = asyncio.run(with_aiohttp())
    assert b"data: [DONE]\n" not in lines and any(b'"content":"This"' in line for line in lines)

    app.enqueue(Reply(fault="reset"))
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=USER_HI)


def test_hang_and_delay(client: openai.OpenAI, app: FakeUpstream, url: str) -> None:
    app.enqueue(Reply(fault="hang"))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.2).chat.completions.create(model="m", messages=USER_HI)
    assert 0.15 < time.monotonic() - started < 2

    app.enqueue(Reply(delay_s=0.1, chunk_interval_s=0.02))
    started = time.monotonic()
    stamps: list[float] = []
    body = {"model": "m", "messages": USER_HI, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
        assert time.monotonic() - started >= 0.1
        for _ in resp.iter_raw():
            stamps.append(time.monotonic())
    assert stamps[-1] - stamps[0] >= 0.02 * 8  # 12 events, paced


def test_counts_and_recording(client: openai.OpenAI, app: FakeUpstream, url: str) -> None:
    client.chat.completions.create(model="gpt-4o", messages=USER_HI, temperature=0.5)
    client.models.list()
    httpx.get(url + "/v1/models?limit=2", headers={**AUTH, "X-Custom": "Yes"})
    assert app.calls == 3
    assert app.calls_by_path == {"/v1/chat/completions": 1, "/v1/models": 2}
    first = app.requests[0]
    assert isinstance(first, ReceivedRequest)
    assert (first.method, first.path) == ("POST", "/v1/chat/completions")
    assert first.json()["temperature"] == 0.5 and first.headers["authorization"] == "Bearer sk-test"
    assert (app.requests[2].query, app.requests[2].headers["x-custom"]) == ("limit=2", "Yes")

    app.max_recorded = 2
    client.models.list()
    assert len(app.requests) == 2 and app.requests[-1].query == ""
    app.record = False
    client.models.list()
    assert len(app.requests) == 2 and app.calls == 5
    app.enqueue(Reply(), Reply())
    app.reset()
    assert (app.calls, app.calls_by_path, app.requests, app.pending) == (0, {}, [], 0)


def test_default_reply_and_start_server() -> None:
    fake = FakeUpstream(default=Reply(content="always this"), required_key="k")

    async def main() -> str:
        server, task, base = await start_server(fake)
        try:
            async with httpx.AsyncClient(base_url=base) as http:
                resp = await http.post(
                    "/v1/chat/completions",
                    json={"model": "m", "messages": USER_HI},
                    headers={"authorization": "Bearer k"},
                )
        finally:
            server.should_exit = True
            await task
        content: str = resp.json()["choices"][0]["message"]["content"]
        return content

    assert asyncio.run(main()) == "always this"
    with pytest.raises(ValueError, match="fault"):
        Reply(fault="explode")


# ---------------------------------------------------------------------------------- fault modes of real servers


def _stream(url: str, reply: Reply, app: FakeUpstream, **extra: Any) -> bytes:
    app.enqueue(reply)
    body = {"model": "m", "messages": USER_HI, "stream": True, **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=AUTH).content


def test_sse_quirks_write_the_same_events_in_another_framing(app: FakeUpstream, url: str) -> None:
    plain = _stream(url, Reply(content="a b"), app)
    assert plain.count(b"\n\n") == plain.count(b"data: ")
    odd = _stream(url, Reply(content="a b", sse=("crlf", "no_space", "noise", "spaced_json")), app)
    assert b"data:{" in odd and b"\r\n\r\n" in odd and b"retry:3000\r\n" in odd and b": keep-alive" in odd
    assert b'"choices": [' in odd and b"data:[DONE]\r\n\r\n" in odd
    glued = _stream(url, Reply(content="a b", sse=("no_separators",)), app)
    assert b"\n\n" not in glued and glued.count(b"data: ") == plain.count(b"data: ")
    assert _stream(url, Reply(content="a b", sse=("bom",)), app).startswith(b"\xef\xbb\xbf")
    with pytest.raises(ValueError, match=r"Reply\.sse"):
        Reply(sse=("sideways",))


def test_garbage_error_events_and_usage_shapes(app: FakeUpstream, url: str) -> None:
    raw = _stream(url, Reply(content="a b c", garbage="utf8", chunks_before_fault=1), app)
    assert b"\xff\xfe" in raw and raw.endswith(b"data: [DONE]\n\n")
    raw = _stream(url, Reply(content="a b c", fault="error_event", error_message="bad key {key:.6}"), app)
    assert b'"message":"bad key sk-tes"' in raw and raw.endswith(b"data: [DONE]\n\n")  # and the stream goes on
    raw = _stream(url, Reply(content="a", usage_shape="empty_delta"), app, stream_options={"include_usage": True})
    assert b'"choices":[{"delta":{}}],"usage":{' in raw
    raw = _stream(url, Reply(content="a", usage_values=(2**63, "7")), app, stream_options={"include_usage": True})
    assert b'"prompt_tokens":9223372036854775808,"completion_tokens":"7"' in raw


def test_json_for_a_stream_200_error_bodies_and_raw_bodies(app: FakeUpstream, url: str) -> None:
    app.enqueue(Reply(content="hi", fault="json_stream"))
    resp = httpx.post(
        url + "/v1/chat/completions", json={"model": "m", "messages": USER_HI, "stream": True}, headers=AUTH
    )
    assert resp.headers["content-type"] == "application/json" and resp.json()["object"] == "chat.completion"
    app.enqueue(Reply(fault="error_200", error_message="key {key}"))
    resp = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": USER_HI}, headers=AUTH)
    assert resp.status_code == 200 and resp.json()["error"]["message"] == "key sk-test"
    app.enqueue(Reply(status=502, raw_body=b"<html>bad</html>", raw_content_type="text/html"))
    resp = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": USER_HI}, headers=AUTH)
    assert resp.status_code == 502 and resp.text == "<html>bad</html>"
