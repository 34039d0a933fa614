"""AWS Bedrock (Converse / ConverseStream): SigV4 and API-key auth checked by the fake over real
HTTP, translation both ways, the AWS event-stream decoder, error mapping."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import struct
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from yarl import URL

from sluicegate.config.loader import parse_config
from sluicegate.config.model import ProviderConfig, ServerConfig
from sluicegate.errors import BadRequest, RateLimited, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from sluicegate.providers.base import provider_types
from sluicegate.providers.bedrock import BedrockProvider, BedrockStreamDecoder, converse_request, parse_credentials
from sluicegate.scrub import NOTHING, Scrubber
from sluicegate.testing import FakeUpstream, Reply, serve_in_thread
from sluicegate.testing.fake_bedrock import event, event_frame, exception_frame
from tests.conftest import RunningGateway, run_gateway

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLEtokenAQoDYXdzEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ"
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxlEXAMPLE"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
USER = [{"role": "user", "content": "echo: a b c"}]


def make_provider(base_url: str | None = None, **options: Any) -> BedrockProvider:
    ptype = provider_types()["bedrock"]
    config = ProviderConfig(name="br", type="bedrock", base_url=base_url, api_key="env://X", options=options)
    provider = ptype.factory(config, ptype.preset)
    assert isinstance(provider, BedrockProvider)
    return provider


def make_call(stream: bool = False, model: str = MODEL) -> Any:
    return SimpleNamespace(
        stream=stream,
        route=SimpleNamespace(upstream_model=model),
        model_requested=model,
        headers={},
        snapshot=SimpleNamespace(server=ServerConfig()),
    )


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    # As the relay sends it: aiohttp, the URL parsed by yarl.
    async with aiohttp.ClientSession() as session, session.post(URL(url), data=body, headers=headers) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


def send(
    provider: BedrockProvider,
    secret: str | None,
    chat: dict[str, Any],
    stream: bool = False,
    model: str = MODEL,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    call = make_call(stream, model)
    signed = provider.build_request(call, chat)
    url = provider.url_for("chat", model, stream)
    headers = provider.request_headers(call, secret, url, signed)
    return asyncio.run(_post(url, signed if body is None else body, dict(headers)))


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeUpstream, str]]:
    app = FakeUpstream(required_key=f"{AKID}:{SECRET}")
    with serve_in_thread(app) as url:
        yield app, url


@pytest.fixture
def upstream(fake: tuple[FakeUpstream, str]) -> tuple[FakeUpstream, BedrockProvider]:
    app, url = fake
    app.reset()
    app.required_key = f"{AKID}:{SECRET}"
    app.require_auth = True
    return app, make_provider(url)


def decode_all(data: bytes, split: int | None = None, model: str = MODEL) -> tuple[list[dict[str, Any]], bool]:
    decoder = BedrockStreamDecoder("br", model)
    if split is None:
        chunks = decoder.feed(data)
    else:
        chunks = decoder.feed(data[:split]) + decoder.feed(data[split:])
    return chunks + decoder.close(), decoder.done


def summary(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Text, reasoning, tool calls, finish reason and usage of a neutral chunk stream."""
    out: dict[str, Any] = {"role": None, "content": "", "reasoning": "", "signature": None, "tools": {}, "finish": None}
    for chunk in chunks:
        if not chunk["choices"]:
            out["usage"] = chunk["usage"]
            continue
        choice = chunk["choices"][0]
        delta = choice["delta"]
        out["role"] = out["role"] or delta.get("role")
        out["content"] += delta.get("content") or ""
        out["reasoning"] += delta.get("reasoning_content") or ""
        out["signature"] = delta.get("reasoning_signature", out["signature"])
        for tc in delta.get("tool_calls") or ():
            slot = out["tools"].setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
            slot["id"] = tc.get("id", slot["id"])
            slot["name"] = tc["function"].get("name", slot["name"])
            slot["arguments"] += tc["function"].get("arguments", "")
        out["finish"] = choice["finish_reason"] or out["finish"]
    return out


# --------------------------------------------------------------------------------------------- config and credentials


