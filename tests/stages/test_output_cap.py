"""The `max_tokens` rule bounds the whole output: the limit asked for (in any dialect's name) times
the choices asked for; a request that asks for none gets the cap inserted upstream, in the field
that upstream takes, on passthrough and translated calls alike."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any

import pytest

from sluicegate.call import Call
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import RunningGateway, assert_openai_error, run_gateway

CHAT = "/v1/chat/completions"
PROVIDERS = """\
  - {{name: oa, type: openai, base_url: "{upstream}/v1", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: claude, type: anthropic, base_url: "{upstream}", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: gem, type: gemini, base_url: "{upstream}/v1beta", api_key: env://TEST_UPSTREAM_KEY}}
  - {{name: mis, type: mistral, base_url: "{upstream}/v1", api_key: env://TEST_UPSTREAM_KEY}}
"""
MODELS = """\
  - {name: oa-model, provider: oa, model: gpt-4o-mini}
  - {name: claude-model, provider: claude, model: claude-sonnet-4-5}
  - {name: gem-model, provider: gem, model: gemini-2.5-flash}
  - {name: mis-model, provider: mis, model: mistral-small-latest}
"""
CAPPED = "  - name: capped\n    models: ['*']\n    max_tokens: 100\n"


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("output-cap"), upstream_url) as gw:
        text = gw.config_path.read_text()
        text = text.replace("models:\n", PROVIDERS.format(upstream=upstream_url) + "models:\n" + MODELS, 1)
        text += CAPPED
        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        gw.keys["capped"] = KeyStore(gw.app.engine).create("capped")[0]
        gw.app.keys.reload()
        yield gw


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def sent(upstream: FakeUpstream) -> dict[str, Any]:
    body = upstream.requests[-1].json()
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize(
    ("path", "body", "field", "value"),
    [
        # passthrough to an OpenAI-compatible server: `max_tokens`
        (CHAT, chat("gpt-4o-mini"), "max_tokens", 100),
        (CHAT, chat("gpt-4o-mini", n=4), "max_tokens", 25),
        ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "x", "best_of": 3, "n": 2}, "max_tokens", 33),
        # OpenAI's own API: reasoning models refuse `max_tokens`
        (CHAT, chat("oa-model"), "max_completion_tokens", 100),
        ("/v1/completions", {"model": "oa-model", "prompt": "x"}, "max_tokens", 100),
        (CHAT, chat("mis-model"), "max_tokens", 100),
    ],
    ids=["compatible", "n", "best_of", "openai", "openai-completions", "mistral"],
)
def test_a_request_without_a_limit_gets_the_cap(
    gw: RunningGateway, upstream: FakeUpstream, path: str, body: dict[str, Any], field: str, value: int
) -> None:
    with gw.client("capped") as c:
        assert c.post(path, json=body).status_code == 200
    got = sent(upstream)
    assert got[field] == value
    others = {"max_tokens", "max_completion_tokens"} - {field}
    assert not others & set(got)


@pytest.mark.parametrize(
    ("path", "body", "check"),
    [
        (CHAT, chat("claude-model"), lambda b: b["max_tokens"] == 100),
        (CHAT, chat("gem-model"), lambda b: b["generationConfig"]["maxOutputTokens"] == 100),
        ("/v1/responses", {"model": "claude-model", "input": "hi"}, lambda b: b["max_tokens"] == 100),
        ("/v1/responses", {"model": "oa-model", "input": "hi"}, lambda b: b["max_completion_tokens"] == 100),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, lambda b: b["max_tokens"] == 100),
    ],
    ids=["chat-to-anthropic", "chat-to-gemini", "responses-to-anthropic", "responses-to-openai", "responses-compat"],
)
def test_translated_calls_get_the_cap_not_the_provider_default(
    gw: RunningGateway, upstream: FakeUpstream, path: str, body: dict[str, Any], check: Any
) -> None:
    with gw.client("capped") as c:
        resp = c.post(path, json=body)
    assert resp.status_code == 200, resp.text
    assert check(sent(upstream)), sent(upstream)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, chat("gpt-4o-mini", max_tokens=101), "max_tokens"),
        (CHAT, chat("gpt-4o-mini", max_completion_tokens=60, n=2), "max_completion_tokens"),
        ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "x", "max_tokens": 40, "best_of": 3}, "max_tokens"),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "x", "max_output_tokens": 200}, "max_output_tokens"),
        (CHAT, chat("gpt-4o-mini", n=128), "n"),
    ],
    ids=["max_tokens", "times-n", "times-best_of", "responses", "more-choices-than-tokens"],
)
def test_output_past_the_rule_is_refused(
    gw: RunningGateway, upstream: FakeUpstream, path: str, body: dict[str, Any], param: str
) -> None:
    with gw.client("capped") as c:
        resp = c.post(path, json=body)
    error = assert_openai_error(resp, 403, "max_tokens_exceeded")
    assert error["param"] == param
    assert upstream.calls == 0
    assert gw.last_audit()["rule"] == "consumers.capped.max_tokens"


def test_anthropic_clients_are_bounded_too(gw: RunningGateway, upstream: FakeUpstream) -> None:
    headers = {"x-api-key": gw.keys["capped"], "anthropic-version": "2023-06-01"}
    body = {"model": "claude-model", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}
    with gw.client(None) as c:
        over = c.post("/v1/messages", json=body, headers=headers)
        under = c.post("/v1/messages", json={**body, "max_tokens": 90}, headers=headers)
    assert over.status_code == 403 and over.json()["error"]["type"] == "permission_error"
    assert under.status_code == 200 and sent(upstream)["max_tokens"] == 90


def test_without_a_rule_nothing_is_inserted(gw: RunningGateway, upstream: FakeUpstream) -> None:
    with gw.client("alice") as c:
        assert c.post(CHAT, json=chat("gpt-4o-mini")).status_code == 200
    assert "max_tokens" not in sent(upstream)


def test_the_parsed_body_is_never_changed(gw: RunningGateway) -> None:
    # Retries and fallbacks build the upstream body again from it.
    snapshot = gw.app.snapshot
    for model in ("gpt-4o-mini", "oa-model", "claude-model", "gem-model"):
        call = Call("req_x", "chat", snapshot, {})
        call.body = chat(model, n=1)
        call.route = snapshot.route_for(model)
        call.model_requested = model
        call.output_cap = 42
        before = copy.deepcopy(call.body)
        provider = call.route.provider  # type: ignore[union-attr]
        if provider.native_dialect == "openai":
            provider.prepare_body(call)
        else:
            provider.build_request(call, call.body)
        assert call.body == before
