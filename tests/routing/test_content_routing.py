"""Content-aware routing and pins over HTTP: what the input guards find (in any field they read,
through every client API, streamed or not) chooses the targets, pins keep calls (fallbacks
included) on the providers and regions they allow; and a target's own timeout and output cap,
and the client's deadline header."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import RunningGateway, run_gateway

EMAIL = "jane.roe@corp-mail.example.org"

GUARDS = """\
guards:
  - {name: pii, kind: pii, action: flag, applies_to: input, settings: {entities: [EMAIL]}}
  - {name: confidential, kind: regex, action: flag, applies_to: input, settings: {deny: ["\\\\bconfidential\\\\b"]}}
  - {name: long, kind: length, action: flag, applies_to: input, settings: {max_chars: 2000}}
groups:
  - {name: eu-staff, models: ["*"]}
"""

PINS = """routing:
  pins:
    - {name: eu-data, groups: [eu-staff], regions: ["eu-*"]}
    - {name: pii-stays-home, found: [pii], providers: [onprem, onprem-b]}
"""


def providers(upstream: str) -> str:
    def one(name: str, kind: str, region: str | None, url: str = f"{upstream}/v1") -> str:
        where = f", region: {region}" if region else ""
        return f'  - {{name: {name}, type: {kind}, base_url: "{url}", api_key: env://TEST_UPSTREAM_KEY{where}}}\n'

    return (
        one("claude", "anthropic", "us-east", upstream)
        + one("external", "openai_compatible", "us-east")
        + one("onprem", "openai_compatible", "on-prem")
        + one("onprem-b", "openai_compatible", "on-prem")
        + one("eu", "openai_compatible", "eu-west")
    )


MODELS = """\
  - name: assistant
    targets:
      - {provider: claude, model: claude-sonnet-4-5}
      - {provider: external, model: ext-model, priority: 1}
      - {provider: eu, model: eu-model, priority: 2}
    retry: {max_attempts: 3, base_s: 0.001, cap_s: 0.002}
    breaker: {enabled: false}
    when:
      - name: private
        found: [pii, confidential]
        targets:
          - {provider: onprem, model: local-llm}
          - {provider: onprem-b, model: local-llm-b, priority: 1}
      - {name: long-prompt, found: [long], targets: [{provider: external, model: long-ctx}]}
      - {name: vision, images: true, targets: [{provider: external, model: vision-model}]}
  - name: embed
    provider: external
    model: ext-embed
    when:
      - {name: private, found: [pii], labels: [email], targets: [{provider: onprem, model: local-embed}]}
  - name: impatient
    targets:
      - {provider: external, model: slow-model, timeout_s: 0.3}
      - {provider: onprem, model: quick-model, priority: 1}
    breaker: {enabled: false}
  - name: capped
    targets:
      - {provider: external, model: small-model, max_tokens: 50}
  - name: us-only
    targets:
      - {provider: external, model: ext-model}
  - name: retrying
    targets:
      - {provider: external, model: ext-model}
    retry: {max_attempts: 5, base_s: 0.5, cap_s: 1}
    breaker: {enabled: false}