def test_config_options_and_base_url() -> None:
    text = """\
providers:
  - name: br
    type: bedrock
    api_key: env://AWS
    options: {region: eu-west-3}
  - name: bad
    type: bedrock
    api_key: env://AWS
    options: {region: Paris, profile: x}
"""
    _, issues = parse_config(text)
    got = sorted(str(i) for i in issues if not i.warning)
    assert got == [
        "providers[1].options.profile (line 9): unknown key",
        "providers[1].options.region (line 9): String should match pattern '^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$'",
    ]
    assert make_provider(region="eu-west-3").base_url == "https://bedrock-runtime.eu-west-3.amazonaws.com"
    assert make_provider().base_url == "https://bedrock-runtime.us-east-1.amazonaws.com"
    assert make_provider(region="cn-north-1").base_url == "https://bedrock-runtime.cn-north-1.amazonaws.com.cn"
    assert make_provider("http://vpce.example:8443/", region="eu-west-3").base_url == "http://vpce.example:8443"


def test_credential_forms() -> None:
    assert parse_credentials(f"{AKID}:{SECRET}") == (AKID, SECRET, None)
    assert parse_credentials(f"{AKID}:{SECRET}:{TOKEN}") == (AKID, SECRET, TOKEN)
    as_json = orjson.dumps({"access_key_id": AKID, "secret_access_key": SECRET, "session_token": TOKEN}).decode()
    assert parse_credentials(as_json) == (AKID, SECRET, TOKEN)
    assert parse_credentials(API_KEY) is None
    assert (
        parse_credentials("bedrock-api-key-YmVkcm9jay5hbWF6b25hd3MuY29tLz9BY3Rpb249Q2FsbFdpdGhCZWFyZXJUb2tlbg==")
        is None
    )
    with pytest.raises(ValueError) as info:
        parse_credentials('{"access_key_id": "AKIA1"}')
    assert "AKIA1" not in str(info.value)


def test_bad_credentials_json_names_no_part_of_it() -> None:
    provider = make_provider()
    secret = '{"access_key_id": "AKIASECRETISH", "oops": "' + SECRET + '"}'
    with pytest.raises(UpstreamError) as info:
        provider.request_headers(make_call(), secret, provider.url_for("chat", MODEL), b"{}")
    assert "AKIASECRETISH" not in info.value.message and SECRET not in info.value.message


def test_url_for_quotes_the_model_id() -> None:
    provider = make_provider()
    assert provider.url_for("chat", MODEL) == f"https://bedrock-runtime.us-east-1.amazonaws.com/model/{MODEL}/converse"
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"
    url = provider.url_for("chat", arn, stream=True)
    assert url.endswith(
        "/model/arn:aws:bedrock:us-east-1:123456789012:inference-profile%2Fus.anthropic."
        "claude-3-haiku-20240307-v1:0/converse-stream"
    )
    # What is signed is what goes on the wire.
    assert str(URL(url)) == url


# --------------------------------------------------------------------------------------------- auth over real HTTP


