"""Every inbound dialect x every provider family, over HTTP, with the official SDKs as clients.

One fake upstream serves every wire format (OpenAI, Azure, Anthropic, Gemini, Cohere, Ollama
native, Bedrock Converse); the gateway has one model per provider. Each case checks the answer
the SDK parsed (text, or a tool call), the usage the client sees, the audit event, and that the
upstream got the request in its own format.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import CANARY_KEY, RunningGateway, run_gateway

PROVIDERS = """\
  - {{name: p-azure, type: azure_openai, base_url: "{upstream}", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: p-anthropic, type: anthropic, base_url: "{upstream}", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: p-gemini, type: gemini, base_url: "{upstream}/v1beta", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: p-cohere, type: cohere, base_url: "{upstream}", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: p-ollama, type: ollama_native, base_url: "{upstream}", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: p-bedrock, type: bedrock, base_url: "{upstream}", api_key: env://TEST_UPSTREAM_KEY}}
"""


@dataclass(frozen=True)
class Family:
    name: str
    model: str
    provider: str
    upstream_model: str
    #: the upstream path the request must reach (streamed, not streamed)
    paths: tuple[str, str]


FAMILIES = [
    Family("openai", "m-openai", "mock", "gpt-4o", ("/v1/chat/completions", "/v1/chat/completions")),
    Family(
        "azure",
        "m-azure",
        "p-azure",
        "dep-1",
        ("/openai/deployments/dep-1/chat/completions", "/openai/deployments/dep-1/chat/completions"),
    ),
    Family("anthropic", "m-anthropic", "p-anthropic", "claude-sonnet-4-5", ("/v1/messages", "/v1/messages")),
    Family(
        "gemini",
        "m-gemini",
        "p-gemini",
        "gemini-2.5-flash",
        ("/v1beta/models/gemini-2.5-flash:generateContent", "/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
    ),
    Family("cohere", "m-cohere", "p-cohere", "command-a-03-2025", ("/v2/chat", "/v2/chat")),
    Family("ollama", "m-ollama", "p-ollama", "llama3.2", ("/api/chat", "/api/chat")),
    Family(
        "bedrock",
        "m-bedrock",
        "p-bedrock",
        "anthropic.claude-3-haiku",
        ("/model/anthropic.claude-3-haiku/converse", "/model/anthropic.claude-3-haiku/converse-stream"),
    ),
]


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("matrix"), upstream_url) as gw:
        text = gw.config_path.read_text()
        text = text.replace("models:\n", PROVIDERS.format(upstream=upstream_url) + "models:\n", 1)
        models = "".join(
            f"  - {{name: {f.model}, provider: {f.provider}, model: {f.upstream_model}}}\n" for f in FAMILIES
        )
        text = text.replace("models:\n", "models:\n" + models, 1)
        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        yield gw


WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_REPLY = Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])


@dataclass
class Outcome:
    """What a client got, in dialect-independent terms."""

    text: str
    tool: tuple[str, dict[str, Any]] | None
    prompt_tokens: int | None
    completion_tokens: int | None


# -- the three client dialects -------------------------------------------------------------------


def openai_chat(gw: RunningGateway, model: str, prompt: str, stream: bool, tools: bool) -> Outcome:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
    extra: dict[str, Any] = {"tools": [WEATHER_TOOL_OPENAI]} if tools else {}
    messages: list[Any] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=50, **extra)
        message = reply.choices[0].message
        tool = None
        if message.tool_calls:
            fn = message.tool_calls[0].function  # type: ignore[union-attr]
            tool = (fn.name, json.loads(fn.arguments))
            assert reply.choices[0].finish_reason == "tool_calls"
        assert reply.usage is not None
        return Outcome(message.content or "", tool, reply.usage.prompt_tokens, reply.usage.completion_tokens)
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    name, args = None, ""
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            if tc.function and tc.function.name:
                name = tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["tool_calls" if tools else "stop"]
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    return Outcome(text, (name, json.loads(args)) if name else None, usage.prompt_tokens, usage.completion_tokens)


def openai_responses(gw: RunningGateway, model: str, prompt: str, stream: bool, tools: bool) -> Outcome:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
    extra: dict[str, Any] = {}
    if tools:
        fn = WEATHER_TOOL_OPENAI["function"]
        extra["tools"] = [{"type": "function", "name": fn["name"], "description": fn["description"],  # type: ignore[index]
                           "parameters": fn["parameters"], "strict": False}]  # type: ignore[index]  # fmt: skip
    if stream:
        with client.responses.stream(
            model=model, instructions="Be brief.", input=prompt, max_output_tokens=50, **extra
        ) as events:
            for _ in events:
                pass
            response = events.get_final_response()
    else:
        response = client.responses.create(
            model=model, instructions="Be brief.", input=prompt, max_output_tokens=50, **extra
        )
    assert response.status == "completed"
    tool = None
    for item in response.output:
        if item.type == "function_call":
            tool = (item.name, json.loads(item.arguments))
    assert response.usage is not None
    return Outcome(response.output_text, tool, response.usage.input_tokens, response.usage.output_tokens)


def anthropic_messages(gw: RunningGateway, model: str, prompt: str, stream: bool, tools: bool) -> Outcome:
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)
    extra: dict[str, Any] = {}
    if tools:
        fn = WEATHER_TOOL_OPENAI["function"]
        extra["tools"] = [{"name": fn["name"], "description": fn["description"],  # type: ignore[index]
                           "input_schema": fn["parameters"]}]  # type: ignore[index]  # fmt: skip
    kwargs: dict[str, Any] = {
        "model": model,
        "max_tokens": 50,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": prompt}],
        **extra,
    }
    if stream:
        with client.messages.stream(**kwargs) as events:
            for _ in events:
                pass
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert message.stop_reason == ("tool_use" if tools else "end_turn")
    text = "".join(b.text for b in message.content if b.type == "text")
    tool = next(((b.name, dict(b.input)) for b in message.content if b.type == "tool_use"), None)  # type: ignore[arg-type]
    usage = message.usage
    prompt_tokens = usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    return Outcome(text, tool, prompt_tokens, usage.output_tokens)


Client = Callable[[RunningGateway, str, str, bool, bool], Outcome]
DIALECTS: dict[str, Client] = {"chat": openai_chat, "responses": openai_responses, "messages": anthropic_messages}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_text(gw: RunningGateway, upstream: FakeUpstream, dialect: str, family: Family, stream: bool) -> None:
    upstream.enqueue(Reply(content="Hello from the matrix", prompt_tokens=11, completion_tokens=7))
    got = DIALECTS[dialect](gw, family.model, "hi", stream, False)
    assert got.text == "Hello from the matrix"
    assert got.tool is None
    assert (got.prompt_tokens, got.completion_tokens) == (11, 7)
    sent = upstream.requests[-1]
    assert sent.path == family.paths[stream]
    assert CANARY_KEY not in json.dumps(got.__dict__)
    event = gw.last_audit()
    assert event["provider"] == family.provider and event["outcome"] == "ok", event
    assert (event["prompt_tokens"], event["completion_tokens"]) == (11, 7)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_tool_call(gw: RunningGateway, upstream: FakeUpstream, dialect: str, family: Family, stream: bool) -> None:
    upstream.enqueue(TOOL_REPLY)
    got = DIALECTS[dialect](gw, family.model, "weather in Paris?", stream, True)
    assert got.tool == ("get_weather", {"city": "Paris"})
    sent = upstream.requests[-1]
    assert "get_weather" in sent.body.decode()  # the tool definition reached the upstream, in its format
    assert gw.last_audit()["outcome"] == "ok"


# -- errors and cut streams ----------------------------------------------------------------------

#: upstream status -> the status the client gets, whatever the dialect and provider
STATUS_MAP = {400: 400, 401: 502, 429: 429, 500: 502}


def _error_of(dialect: str, gw: RunningGateway, model: str, stream: bool) -> tuple[int, str]:
    """(status, raw body) of the error a client got."""
    try:
        DIALECTS[dialect](gw, model, "hi", stream, False)
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        return exc.status_code, exc.response.text
    raise AssertionError("the call succeeded")


@pytest.mark.parametrize("status", list(STATUS_MAP))
@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_upstream_errors(gw: RunningGateway, upstream: FakeUpstream, dialect: str, family: Family, status: int) -> None:
    upstream.enqueue(Reply(status=status, error_message=f"refused, key {CANARY_KEY}", retry_after=3))
    got, body = _error_of(dialect, gw, family.model, False)
    assert got == STATUS_MAP[status], body
    assert CANARY_KEY not in body and "Traceback" not in body
    data = json.loads(body)
    if dialect == "messages":
        assert data["type"] == "error" and {"type", "message"} <= set(data["error"]), data
    else:
        assert {"message", "type", "code"} <= set(data["error"]), data
    event = gw.last_audit()
    assert event["status"] == got and event["provider"] == family.provider


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_cut_stream_ends_with_an_error(
    gw: RunningGateway, upstream: FakeUpstream, dialect: str, family: Family
) -> None:
    upstream.enqueue(Reply(content="one two three four five six seven", fault="reset", chunks_before_fault=2))
    # The SDKs raise on an in-band error event; the Responses stream helper raises RuntimeError
    # when the stream ends without `response.completed`.
    with pytest.raises((openai.APIError, anthropic.APIError, RuntimeError)):
        DIALECTS[dialect](gw, family.model, "hi", True, False)
    event = gw.last_audit()
    assert event["outcome"] == "upstream_stream_cut", event


# -- usage details -------------------------------------------------------------------------------

#: families whose wire format reports cached prompt tokens, and reasoning tokens
CACHED = {"openai", "azure", "anthropic", "gemini", "bedrock"}
REASONING = {"openai", "azure", "gemini"}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_cached_and_reasoning_tokens_reach_openai_clients(
    gw: RunningGateway, upstream: FakeUpstream, family: Family, stream: bool
) -> None:
    upstream.enqueue(
        Reply(content="ok then", prompt_tokens=20, completion_tokens=9, cached_tokens=12, reasoning_tokens=5)
    )
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=family.model, messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        usage = chunks[-1].usage
    else:
        usage = client.chat.completions.create(model=family.model, messages=messages).usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (20, 9)
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None
    reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else None
    if family.name in CACHED:
        assert cached == 12
    if family.name in REASONING:
        assert reasoning == 5
