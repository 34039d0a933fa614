"""The official `openai` SDK against the gateway, changing nothing but `base_url` and the key."""

from __future__ import annotations

import json

import openai
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import CANARY_KEY, RunningGateway


def sdk(gw: RunningGateway, who: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys[who], max_retries=0)


def asdk(gw: RunningGateway, who: str = "alice") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=gw.keys[who], max_retries=0)


def test_chat_completion(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    raw = sdk(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: hello there"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello there"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    request_id = raw.headers["x-request-id"]
    # the upstream got the gateway's provider key, never the consumer's key
    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert gateway.keys["alice"] not in str(sent.headers)
    event = gateway.last_audit()
    assert event["request_id"] == request_id
    assert event["consumer"] == "alice" and event["key_id"].startswith("key_")
    assert event["model_requested"] == "gpt-4o-mini" and event["model_served"] == "gpt-4o-mini"
    assert event["provider"] == "mock" and event["status"] == 200 and event["decision"] == "allowed"
    assert event["prompt_tokens"] == completion.usage.prompt_tokens
    assert event["completion_tokens"] == completion.usage.completion_tokens
    assert event["usage_source"] == "upstream"
    # 0.15 and 0.6 USD per million tokens = micro-USD per token
    expected = round(completion.usage.prompt_tokens * 0.15 + completion.usage.completion_tokens * 0.6)
    assert event["cost_micro_usd"] == expected
    assert event["latency_ms"] > 0 and event["ttft_ms"] is not None


def test_alias_replaces_model_and_keeps_the_rest_of_the_body(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    sdk(gateway).chat.completions.create(
        model="team-model",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        temperature=0.25,
        user="u-42",
        extra_body={"custom_field": {"nested": [1, 2]}},
    )
    body = upstream.requests[-1].json()
    assert body["model"] == "gpt-4o"
    assert body["temperature"] == 0.25 and body["user"] == "u-42"
    assert body["custom_field"] == {"nested": [1, 2]}
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    event = gateway.last_audit()
    assert event["model_requested"] == "team-model" and event["model_served"] == "gpt-4o"


def test_glob_route_passes_the_requested_name(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    sdk(gateway).chat.completions.create(model="open-thing-1", messages=[{"role": "user", "content": "x"}])
    assert upstream.requests[-1].json()["model"] == "open-thing-1"


def test_stream_with_usage(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    stream = sdk(gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "echo: one two three four"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    event = gateway.last_audit()
    assert event["stream"] is True or event["stream"] == 1
    assert event["completion_tokens"] == usage.completion_tokens
    assert event["prompt_tokens"] == usage.prompt_tokens
    assert event["ttft_ms"] is not None and event["ttft_ms"] <= event["latency_ms"]


def test_stream_without_usage_asked_still_accounts(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    chunks = list(
        sdk(gateway).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: a b c"}], stream=True
        )
    )
    # the client did not ask for usage: it sees no usage chunk...
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    # ...but the gateway asked the upstream for it and accounted for it
    assert upstream.requests[-1].json()["stream_options"] == {"include_usage": True}
    event = gateway.last_audit()
    assert event["usage_source"] == "upstream" and event["completion_tokens"] == 3


async def test_async_client_chat_and_stream(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    client = asdk(gateway)
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: async"}]
    )
    assert completion.choices[0].message.content == "async"
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: async stream"}], stream=True
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == "async stream"
    await client.close()


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def test_tool_calls(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(tool_calls=[{"name": "get_weather", "arguments": '{"city":"Paris"}'}]))
    completion = sdk(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, tool_choice="auto"
    )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert upstream.requests[-1].json()["tools"] == TOOLS


def test_tool_calls_streamed_and_tool_results(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(tool_calls=[{"name": "get_weather", "arguments": '{"city":"Paris"}'}]))
    stream = sdk(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, stream=True
    )
    name, args = "", ""
    for chunk in stream:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name += tc.function.name or "" if tc.function else ""
            args += tc.function.arguments or "" if tc.function else ""
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"}
    # the follow-up turn with the tool result goes through unchanged
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
    ]
    sdk(gateway).chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert upstream.requests[-1].json()["messages"] == messages


def test_multipart_content(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    content = [
        {"type": "text", "text": "echo: what is in "},
        {"type": "text", "text": "this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    completion = sdk(gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
    )
    assert completion.choices[0].message.content == "what is in this image?"
    assert upstream.requests[-1].json()["messages"][0]["content"] == content


def test_legacy_completions(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    completion = sdk(gateway).completions.create(model="gpt-4o-mini", prompt="Say hi", max_tokens=5)
    assert completion.choices[0].text
    assert upstream.requests[-1].path == "/v1/completions"
    chunks = list(sdk(gateway).completions.create(model="gpt-4o-mini", prompt="Say hi", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    event = gateway.last_audit()
    assert event["endpoint"] == "completions" and event["completion_tokens"]


@pytest.mark.parametrize("encoding", ["sdk-default", "float"])
def test_embeddings(gateway: RunningGateway, upstream: FakeUpstream, encoding: str) -> None:
    # The SDK asks for base64 by default and decodes it itself.
    extra = {} if encoding == "sdk-default" else {"encoding_format": encoding}
    result = sdk(gateway).embeddings.create(model="text-embedding-3-small", input=["first", "second"], **extra)
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8
    assert upstream.requests[-1].path == "/v1/embeddings"
    assert upstream.requests[-1].json()["encoding_format"] == ("base64" if encoding == "sdk-default" else "float")
    event = gateway.last_audit()
    assert event["endpoint"] == "embeddings" and event["prompt_tokens"] == result.usage.prompt_tokens


def test_models_lists_what_the_consumer_may_use(gateway: RunningGateway) -> None:
    alice = sorted(m.id for m in sdk(gateway, "alice").models.list())
    bob = [m.id for m in sdk(gateway, "bob").models.list()]
    assert alice == ["gpt-4o-mini", "team-model", "text-embedding-3-small"]
    assert bob == ["gpt-4o-mini"]


def test_forbidden_model_is_a_permission_error(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        sdk(gateway, "bob").chat.completions.create(model="team-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 403
    assert upstream.calls == 0
    event = gateway.last_audit()
    assert event["decision"] == "denied" and event["consumer"] == "bob" and event["outcome"] == "model_not_allowed"


def test_unknown_model_is_not_found(gateway: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk(gateway).chat.completions.create(model="gtp-4o", messages=[{"role": "user", "content": "x"}])


def test_bad_key_is_an_authentication_error(gateway: RunningGateway) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sg-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