def test_sigv4_request_is_verified_and_answered(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    app, provider = upstream
    status, headers, body = send(provider, f"{AKID}:{SECRET}", {"messages": USER})
    assert status == 200, body
    assert headers["content-type"] == "application/json" and "x-amzn-requestid" in headers
    neutral = provider.parse_response(orjson.loads(body), make_call())
    assert neutral["choices"][0]["message"]["content"] == "a b c"
    assert neutral["choices"][0]["finish_reason"] == "stop"
    sent = app.requests[-1]
    assert sent.path == f"/model/{MODEL}/converse"
    auth = sent.headers["authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={AKID}/") and "/us-east-1/bedrock/aws4_request" in auth
    assert "SignedHeaders=" in auth and "host" in auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert sent.headers["content-type"] == "application/json" and "x-amz-date" in sent.headers
    assert SECRET not in str(sent.headers)
    assert sent.json() == {"messages": [{"role": "user", "content": [{"text": "echo: a b c"}]}]}


def test_wrong_secret_is_refused_with_invalid_signature(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    _, provider = upstream
    status, headers, body = send(provider, f"{AKID}:not-the-secret", {"messages": USER})
    assert status == 403
    assert headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert orjson.loads(body)["message"].startswith("The request signature we calculated does not match")
    error = provider.parse_error(status, body, None, Scrubber([f"{AKID}:not-the-secret"]))
    assert isinstance(error, UpstreamError) and error.code == "upstream_auth_error"
    assert "not-the-secret" not in error.message and AKID not in error.message


def test_tampered_body_breaks_the_signature(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    _, provider = upstream
    other = orjson.dumps({"messages": [{"role": "user", "content": [{"text": "something else"}]}]})
    status, headers, _ = send(provider, f"{AKID}:{SECRET}", {"messages": USER}, body=other)
    assert status == 403 and headers["x-amzn-errortype"] == "InvalidSignatureException"


def test_model_ids_with_colons_sign_correctly(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    _, provider = upstream
    for model in (
        "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
        "meta.llama3-70b-instruct-v1:0",
        "amazon.nova-pro-v1:0",
    ):
        status, _, body = send(provider, f"{AKID}:{SECRET}", {"messages": USER}, model=model)
        assert status == 200, body


def test_unknown_key_id_is_unrecognized(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    _, provider = upstream
    status, headers, body = send(provider, f"AKIAOTHERKEY0000000:{SECRET}", {"messages": USER})
    assert status == 403 and headers["x-amzn-errortype"] == "UnrecognizedClientException"
    assert orjson.loads(body) == {"message": "The security token included in the request is invalid."}


def test_session_token_form(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    app, provider = upstream
    app.required_key = f"{AKID}:{SECRET}:{TOKEN}"
    status, _, body = send(provider, f"{AKID}:{SECRET}:{TOKEN}", {"messages": USER})
    assert status == 200, body
    assert app.requests[-1].headers["x-amz-security-token"] == TOKEN
    assert "x-amz-security-token" in app.requests[-1].headers["authorization"]
    status, headers, _ = send(provider, f"{AKID}:{SECRET}:WRONGTOKEN", {"messages": USER})
    assert status == 403 and headers["x-amzn-errortype"] == "UnrecognizedClientException"
    # without a token where one is required
    status, _, _ = send(provider, f"{AKID}:{SECRET}", {"messages": USER})
    assert status == 403


def test_json_credentials_form(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    app, provider = upstream
    secret = orjson.dumps({"access_key_id": AKID, "secret_access_key": SECRET, "session_token": TOKEN}).decode()
    app.required_key = f"{AKID}:{SECRET}:{TOKEN}"
    status, _, body = send(provider, secret, {"messages": USER})
    assert status == 200, body
    app.required_key = f"{AKID}:{SECRET}"
    secret = orjson.dumps({"access_key_id": AKID, "secret_access_key": SECRET}).decode()
    status, _, body = send(provider, secret, {"messages": USER})
    assert status == 200, body
    assert "x-amz-security-token" not in app.requests[-1].headers


def test_api_key_is_sent_as_bearer(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    app, provider = upstream
    app.required_key = API_KEY
    status, _, body = send(provider, API_KEY, {"messages": USER})
    assert status == 200, body
    assert app.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
    assert "x-amz-date" not in app.requests[-1].headers
    status, headers, body = send(provider, API_KEY + "x", {"messages": USER})
    assert status == 403 and headers["x-amzn-errortype"] == "AccessDeniedException"
    assert orjson.loads(body) == {"Message": "Authentication failed: Please make sure your API Key is valid."}
    error = provider.parse_error(status, body, None, Scrubber([API_KEY + "x"]))
    assert error.code == "upstream_auth_error" and API_KEY not in error.message
    # SigV4 credentials where an API key is required, and the other way round
    assert send(provider, f"{AKID}:{SECRET}", {"messages": USER})[0] == 403
    app.required_key = f"{AKID}:{SECRET}"
    assert send(provider, API_KEY, {"messages": USER})[0] == 403


def test_missing_credentials(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    _, provider = upstream
    status, headers, _ = send(provider, None, {"messages": USER})
    assert status == 403 and headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"


def test_signer_is_built_once_per_secret() -> None:
    provider = make_provider()
    url = provider.url_for("chat", MODEL)
    first = provider.request_headers(make_call(), f"{AKID}:{SECRET}", url, b"{}")
    assert len(provider._auth) == 1
    second = provider.request_headers(make_call(), f"{AKID}:{SECRET}", url, b'{"a":1}')
    assert len(provider._auth) == 1
    assert first["Authorization"] != second["Authorization"]  # the body is signed
    stream = provider.request_headers(make_call(stream=True), f"{AKID}:{SECRET}", url, b"{}")
    assert stream["Accept"] == "application/vnd.amazon.eventstream" and first["Accept"] == "application/json"


# ------------------------------------------------------------------------------------- fake validation and errors


def test_fake_validates_like_converse(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    _, provider = upstream
    cases = [
        ({"messages": []}, "must start with a user message"),
        ({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]}, "must start with a user message"),
        ({"messages": [{"role": "system", "content": [{"text": "hi"}]}]}, "enum value set: [user, assistant]"),
        (
            {"messages": [{"role": "user", "content": [{"text": "a"}]}, {"role": "user", "content": [{"text": "b"}]}]},
            "must alternate between user and assistant",
        ),
        ({"messages": [{"role": "user", "content": [{"text": " "}]}]}, "is blank"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"text": "a"}]},
                    {"role": "assistant", "content": [{"toolUse": {"name": "f", "input": {}}}]},
                ],
                "toolConfig": {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {}}}}]},
            },
            "toolUse.toolUseId",
        ),
    ]
    call = make_call()
    url = provider.url_for("chat", MODEL)
    for body, message in cases:
        raw = orjson.dumps(body)
        headers = provider.request_headers(call, f"{AKID}:{SECRET}", url, raw)
        status, resp_headers, answer = asyncio.run(_post(url, raw, dict(headers)))
        assert status == 400, body
        assert resp_headers["x-amzn-errortype"] == "ValidationException"
        assert message in orjson.loads(answer)["message"]
        error = provider.parse_error(status, answer, None, NOTHING)
        assert error.status == 400 and message in error.message