"""


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("content-routing"), upstream_url, GUARDS) as running:

        def edit(text: str) -> str:
            text = text.replace("models:\n", providers(upstream_url) + "models:\n", 1)
            text = text.replace("models:\n", "models:\n" + MODELS, 1)
            text = text.replace("  - name: bob\n    models: [gpt-4o-mini]\n", "  - name: bob\n    groups: [eu-staff]\n")
            return text + PINS

        running.reconfigure(edit)
        yield running


def upstream_models(upstream: FakeUpstream) -> list[str]:
    """The upstream model of every request the fake received, in order."""
    out = []
    for r in upstream.requests:
        if r.method == "POST" and r.body:
            out.append(json.loads(r.body).get("model"))
    return out


def external_bodies(upstream: FakeUpstream) -> list[bytes]:
    """Bodies of requests that went to an external target (anything not on-premises)."""
    return [r.body for r in upstream.requests if r.body and not json.loads(r.body)["model"].startswith("local-")]


def oai(gw: RunningGateway, who: str = "alice", **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys[who], max_retries=0, **kw)


def claude(gw: RunningGateway, who: str = "alice") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.keys[who], max_retries=0)


def chat(gw: RunningGateway, messages: Any, stream: bool = False, **kw: Any) -> str:
    sdk = oai(gw)
    if stream:
        chunks = sdk.chat.completions.create(model="assistant", messages=messages, stream=True, **kw)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = sdk.chat.completions.create(model="assistant", messages=messages, **kw)
    return answer.choices[0].message.content or ""


TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "lookup", "description": "Find a person", "parameters": {"type": "object"}},
}

#: the e-mail address in the fields the guard engine reads, one request each
PLACES: dict[str, dict[str, Any]] = {
    "user": {"messages": [{"role": "user", "content": f"Write to {EMAIL} today"}]},
    "system": {"messages": [{"role": "system", "content": f"Reply as {EMAIL}"}, {"role": "user", "content": "hi"}]},
    "content-part": {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": EMAIL}]}]
    },
    "tool-arguments": {
        "messages": [
            {"role": "user", "content": "who?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": json.dumps({"email": EMAIL})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        ],
        "tools": [TOOL],
    },
    "tool-result": {
        "messages": [
            {"role": "user", "content": "who?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": f"The address is {EMAIL}"},
        ],
        "tools": [TOOL],
    },
    "base64": {"messages": [{"role": "user", "content": base64.b64encode(f"mail {EMAIL} now".encode()).decode()}]},
    "tool-description": {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": f"Mails {EMAIL}"}}],
    },
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("place", list(PLACES))
def test_pii_anywhere_goes_on_premises_only(
    gw: RunningGateway, upstream: FakeUpstream, place: str, stream: bool
) -> None:
    fields = PLACES[place]
    chat(gw, fields["messages"], stream, **{k: v for k, v in fields.items() if k != "messages"})
    assert upstream_models(upstream) == ["local-llm"]
    assert not external_bodies(upstream)
    event = gw.last_audit()
    assert event["routed_by"] == "models.assistant.when.private,routing.pins.pii-stays-home"
    assert event["provider"] == "onprem"


def test_a_call_without_pii_goes_to_the_external_target(gw: RunningGateway, upstream: FakeUpstream) -> None:
    assert chat(gw, [{"role": "user", "content": "What is the capital of France?"}])
    assert [r.path for r in upstream.requests] == ["/v1/messages"]
    event = gw.last_audit()
    assert event["provider"] == "claude" and event["routed_by"] is None


def test_a_regex_classification_routes_too(gw: RunningGateway, upstream: FakeUpstream) -> None:
    chat(gw, [{"role": "user", "content": "This memo is Confidential: do not share"}])
    assert upstream_models(upstream) == ["local-llm"]
    # No PII: the pin on PII does not hold, only the rule chose.
    assert gw.last_audit()["routed_by"] == "models.assistant.when.private"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_messages_with_pii_stay_on_premises(gw: RunningGateway, upstream: FakeUpstream, stream: bool) -> None:
    sdk = claude(gw)
    kwargs: dict[str, Any] = {
        "model": "assistant",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "You are helpful."}],
        "messages": [
            {"role": "user", "content": "look this up"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": f"owner: {EMAIL}"}],
            },
        ],
        "tools": [{"name": "lookup", "description": "Find", "input_schema": {"type": "object"}}],
    }
    if stream:
        with sdk.messages.stream(**kwargs) as events:
            text = events.get_final_text()
    else:
        message = sdk.messages.create(**kwargs)
        text = "".join(b.text for b in message.content if b.type == "text")
    assert text
    assert upstream_models(upstream) == ["local-llm"]
    assert not external_bodies(upstream)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_responses_with_pii_stay_on_premises(gw: RunningGateway, upstream: FakeUpstream, stream: bool) -> None:
    sdk = oai(gw)
    if stream:
        events = list(sdk.responses.create(model="assistant", input=f"Mail {EMAIL}", stream=True))
        assert events[-1].type == "response.completed"
    else:
        assert sdk.responses.create(model="assistant", instructions=f"Sign as {EMAIL}", input="hello").output_text
    assert upstream_models(upstream) == ["local-llm"]
    assert not external_bodies(upstream)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_legacy_completions_with_pii_stay_on_premises(gw: RunningGateway, upstream: FakeUpstream, stream: bool) -> None:
    sdk = oai(gw)
    if stream:
        assert list(sdk.completions.create(model="assistant", prompt=[f"Mail {EMAIL}"], stream=True))
    else:
        assert sdk.completions.create(model="assistant", prompt=f"Mail {EMAIL}").choices
    assert upstream_models(upstream) == ["local-llm"]


def test_embeddings_with_pii_stay_on_premises(gw: RunningGateway, upstream: FakeUpstream) -> None:
    sdk = oai(gw)
    sdk.embeddings.create(model="embed", input=["plain text", f"contact {EMAIL}"])
    sdk.embeddings.create(model="embed", input=["plain text"])
    assert upstream_models(upstream) == ["local-embed", "ext-embed"]


def test_a_fallback_never_leaves_the_on_premises_targets(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=503), Reply(content="from b"))
    assert chat(gw, [{"role": "user", "content": f"mail {EMAIL}"}]) == "from b"
    assert upstream_models(upstream) == ["local-llm", "local-llm-b"]
    upstream.reset()
    # Every allowed target fails: the call fails rather than reach an external one.
    upstream.default = Reply(status=503)
    try:
        with pytest.raises(openai.InternalServerError):
            chat(gw, [{"role": "user", "content": f"mail {EMAIL}"}], stream=True)
    finally:
        upstream.default = None
    assert set(upstream_models(upstream)) == {"local-llm", "local-llm-b"}
    attempts = json.loads(gw.last_audit()["attempts"])
    assert {a["target"] for a in attempts} == {"onprem/local-llm", "onprem-b/local-llm-b"}


def test_a_long_prompt_goes_to_the_long_context_target(gw: RunningGateway, upstream: FakeUpstream) -> None:
    chat(gw, [{"role": "user", "content": "lorem ipsum " * 300}])
    assert upstream_models(upstream) == ["long-ctx"]
    assert gw.last_audit()["routed_by"] == "models.assistant.when.long-prompt"


def test_an_image_goes_to_the_vision_target(gw: RunningGateway, upstream: FakeUpstream) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    chat(gw, [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}])
    assert upstream_models(upstream) == ["vision-model"]


def test_a_pinned_group_is_served_only_in_its_regions(gw: RunningGateway, upstream: FakeUpstream) -> None:
    # bob is in eu-staff: of the three targets only the EU one is his, fallbacks included.
    upstream.enqueue(Reply(status=503), Reply(content="eu again"))
    sdk = oai(gw, "bob")
    assert sdk.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}])
    assert upstream_models(upstream) == ["eu-model", "eu-model"]
    assert gw.last_audit()["routed_by"] == "routing.pins.eu-data"


def test_a_pin_that_allows_no_target_refuses_in_the_clients_format(gw: RunningGateway, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        oai(gw, "bob").chat.completions.create(model="us-only", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 403
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == "route_not_permitted"
    assert "routing.pins.eu-data" in body["message"]
    with pytest.raises(anthropic.PermissionDeniedError):
        claude(gw, "bob").messages.create(model="us-only", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert upstream.requests == []
    event = gw.last_audit()
    assert event["decision"] == "denied" and event["rule"] == "routing.pins.eu-data"


def test_a_pin_on_data_applies_to_single_target_models(gw: RunningGateway, upstream: FakeUpstream) -> None:
    sdk = oai(gw)
    # gpt-4o-mini is served by `mock` alone, which the PII pin does not allow.
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"to {EMAIL}"}])
    assert upstream.requests == []
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "no data"}])


def test_a_target_that_does_not_begin_in_its_time_falls_back(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="late", delay_s=1.5), Reply(content="quick"))
    started = time.monotonic()
    answer = oai(gw).chat.completions.create(model="impatient", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "quick"
    assert time.monotonic() - started < 1.2
    attempts = json.loads(gw.last_audit()["attempts"])
    assert [(a["target"], a["error"]) for a in attempts] == [
        ("external/slow-model", "upstream_timeout"),
        ("onprem/quick-model", None),
    ]


def test_a_targets_output_cap_lowers_what_is_asked(gw: RunningGateway, upstream: FakeUpstream) -> None:
    sdk = oai(gw)
    sdk.chat.completions.create(model="capped", messages=[{"role": "user", "content": "hi"}], max_tokens=1000)
    sdk.chat.completions.create(model="capped", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    sdk.chat.completions.create(model="capped", messages=[{"role": "user", "content": "hi"}])
    claude(gw).messages.create(model="capped", max_tokens=4000, messages=[{"role": "user", "content": "hi"}])
    asked = [json.loads(r.body) for r in upstream.requests]
    assert [b.get("max_tokens") or b.get("max_completion_tokens") for b in asked] == [50, 20, 50, 50]


def test_the_clients_deadline_header_bounds_the_call(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="too late", delay_s=2))
    with gw.client() as http:
        started = time.monotonic()
        resp = http.post(
            "/v1/chat/completions",
            json={"model": "us-only", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-sluicegate-timeout": "0.4"},
        )
        took = time.monotonic() - started
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "upstream_timeout"
    assert took < 1.5


def test_the_sdks_own_timeout_header_is_honoured(gw: RunningGateway, upstream: FakeUpstream) -> None:
    # The official SDKs send their timeout as `x-stainless-timeout`: no work past it upstream.
    upstream.enqueue(Reply(content="too late", delay_s=2))
    with gw.client() as http:
        resp = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-stainless-timeout": "0.3"},
        )
    assert resp.status_code == 504


def test_a_deadline_stops_retries_that_would_outlast_it(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.default = Reply(status=503, retry_after=0.8)
    try:
        with gw.client() as http:
            started = time.monotonic()
            resp = http.post(
                "/v1/chat/completions",
                json={"model": "retrying", "messages": [{"role": "user", "content": "hi"}]},
                headers={"x-sluicegate-timeout": "0.5"},
            )
            took = time.monotonic() - started
    finally:
        upstream.default = None
    assert resp.status_code == 503
    # The upstream asked for 0.8 s, past the deadline: no retry was waited for.
    assert len(upstream.requests) == 1 and took < 0.5


@pytest.mark.parametrize("value", ["soon", "-1", "0", "nan", "inf"])
def test_a_bad_deadline_header_is_a_clear_error(gw: RunningGateway, upstream: FakeUpstream, value: str) -> None:
    with gw.client() as http:
        resp = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-sluicegate-timeout": value},
        )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "x-sluicegate-timeout" and "seconds" in error["message"]
    assert upstream.requests == []


def test_a_malformed_sdk_timeout_header_is_ignored(gw: RunningGateway, upstream: FakeUpstream) -> None:
    with gw.client() as http:
        resp = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-stainless-timeout": "NOT_GIVEN"},
        )
    assert resp.status_code == 200


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_fallback_crosses_wire_formats(gw: RunningGateway, upstream: FakeUpstream, stream: bool) -> None:
    # The Anthropic target is overloaded: the OpenAI-format one serves, each in its own protocol.
    upstream.enqueue(Reply(status=529), Reply(content="from the other format"))
    assert chat(gw, [{"role": "user", "content": "hello"}], stream) == "from the other format"
    assert [r.path for r in upstream.requests] == ["/v1/messages", "/v1/chat/completions"]
    attempts = json.loads(gw.last_audit()["attempts"])
    assert [(a["target"], a["status"]) for a in attempts] == [
        ("claude/claude-sonnet-4-5", 529),
        ("external/ext-model", 200),
    ]
