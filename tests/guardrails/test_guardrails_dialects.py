"""Guards cover every client API and every path: Anthropic Messages and Responses requests are
checked in every text field, and answers are guarded on passthrough, on translated JSON and on
translated streams (the hold-back window over neutral chunks), in the client's own error shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import CANARY_KEY, RunningGateway, guarded_alice, run_gateway, with_claude

GUARDS = """\
guards:
  - name: codename
    kind: regex
    action: block
    applies_to: input
    settings:
      deny: ["project\\\\s+nightingale"]
  - name: emails
    kind: pii
    action: redact
    applies_to: input
    settings:
      entities: [EMAIL]
  - name: answer-codename
    kind: regex
    action: block
    applies_to: output
    settings:
      deny: ["nightingale"]
  - name: answer-emails
    kind: pii
    action: redact
    applies_to: output
    settings:
      entities: [EMAIL]
groups:
  - name: guarded
    guards: [codename, emails, answer-codename, answer-emails]
"""
PASSTHROUGH, TRANSLATED = "claude-sonnet", "gpt-4o-mini"


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("guards-dialects"), upstream_url, GUARDS) as gw:
        gw.reconfigure(lambda text: guarded_alice(with_claude(text, upstream_url, PASSTHROUGH)))
        yield gw


def claude(gw: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)


def oai(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)


SECRET = "Project Nightingale"
#: Anthropic requests with the blocked phrase in one text field each
MESSAGES_CASES: dict[str, dict[str, Any]] = {
    "system-block": {
        "system": [{"type": "text", "text": f"context: {SECRET}", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}],
    },
    "user-text-block": {"messages": [{"role": "user", "content": [{"type": "text", "text": f"about {SECRET}"}]}]},
    "mid-conversation-system": {
        "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": SECRET}],
    },
    "tool-use-input": {
        "messages": [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "s", "input": {"q": SECRET}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "none"}]},
        ],
    },
    "tool-result": {
        "messages": [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "s", "input": {"q": "x"}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": f"{SECRET} files"}],
                    }
                ],
            },
        ],
    },
    "tool-description": {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "s", "description": f"searches {SECRET}", "input_schema": {"type": "object"}}],
    },
}


@pytest.mark.parametrize("model", [PASSTHROUGH, TRANSLATED])
@pytest.mark.parametrize("case", list(MESSAGES_CASES))
def test_messages_input_blocked_everywhere(gw: RunningGateway, upstream: FakeUpstream, case: str, model: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude(gw).messages.create(model=model, max_tokens=20, **MESSAGES_CASES[case])
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert upstream.calls == 0  # nothing left the gateway
    event = gw.last_audit()
    assert event["outcome"] == "content_blocked" and "codename" in event["guards"]


RESPONSES_CASES: dict[str, dict[str, Any]] = {
    "instructions": {"instructions": f"know {SECRET}", "input": "hi"},
    "input-string": {"input": f"tell me about {SECRET}"},
    "function-call-output": {
        "input": [
            {"role": "user", "content": "look it up"},
            {"type": "function_call", "call_id": "c1", "name": "s", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": f"{SECRET} files"},
        ]
    },
}


@pytest.mark.parametrize("case", list(RESPONSES_CASES))
def test_responses_input_blocked_everywhere(gw: RunningGateway, upstream: FakeUpstream, case: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai(gw).responses.create(model=TRANSLATED, **RESPONSES_CASES[case])
    assert caught.value.response.json()["error"]["code"] == "content_blocked"
    assert upstream.calls == 0


@pytest.mark.parametrize("model", [PASSTHROUGH, TRANSLATED])
def test_messages_input_redacted_before_the_upstream(gw: RunningGateway, upstream: FakeUpstream, model: str) -> None:
    claude(gw).messages.create(
        model=model, max_tokens=20, messages=[{"role": "user", "content": "mail alice@acme-mail.com the report"}]
    )
    sent = upstream.requests[-1].body.decode()
    assert "alice@acme-mail.com" not in sent and "<EMAIL_1>" in sent


ANSWER = "Write to bob@acme-mail.com about it today, please."

#: (client API, model): every way an answer comes back
PATHS = [
    ("messages", PASSTHROUGH),  # Anthropic JSON as sent / Anthropic stream decoded and re-encoded
    ("messages", TRANSLATED),
    ("chat", PASSTHROUGH),
    ("responses", TRANSLATED),
]


def answer(gw: RunningGateway, api: str, model: str, stream: bool) -> str:
    """The text the client got."""
    if api == "messages":
        kwargs: dict[str, Any] = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            with claude(gw).messages.stream(**kwargs) as events:
                return "".join(events.text_stream)
        return "".join(b.text for b in claude(gw).messages.create(**kwargs).content if b.type == "text")
    if api == "chat":
        messages: Any = [{"role": "user", "content": "hi"}]
        if stream:
            chunks = oai(gw).chat.completions.create(model=model, messages=messages, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return oai(gw).chat.completions.create(model=model, messages=messages).choices[0].message.content or ""
    if stream:
        with oai(gw).responses.stream(model=model, input="hi") as events:
            return events.get_final_response().output_text
    return oai(gw).responses.create(model=model, input="hi").output_text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("api", "model"), PATHS, ids=[f"{a}-{m}" for a, m in PATHS])
def test_answers_redacted_on_every_path(
    gw: RunningGateway, upstream: FakeUpstream, api: str, model: str, stream: bool
) -> None:
    upstream.enqueue(Reply(content=ANSWER))
    text = answer(gw, api, model, stream)
    assert "bob@acme-mail.com" not in text
    assert text == ANSWER.replace("bob@acme-mail.com", "<EMAIL_1>")


@pytest.mark.parametrize(("api", "model"), PATHS, ids=[f"{a}-{m}" for a, m in PATHS])
def test_streamed_answer_blocked_without_leaking(
    gw: RunningGateway, upstream: FakeUpstream, api: str, model: str
) -> None:
    upstream.enqueue(Reply(content="Here is the plan for the nightingale launch, step by step."))
    path = {"messages": "/v1/messages", "chat": "/v1/chat/completions", "responses": "/v1/responses"}[api]
    body: dict[str, Any] = {"model": model, "stream": True}
    if api == "responses":
        body["input"] = "hi"
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
        body["max_tokens"] = 50
    headers = {"x-api-key": gw.keys["alice"], "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", gw.url + path, json=body, headers=headers, timeout=10) as resp:
        raw = resp.read().decode()
    assert resp.status_code == 200  # the stream had started: the block is an in-band error event
    assert "nightingale" not in raw.lower() and CANARY_KEY not in raw
    assert "content_blocked" in raw or "invalid_request_error" in raw, raw
    assert "message_stop" not in raw and "[DONE]" not in raw and "response.completed" not in raw
    assert gw.last_audit()["outcome"] == "content_blocked"