@pytest.mark.parametrize(
    ("status", "kind", "error_type", "code"),
    [
        (400, "ValidationException", UpstreamError, "upstream_bad_request"),
        (403, "AccessDeniedException", UpstreamError, "upstream_auth_error"),
        (404, "ResourceNotFoundException", UpstreamError, "upstream_not_found"),
        (408, "ModelTimeoutException", UpstreamTimeout, "upstream_timeout"),
        (424, "ModelErrorException", UpstreamError, "upstream_error"),
        (429, "ThrottlingException", RateLimited, "upstream_rate_limited"),
        (500, "InternalServerException", UpstreamError, "upstream_error"),
        (503, "ServiceUnavailableException", UpstreamUnavailable, "upstream_unavailable"),
    ],
)
def test_error_statuses_map(
    upstream: tuple[FakeUpstream, BedrockProvider], status: int, kind: str, error_type: type, code: str
) -> None:
    app, provider = upstream
    app.enqueue(Reply(status=status, retry_after=3 if status == 429 else None))
    got, headers, body = send(provider, f"{AKID}:{SECRET}", {"messages": USER})
    assert got == status and headers["x-amzn-errortype"] == kind
    assert set(orjson.loads(body)) == {"message"}
    error = provider.parse_error(status, body, 3.0 if status == 429 else None, Scrubber([f"{AKID}:{SECRET}"]))
    assert type(error) is error_type and error.code == code
    assert SECRET not in error.message and "br" in error.message
    if status == 429:
        assert error.retry_after == 3.0 and "Too many requests" in error.message


def test_error_message_shapes() -> None:
    provider = make_provider()
    assert provider.error_message(b'{"message": "Malformed input request"}') == "Malformed input request"
    assert provider.error_message(b'{"Message": "Authentication failed"}') == "Authentication failed"
    assert provider.error_message(b"<html>bad gateway</html>") == "<html>bad gateway</html>"


# --------------------------------------------------------------------------------------------- chat -> Converse


