"""The relay parses what upstreams send, never byte-matches it: odd SSE framing, garbage, usage
in any shape, JSON where a stream was asked, no usage, absurd numbers. Over HTTP, through each
client API, with the official SDKs where the shape matters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from sluicegate.providers.framing import SSEParser
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import RunningGateway, run_gateway

PROVIDERS = """\
  - {{name: p-anthropic, type: anthropic, base_url: "{upstream}", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: p-gemini, type: gemini, base_url: "{upstream}/v1beta", api_key: env://TEST_UPSTREAM_KEY}}
"""
MODELS = """\
  - {name: m-anthropic, provider: p-anthropic, model: claude-sonnet-4-5}
  - {name: m-gemini, provider: p-gemini, model: gemini-2.5-flash}
"""
EXTRA = """\
server:
  max_stream_event_bytes: 4096
guards:
  - {name: no-codename, kind: words, applies_to: output, settings: {words: [nightingale]}}
"""
CHAT = "/v1/chat/completions"
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
TOOL_REPLY = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("relay"), upstream_url, EXTRA) as gw:
        text = gw.config_path.read_text()
        text = text.replace("models:\n", PROVIDERS.format(upstream=upstream_url) + "models:\n" + MODELS, 1)
        text = text.replace("consumers:\n", "consumers:\n  - {name: gina, models: ['*'], guards: [no-codename]}\n")
        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        gw.keys["gina"] = KeyStore(gw.app.engine).create("gina")[0]
        gw.app.keys.reload()
        yield gw


def oai(gw: RunningGateway, who: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys[who], max_retries=0)


def claude(gw: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)


def events(raw: bytes) -> list[tuple[str | None, bytes]]:
    return SSEParser("client").feed(raw)


def post(gw: RunningGateway, path: str, body: dict[str, Any], who: str = "alice") -> httpx.Response:
    with gw.client(who) as c:
        return c.post(path, json=body, headers={"anthropic-version": "2023-06-01"})


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}


def usage_of(event: dict[str, Any]) -> tuple[int, int]:
    return event["prompt_tokens"], event["completion_tokens"]


# ------------------------------------------------------------------------------------ SSE framing


@pytest.mark.parametrize(
    "quirks",
    [
        ("spaced_json",),
        ("no_space",),
        ("cr",),
        ("crlf", "noise"),
        ("multiline",),
        ("bom", "split"),
        ("split", "spaced_json", "no_space", "crlf"),
    ],
    ids=lambda q: "+".join(q),
)
def test_openai_stream_framing_of_real_servers(
    gw: RunningGateway, upstream: FakeUpstream, quirks: tuple[str, ...]
) -> None:
    upstream.enqueue(Reply(content=TEXT, prompt_tokens=11, completion_tokens=13, sse=quirks))
    with gw.client() as c:
        resp = c.post(CHAT, json=chat_body(stream=True, stream_options={"include_usage": True}))
    raw = resp.content
    # the client gets canonical framing: no upstream comment, id or retry line, no CR, no BOM
    assert b"\r" not in raw and b"\nid:" not in raw and b"retry:" not in raw and b"\xef\xbb\xbf" not in raw
    assert all(line.startswith((b"data: ", b": keep-alive")) for line in raw.split(b"\n") if line)
    got = events(raw)
    assert got[-1] == (None, b"[DONE]")
    chunks = [orjson.loads(d) for _, d in got[:-1]]
    assert "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"]) == TEXT
    assert chunks[-1]["usage"]["prompt_tokens"] == 11
    event = gw.last_audit()
    # usage read from the parsed JSON, whatever its spacing; the end marker seen without a space
    assert event["outcome"] == "ok" and event["usage_source"] == "upstream" and usage_of(event) == (11, 13)


def test_anthropic_passthrough_stream_framing(gw: RunningGateway, upstream: FakeUpstream) -> None:
    quirks = ("no_space", "crlf", "noise", "spaced_json")
    upstream.enqueue(Reply(content=TEXT, prompt_tokens=9, completion_tokens=12, sse=quirks))
    with claude(gw).messages.stream(
        model="m-anthropic", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        message = s.get_final_message()
    assert message.content[0].text == TEXT and message.usage.output_tokens == 12  # type: ignore[union-attr]
    event = gw.last_audit()
    assert event["outcome"] == "ok" and usage_of(event) == (9, 12)
    upstream.enqueue(Reply(content=TEXT, sse=quirks))
    raw = post(gw, "/v1/messages", {"model": "m-anthropic", "max_tokens": 50, "stream": True,
                                     "messages": [{"role": "user", "content": "hi"}]}).content  # fmt: skip
    assert b"\r" not in raw and b"\nid:" not in raw and b"retry:" not in raw
    assert all(line.startswith((b"event: ", b"data: ", b": keep-alive")) for line in raw.split(b"\n") if line)
    assert [name for name, _ in events(raw)][-1] == "message_stop"


# ------------------------------------------------------------------------------------ garbage


@pytest.mark.parametrize("garbage", ["json", "utf8", "array"])
def test_garbage_in_an_openai_stream_is_an_in_band_error(
    gw: RunningGateway, upstream: FakeUpstream, garbage: str
) -> None:
    upstream.enqueue(Reply(content=TEXT, garbage=garbage, chunks_before_fault=2))
    with pytest.raises(openai.APIError):
        for _ in oai(gw).chat.completions.create(**chat_body(stream=True)):  # type: ignore[call-overload]
            pass
    event = gw.last_audit()
    assert event["outcome"] == "upstream_invalid_response" and event["decision"] == "error"


@pytest.mark.parametrize("garbage", ["json", "utf8"])
def test_garbage_in_an_anthropic_stream_is_an_in_band_error(
    gw: RunningGateway, upstream: FakeUpstream, garbage: str
) -> None:
    upstream.enqueue(Reply(content=TEXT, garbage=garbage, chunks_before_fault=2))
    resp = post(gw, "/v1/messages", {"model": "m-anthropic", "max_tokens": 50, "stream": True,
                                      "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    got = events(resp.content)
    assert got[-1][0] == "error" and orjson.loads(got[-1][1])["type"] == "error"
    assert all(d.startswith(b"{") for _, d in got)  # nothing that is not JSON reached the client
    assert gw.last_audit()["outcome"] == "upstream_invalid_response"


def test_garbage_in_a_translated_stream(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content=TEXT, garbage="array", chunks_before_fault=1))
    with pytest.raises(openai.APIError):
        for _ in oai(gw).chat.completions.create(**chat_body(model="m-gemini", stream=True)):  # type: ignore[call-overload]
            pass
    assert gw.last_audit()["outcome"] == "upstream_invalid_response"


def test_a_stream_without_event_separators_is_cut_at_the_bound(gw: RunningGateway, upstream: FakeUpstream) -> None:
    # 200 events never separated by a blank line: one event growing past server.max_stream_event_bytes
    upstream.enqueue(Reply(content=" ".join(f"w{i}" for i in range(200)), sse=("no_separators",)))
    with gw.client() as c:
        resp = c.post(CHAT, json=chat_body(stream=True))
    got = events(resp.content)
    assert len(got) == 1 and "upstream_invalid_response" in got[0][1].decode()
    event = gw.last_audit()
    assert event["outcome"] == "upstream_invalid_response" and "4096 bytes" in event["reason"]


# ------------------------------------------------------------------------------------ usage chunk


@pytest.mark.parametrize("shape", ["empty", "empty_delta", "null_finish", "on_finish"])
def test_a_client_that_did_not_ask_never_gets_the_usage(gw: RunningGateway, upstream: FakeUpstream, shape: str) -> None:
    upstream.enqueue(Reply(content=TEXT, prompt_tokens=5, completion_tokens=6, usage_shape=shape))
    chunks = list(oai(gw).chat.completions.create(**chat_body(stream=True)))  # type: ignore[call-overload]
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == TEXT
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "stop"
    assert usage_of(gw.last_audit()) == (5, 6)  # the gateway still read it
    upstream.enqueue(Reply(content=TEXT, prompt_tokens=5, completion_tokens=6, usage_shape=shape))
    asked = list(oai(gw).chat.completions.create(**chat_body(stream=True, stream_options={"include_usage": True})))  # type: ignore[call-overload]
    assert [c.usage.prompt_tokens for c in asked if c.usage is not None] == [5]


# ------------------------------------------------------------------------------------ JSON for a stream


def test_json_answer_to_an_openai_stream_is_relayed_as_a_stream(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(fault="json_stream", prompt_tokens=7, completion_tokens=4, **TOOL_REPLY))
    stream = oai(gw).chat.completions.create(
        **chat_body(stream=True, tools=[WEATHER], stream_options={"include_usage": True})
    )  # type: ignore[call-overload]
    chunks = list(stream)
    calls = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or ()]
    assert calls[0].function.name == "get_weather" and calls[0].function.arguments == '{"city":"Paris"}'
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    event = gw.last_audit()
    assert event["outcome"] == "ok" and event["stream"] and usage_of(event) == (7, 4)


def test_json_answer_to_a_completions_stream(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="one two", fault="json_stream"))
    chunks = list(oai(gw).completions.create(model="gpt-4o-mini", prompt="x", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "one two"
    assert chunks[-1].choices[0].finish_reason == "stop" and all(c.usage is None for c in chunks)
    assert gw.last_audit()["usage_source"] == "upstream"


def test_json_answer_to_an_anthropic_stream(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(fault="json_stream", prompt_tokens=8, completion_tokens=3, **TOOL_REPLY))
    with claude(gw).messages.stream(
        model="m-anthropic", max_tokens=100, messages=[{"role": "user", "content": "weather?"}],
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
    ) as s:  # fmt: skip
        message = s.get_final_message()
    assert message.stop_reason == "tool_use" and message.content[-1].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert message.usage.output_tokens == 3 and usage_of(gw.last_audit()) == (8, 3)


@pytest.mark.parametrize("client", ["openai", "anthropic", "responses"])
def test_json_answer_to_a_translated_stream(gw: RunningGateway, upstream: FakeUpstream, client: str) -> None:
    upstream.enqueue(Reply(content=TEXT, fault="json_stream", prompt_tokens=6, completion_tokens=9))
    if client == "openai":
        chunks = list(oai(gw).chat.completions.create(**chat_body(model="m-anthropic", stream=True)))  # type: ignore[call-overload]
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    elif client == "anthropic":
        with claude(gw).messages.stream(
            model="m-gemini", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            message = s.get_final_message()
        text = message.content[0].text  # type: ignore[union-attr]
        assert message.usage.output_tokens == 9
    else:
        done = [
            e
            for e in oai(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True)
            if e.type == "response.completed"
        ]
        text = done[0].response.output_text
        assert done[0].response.usage is not None and done[0].response.usage.output_tokens == 9
    assert text == TEXT
    event = gw.last_audit()
    assert event["outcome"] == "ok" and usage_of(event) == (6, 9)


# ------------------------------------------------------------------------------------ no usage


def test_counted_usage_reaches_an_openai_client_that_asked(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content=TEXT, usage=False))
    chunks = list(oai(gw).chat.completions.create(**chat_body(stream=True, stream_options={"include_usage": True})))  # type: ignore[call-overload]
    usage = chunks[-1].usage
    event = gw.last_audit()
    assert usage is not None and event["usage_source"] == "counted"
    assert (usage.prompt_tokens, usage.completion_tokens) == usage_of(event) and usage.completion_tokens == 10


def test_counted_usage_reaches_anthropic_clients(gw: RunningGateway, upstream: FakeUpstream) -> None:
    for model in ("gpt-4o-mini", "m-anthropic"):  # translated, then passthrough
        upstream.enqueue(Reply(content=TEXT, usage=False))
        with claude(gw).messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
            message = s.get_final_message()
        event = gw.last_audit()
        assert event["usage_source"] == "counted" and message.usage.output_tokens == event["completion_tokens"] == 10
        upstream.enqueue(Reply(content=TEXT, usage=False))
        answer = claude(gw).messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        event = gw.last_audit()
        assert event["usage_source"] == "counted" and answer.usage.output_tokens == event["completion_tokens"]
        assert answer.usage.input_tokens == event["prompt_tokens"] > 0


def test_counted_usage_reaches_responses_clients(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content=TEXT, usage=False))
    done = [
        e
        for e in oai(gw).responses.create(model="gpt-4o-mini", input="hi", stream=True)
        if e.type == "response.completed"
    ]
    usage = done[0].response.usage
    event = gw.last_audit()
    assert usage is not None and event["usage_source"] == "counted"
    assert (usage.input_tokens, usage.output_tokens) == usage_of(event)
    upstream.enqueue(Reply(content=TEXT, usage=False))
    answer = oai(gw).responses.create(model="gpt-4o-mini", input="hi")
    assert answer.usage is not None and answer.usage.output_tokens == gw.last_audit()["completion_tokens"] == 10


# ------------------------------------------------------------------------------------ absurd numbers


@pytest.mark.parametrize("bad", [2**63, -1, 1.5, "7", None], ids=["2**63", "negative", "float", "string", "null"])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "m-anthropic"])
def test_numbers_that_are_not_counts_are_counted_instead(
    gw: RunningGateway, upstream: FakeUpstream, bad: Any, model: str
) -> None:
    upstream.enqueue(Reply(content=TEXT, usage_values=(bad, bad)))
    chunks = list(
        oai(gw).chat.completions.create(**chat_body(model=model, stream=True, stream_options={"include_usage": True}))
    )  # type: ignore[call-overload]
    usage = chunks[-1].usage
    event = gw.last_audit()
    assert event["usage_source"] == "counted" and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == usage_of(event) and event["completion_tokens"] == 10
    assert httpx.get(gw.url + "/readyz").status_code == 200  # the audit writer is healthy
    upstream.enqueue(Reply(content=TEXT, usage_values=(bad, 3)))
    answer = oai(gw).chat.completions.create(**chat_body(model=model))
    assert answer.usage is not None and answer.usage.prompt_tokens == gw.last_audit()["prompt_tokens"] < 2**31


# ------------------------------------------------------------------------------------ answers that are not objects


@pytest.mark.parametrize("body", [b"[1, 2]", b'"nightingale"', b"null", b"not json"])
def test_an_answer_that_is_not_a_json_object_is_refused(
    gw: RunningGateway, upstream: FakeUpstream, body: bytes
) -> None:
    upstream.enqueue(Reply(raw_body=body))
    resp = post(gw, CHAT, chat_body(), who="gina")
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_invalid_response"
    assert b"nightingale" not in resp.content
    upstream.enqueue(Reply(raw_body=body))
    resp = post(
        gw, "/v1/messages", {"model": "m-anthropic", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.status_code == 502 and resp.json()["type"] == "error"


# ------------------------------------------------------------------------------------ guards see what is sent


def test_nothing_after_an_upstream_error_event_is_relayed(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="fine words then nightingale ones", fault="error_event", chunks_before_fault=1))
    with gw.client("gina") as c:
        resp = c.post(CHAT, json=chat_body(stream=True))
    assert b"nightingale" not in resp.content
    got = events(resp.content)
    assert b'"error"' in got[-1][1] and (None, b"[DONE]") not in got
    assert gw.last_audit()["outcome"] == "upstream_error"


def test_what_the_guard_checked_is_what_the_client_gets(gw: RunningGateway, upstream: FakeUpstream) -> None:
    # duplicate keys: parsers that keep the first value would see a text the guard never saw
    dup = (
        b'{"choices": [{"index": 0, "delta": {"content": "nightingale"}}],'
        b' "choices": [{"index": 0, "delta": {"content": "ok"}}]}'
    )
    upstream.enqueue(Reply(raw_body=b"data: " + dup + b"\n\ndata: [DONE]\n\n", raw_content_type="text/event-stream"))
    with gw.client("gina") as c:
        resp = c.post(CHAT, json=chat_body(stream=True))
    assert b"nightingale" not in resp.content and b'"ok"' in resp.content


@pytest.mark.parametrize("quirks", [("no_space",), ("noise",), ("crlf", "multiline")], ids="+".join)
def test_a_guarded_stream_is_scanned_whatever_its_framing(
    gw: RunningGateway, upstream: FakeUpstream, quirks: tuple[str, ...]
) -> None:
    upstream.enqueue(Reply(content="this answer says nightingale things", sse=quirks))
    with gw.client("gina") as c:
        resp = c.post(CHAT, json=chat_body(stream=True))
    assert b"nightingale" not in resp.content and b"content_blocked" in resp.content
    assert gw.last_audit()["decision"] == "blocked"


def test_json_for_a_stream_is_told_by_its_body_when_the_type_says_nothing(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    upstream.enqueue(Reply(raw_body=b"\n " + orjson.dumps(answer), raw_content_type="application/octet-stream"))
    chunks = list(oai(gw).chat.completions.create(**chat_body(stream=True)))  # type: ignore[call-overload]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == TEXT
    assert usage_of(gw.last_audit()) == (3, 4)


@pytest.mark.parametrize("wait", [float("inf"), 1e300, -5.0])
def test_a_retry_after_that_is_no_wait_is_not_relayed(gw: RunningGateway, upstream: FakeUpstream, wait: float) -> None:
    upstream.enqueue(Reply(status=429, retry_after=wait))
    resp = post(gw, CHAT, chat_body())
    assert resp.status_code == 429 and "retry-after" not in resp.headers
    assert gw.last_audit()["outcome"] == "upstream_rate_limited"


def test_an_upstream_error_event_keeps_its_kind_in_the_clients_shape(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    # Anthropic's overloaded_error, on a passthrough stream, is the gateway's 503 in Anthropic's shape
    upstream.enqueue(Reply(content=TEXT, fault="error_event", error_message="Overloaded"))
    raw = post(gw, "/v1/messages", {"model": "m-anthropic", "max_tokens": 50, "stream": True,
                                     "messages": [{"role": "user", "content": "hi"}]}).content  # fmt: skip
    name, data = events(raw)[-1]
    error = orjson.loads(data)["error"]
    assert name == "error" and error["type"] == "overloaded_error" and "p-anthropic" in error["message"]
    assert gw.last_audit()["outcome"] == "upstream_unavailable"
    # the same upstream event reaches an OpenAI client as its own error
    upstream.enqueue(Reply(content=TEXT, fault="error_event", error_message="Overloaded"))
    with pytest.raises(openai.APIError, match="unavailable"):
        for _ in oai(gw).chat.completions.create(**chat_body(model="m-anthropic", stream=True)):  # type: ignore[call-overload]
            pass


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_compressed_answer_is_bounded_once_decoded(gw: RunningGateway, upstream: FakeUpstream, stream: bool) -> None:
    # 96 MiB of JSON in about 100 KiB of gzip: the bound applies to what it decodes to.
    import gzip

    answer = b'{"id": "x", "object": "chat.completion", "choices": [], "pad": "' + b"a" * (96 << 20) + b'"}'
    upstream.enqueue(Reply(raw_body=gzip.compress(answer, 9), headers={"content-encoding": "gzip"}))
    with gw.client() as c:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        resp = c.post(CHAT, json=body, timeout=60)
    text = resp.text
    assert resp.status_code == 502 or "upstream_error" in text, text[:300]
    assert "more than" in text and len(text) < 10_000
    assert gw.last_audit()["outcome"] == "upstream_error"