def test_build_request_translates_everything() -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    pdf = base64.b64encode(b"%PDF-1.7 fake").decode()
    chat = {
        "model": "x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Use tools.", "cache_control": {"type": "ephemeral"}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is here?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                    {
                        "type": "file",
                        "file": {"filename": "report_2024.pdf", "file_data": f"data:application/pdf;base64,{pdf}"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "reasoning_content": "The user wants the weather.",
                "reasoning_signature": "sig-123",
                "tool_calls": [
                    {
                        "id": "tooluse_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"id": "tooluse_2", "type": "function", "function": {"name": "time", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "tooluse_1", "content": "18C"},
            {
                "role": "tool",
                "tool_call_id": "tooluse_2",
                "content": [{"type": "text", "text": "noon"}],
                "is_error": True,
            },
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object"}},
            },
            {"type": "function", "function": {"name": "time"}},
        ],
        "tool_choice": "required",
        "max_tokens": 100,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "top_k": 40,
        "thinking_budget": 1024,
        "user": "u-1",
        "stream": True,
        "n": 1,
    }
    body = converse_request(chat)
    assert body["system"] == [{"text": "Be brief."}, {"text": "Use tools."}, {"cachePoint": {"type": "default"}}]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"text": "What is here?"},
                {"image": {"format": "png", "source": {"bytes": png}}},
                {"document": {"format": "pdf", "name": "report-2024", "source": {"bytes": pdf}}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "reasoningContent": {
                        "reasoningText": {"text": "The user wants the weather.", "signature": "sig-123"}
                    }
                },
                {"text": "Checking."},
                {"toolUse": {"toolUseId": "tooluse_1", "name": "weather", "input": {"city": "Paris"}}},
                {"toolUse": {"toolUseId": "tooluse_2", "name": "time", "input": {}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "18C"}]}},
                {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "noon"}], "status": "error"}},
                {"text": "Thanks"},
            ],
        },
    ]
    assert body["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}
    assert body["toolConfig"] == {
        "tools": [
            {"toolSpec": {"name": "weather", "description": "Weather", "inputSchema": {"json": {"type": "object"}}}},
            {"toolSpec": {"name": "time", "inputSchema": {"json": {"type": "object", "properties": {}}}}},
        ],
        "toolChoice": {"any": {}},
    }
    assert body["additionalModelRequestFields"] == {"top_k": 40, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    assert body["requestMetadata"] == {"user": "u-1"}
    assert "model" not in body and "stream" not in body


def test_tool_choice_forms() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    base = {"messages": USER, "tools": tools}
    assert converse_request({**base, "tool_choice": "auto"})["toolConfig"]["toolChoice"] == {"auto": {}}
    named = {"type": "function", "function": {"name": "f"}}
    assert converse_request({**base, "tool_choice": named})["toolConfig"]["toolChoice"] == {"tool": {"name": "f"}}
    assert "toolChoice" not in converse_request(base)["toolConfig"]
    # "none": the tools are left out
    assert "toolConfig" not in converse_request({**base, "tool_choice": "none"})


@pytest.mark.parametrize(
    ("extra", "feature"),
    [
        ({"n": 2}, "'n'"),
        ({"logprobs": True}, "'logprobs'"),
        ({"frequency_penalty": 0.5}, "'frequency_penalty'"),
        ({"presence_penalty": 1}, "'presence_penalty'"),
        ({"seed": 7}, "'seed'"),
        ({"logit_bias": {"1": 2}}, "'logit_bias'"),
        ({"reasoning_effort": "high"}, "'reasoning_effort'"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}
                ]
            },
            "by URL",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "'input_audio'"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:video/mp4;base64,AAAA"}}],
                    }
                ]
            },
            "video/mp4",
        ),
        ({"tools": [{"type": "web_search"}]}, "not a function"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "parallel_tool_calls": False},
            "parallel_tool_calls",
        ),
    ],
)
def test_unsupported_features_are_refused(extra: dict[str, Any], feature: str) -> None:
    with pytest.raises(BadRequest) as info:
        converse_request({"messages": USER, **extra})
    assert info.value.code == "unsupported_feature" and feature in info.value.message
    assert "AWS Bedrock" in info.value.message


def test_tool_choice_none_with_tool_history_is_refused() -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "ok"},
    ]
    tools = [{"type": "function", "function": {"name": "f"}}]
    with pytest.raises(BadRequest) as info:
        converse_request({"messages": messages, "tools": tools, "tool_choice": "none"})
    assert "tool_choice" in info.value.message
    with pytest.raises(BadRequest):
        converse_request({"messages": messages})  # Converse needs the tool definitions
    assert converse_request({"messages": messages, "tools": tools})["messages"][2]["content"][0]["toolResult"]
    with pytest.raises(BadRequest) as info:
        bad = [*USER, {"role": "assistant", "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{x"}}]}]
        converse_request({"messages": bad, "tools": tools})
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


def test_translated_conversation_passes_the_fakes_checks(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    _, provider = upstream
    chat = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "tooluse_a", "type": "function", "function": {"name": "w", "arguments": '{"c":"P"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "tooluse_a", "content": "sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
    }
    status, _, body = send(provider, f"{AKID}:{SECRET}", chat)
    assert status == 200, body


# --------------------------------------------------------------------------------------------- Converse -> neutral


def test_parse_response_all_blocks() -> None:
    provider = make_provider()
    data = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}},
                    {"text": "Let me "},
                    {"text": "check."},
                    {"toolUse": {"toolUseId": "tooluse_x", "name": "weather", "input": {"city": "Paris"}}},
                ],
            }
        },
        "stopReason": "tool_use",
        "usage": {
            "inputTokens": 10,
            "outputTokens": 5,
            "totalTokens": 215,
            "cacheReadInputTokens": 150,
            "cacheWriteInputTokens": 50,
        },
        "metrics": {"latencyMs": 100},
    }
    original = orjson.dumps(data)
    out = provider.parse_response(data, make_call())
    assert orjson.dumps(data) == original  # not mutated
    assert out["object"] == "chat.completion" and out["model"] == MODEL and out["id"].startswith("chatcmpl-")
    message = out["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": "Let me check.",
        "reasoning_content": "hmm",
        "reasoning_signature": "sig",
        "tool_calls": [
            {"id": "tooluse_x", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
        ],
    }
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"] == {
        "prompt_tokens": 210,
        "completion_tokens": 5,
        "total_tokens": 215,
        "prompt_tokens_details": {"cached_tokens": 150, "cache_creation_tokens": 50},
    }


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ],
)
def test_stop_reasons(stop: str, finish: str) -> None:
    data = {
        "output": {"message": {"role": "assistant", "content": [{"text": "x"}]}},
        "stopReason": stop,
        "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2},
    }
    out = make_provider().parse_response(data, make_call())
    assert out["choices"][0]["finish_reason"] == finish
    assert out["usage"] == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


def test_tool_only_answer_has_null_content_and_garbage_is_refused() -> None:
    provider = make_provider()
    data = {
        "output": {
            "message": {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "f", "input": {}}}]}
        },
        "stopReason": "tool_use",
    }
    assert provider.parse_response(data, make_call())["choices"][0]["message"]["content"] is None
    with pytest.raises(UpstreamError):
        provider.parse_response({"choices": []}, make_call())


def test_max_tokens_cut_over_http(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    _, provider = upstream
    status, _, body = send(provider, f"{AKID}:{SECRET}", {"messages": USER, "max_tokens": 2})
    assert status == 200
    out = provider.parse_response(orjson.loads(body), make_call())
    assert out["choices"][0]["message"]["content"] == "a b" and out["choices"][0]["finish_reason"] == "length"


# --------------------------------------------------------------------------------------------- event stream


def stream_bytes(
    upstream: tuple[FakeUpstream, BedrockProvider], reply: Reply | None = None, chat: dict[str, Any] | None = None
) -> bytes:
    app, provider = upstream
    if reply is not None:
        app.enqueue(reply)
    status, headers, body = send(provider, f"{AKID}:{SECRET}", chat or {"messages": USER}, stream=True)
    assert status == 200, body
    assert headers["content-type"] == "application/vnd.amazon.eventstream"
    assert app.requests[-1].path.endswith("/converse-stream")
    assert app.requests[-1].headers["accept"] == "application/vnd.amazon.eventstream"
    return body


def test_encoder_round_trips_through_botocore() -> None:
    from botocore.eventstream import EventStreamBuffer

    frame = event_frame([(":event-type", "messageStart"), (":message-type", "event")], b'{"role":"assistant"}')
    buffer = EventStreamBuffer()
    buffer.add_data(frame + exception_frame("throttlingException", "slow down"))
    first, second = list(buffer)
    assert first.headers == {":event-type": "messageStart", ":message-type": "event"}
    assert first.payload == b'{"role":"assistant"}'
    assert second.headers[":exception-type"] == "throttlingException"
    assert orjson.loads(second.payload) == {"message": "slow down"}
    total, headers_len = struct.unpack(">II", frame[:8])
    assert total == len(frame) and headers_len == len(frame) - 16 - len(b'{"role":"assistant"}')


def test_text_stream_decodes_at_every_split(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    data = stream_bytes(upstream, Reply(cached_tokens=2))
    expected = None
    for split in range(len(data) + 1):
        chunks, done = decode_all(data, split)
        assert done, split
        got = summary(chunks)
        got.pop("signature")
        if expected is None:
            expected = got
        assert got == expected, split
    assert expected is not None
    assert expected["role"] == "assistant" and expected["content"] == "a b c" and expected["finish"] == "stop"
    assert expected["usage"]["completion_tokens"] == 3
    assert expected["usage"]["prompt_tokens_details"]["cached_tokens"] == 2
    # inputTokens leaves the cached tokens out; the neutral prompt count has them: 4 words + 3 per message
    assert expected["usage"]["prompt_tokens"] == 4 + 3
    # and byte by byte
    decoder = BedrockStreamDecoder("br", MODEL)
    chunks = [c for i in range(len(data)) for c in decoder.feed(data[i : i + 1])]
    assert decoder.done and summary(chunks)["content"] == "a b c"
    assert all(c["model"] == MODEL and c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1


def test_tool_and_reasoning_stream(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    reply = Reply(
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}],
        reasoning="I should call the tool",
    )
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    data = stream_bytes(upstream, reply, {"messages": USER, "tools": tools})
    for split in range(0, len(data) + 1, 7):
        chunks, done = decode_all(data, split)
        assert done
        got = summary(chunks)
        assert got["content"] == ""
        assert got["reasoning"].strip() == "I should call the tool" and got["signature"]
        assert got["finish"] == "tool_calls"
        [tool] = got["tools"].values()
        assert tool["id"].startswith("tooluse_") and tool["name"] == "get_weather"
        assert orjson.loads(tool["arguments"]) == {"city": "Paris", "unit": "C"}
    # the opening tool chunk carries id, type and name; the next ones only arguments
    chunks, _ = decode_all(data)
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls[0]["type"] == "function" and calls[0]["index"] == 0
    assert all("id" not in tc and set(tc["function"]) == {"arguments"} for tc in calls[1:])


def test_two_tool_calls_get_their_own_indexes(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    reply = Reply(content="Calling.", tool_calls=[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}])
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b")]
    got = summary(decode_all(stream_bytes(upstream, reply, {"messages": USER, "tools": tools}))[0])
    assert got["content"] == "Calling."
    assert [(t["name"], orjson.loads(t["arguments"])) for t in got["tools"].values()] == [("a", {"x": 1}), ("b", {})]


def test_corrupted_frames_are_upstream_errors(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    data = bytearray(stream_bytes(upstream))
    first_len = struct.unpack(">I", data[:4])[0]
    for position in (first_len - 6, 9, first_len + 20):  # a payload byte, the prelude CRC, the second frame
        broken = bytearray(data)
        broken[position] ^= 0x01
        decoder = BedrockStreamDecoder("br", MODEL)
        with pytest.raises(UpstreamError) as info:
            decoder.feed(bytes(broken))
        assert "corrupted" in info.value.message


def test_cut_stream_is_not_done(upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    data = stream_bytes(upstream)
    chunks, done = decode_all(data[: len(data) - 5])
    assert not done and summary(chunks)["content"] == "a b c"
    app, provider = upstream
    app.enqueue(Reply(fault="reset", chunks_before_fault=1))
    with pytest.raises(aiohttp.ClientPayloadError):
        send(provider, f"{AKID}:{SECRET}", {"messages": USER}, stream=True)


@pytest.mark.parametrize(
    ("kind", "error_type"),
    [
        ("throttlingException", RateLimited),
        ("serviceUnavailableException", UpstreamUnavailable),
        ("modelStreamErrorException", UpstreamError),
        ("internalServerException", UpstreamError),
        ("validationException", UpstreamError),
    ],
)
def test_stream_exceptions_raise_mapped_errors(kind: str, error_type: type) -> None:
    decoder = BedrockStreamDecoder("br", MODEL)
    start = event("messageStart", {"role": "assistant"})
    assert decoder.feed(start)[0]["choices"][0]["delta"]["role"] == "assistant"
    with pytest.raises(error_type) as info:
        decoder.feed(exception_frame(kind, "the model stream broke"))
    assert type(info.value) is error_type
    assert "the model stream broke" in info.value.message and "'br'" in info.value.message
    assert not decoder.done


def test_generic_error_frame() -> None:
    decoder = BedrockStreamDecoder("br", MODEL)
    frame = event_frame(
        [(":message-type", "error"), (":error-code", "InternalFailure"), (":error-message", "boom")], b""
    )
    with pytest.raises(UpstreamError) as info:
        decoder.feed(frame)
    assert "InternalFailure" in info.value.message and "boom" in info.value.message


# --------------------------------------------------------------------------------------------- through the gateway

BEDROCK = """\
  - name: bedrock
    type: bedrock
    base_url: {url}
    api_key: env://BEDROCK_TEST_CREDS
    options: {{region: us-east-1}}
"""


@pytest.fixture(scope="module")
def gw(
    fake: tuple[FakeUpstream, str], upstream_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    os.environ["BEDROCK_TEST_CREDS"] = f"{AKID}:{SECRET}"
    with run_gateway(tmp_path_factory.mktemp("bedrock"), upstream_url) as gw:
        text = gw.config_path.read_text()
        text = text.replace("models:\n", BEDROCK.format(url=fake[1]) + "models:\n", 1)
        text = text.replace("models:\n", f'models:\n  - {{name: claude-br, provider: bedrock, model: "{MODEL}"}}\n', 1)
        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        yield gw


def openai_client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)


def test_gateway_openai_chat_to_bedrock(gw: RunningGateway, upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    app, _ = upstream
    reply = openai_client(gw).chat.completions.create(
        model="claude-br",
        messages=[{"role": "system", "content": "be nice"}, {"role": "user", "content": "echo: hello there"}],
        max_tokens=50,
    )
    assert reply.choices[0].message.content == "hello there" and reply.choices[0].finish_reason == "stop"
    sent = app.requests[-1]
    assert sent.path == f"/model/{MODEL}/converse" and sent.headers["authorization"].startswith("AWS4-HMAC-SHA256")
    assert sent.json()["system"] == [{"text": "be nice"}]
    event = gw.last_audit()
    assert event["provider"] == "bedrock" and event["completion_tokens"] == 2
    assert SECRET not in str(event)


def test_gateway_openai_stream_and_tools(gw: RunningGateway, upstream: tuple[FakeUpstream, BedrockProvider]) -> None:
    app, _ = upstream
    chunks = openai_client(gw).chat.completions.create(
        model="claude-br",
        messages=[{"role": "user", "content": "echo: a b c"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    got = list(chunks)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "a b c"
    assert got[-1].usage is not None and got[-1].usage.completion_tokens == 3
    assert app.requests[-1].path.endswith("/converse-stream")
    app.enqueue(Reply(tool_calls=[{"name": "weather", "arguments": {"city": "Paris"}}]))
    reply = openai_client(gw).chat.completions.create(
        model="claude-br",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
    )
    [call] = reply.choices[0].message.tool_calls or []
    assert call.id.startswith("tooluse_") and call.function.name == "weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}
    assert reply.choices[0].finish_reason == "tool_calls"


def test_gateway_anthropic_messages_to_bedrock(
    gw: RunningGateway, upstream: tuple[FakeUpstream, BedrockProvider]
) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)
    message = client.messages.create(
        model="claude-br", max_tokens=100, messages=[{"role": "user", "content": "echo: hi from anthropic"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == "hi from anthropic"
    assert message.stop_reason == "end_turn"
    with client.messages.stream(
        model="claude-br", max_tokens=100, messages=[{"role": "user", "content": "echo: streamed words"}]
    ) as stream:
        assert "".join(stream.text_stream) == "streamed words"
        assert stream.get_final_message().usage.output_tokens == 2


def test_gateway_unsupported_and_upstream_errors(
    gw: RunningGateway, upstream: tuple[FakeUpstream, BedrockProvider]
) -> None:
    app, _ = upstream
    with gw.client() as http:
        resp = http.post("/v1/chat/completions", json={"model": "claude-br", "messages": USER, "n": 2})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "unsupported_feature"
        app.enqueue(Reply(status=429, retry_after=2))
        resp = http.post("/v1/chat/completions", json={"model": "claude-br", "messages": USER})
        assert resp.status_code == 429 and "Too many requests" in resp.json()["error"]["message"]
        app.required_key = f"{AKID}:another-secret"
        resp = http.post("/v1/chat/completions", json={"model": "claude-br", "messages": USER})
        assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_auth_error"
        assert SECRET not in resp.text and AKID not in resp.text
        app.required_key = f"{AKID}:{SECRET}"
        app.enqueue(Reply(fault="reset", chunks_before_fault=2))
        body = {"model": "claude-br", "messages": USER, "stream": True}
        text = http.post("/v1/chat/completions", json=body).text
        assert '"error"' in text and "[DONE]" not in text


def test_signing_logs_no_credential(caplog: pytest.LogCaptureFixture) -> None:
    provider = make_provider()
    with caplog.at_level(logging.DEBUG):
        provider.request_headers(make_call(), f"{AKID}:{SECRET}:{TOKEN}", provider.url_for("chat", MODEL), b"{}")
    assert TOKEN not in caplog.text and SECRET not in caplog.text


def test_missing_botocore_is_a_config_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    import sluicegate.providers.bedrock as module

    monkeypatch.setattr(module, "botocore_available", lambda: False)
    _, issues = parse_config("providers:\n  - {name: br, type: bedrock, api_key: env://AWS}\n")
    assert any("needs botocore" in str(i) and "sluicegate[aws]" in str(i) for i in issues)
