"""Guards through the running gateway: block, redact and flag, on input and output, streams
included, and the evasions the issue lists (split text, tool-call arguments, system messages,
zero-width characters, full-width letters, homoglyphs)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import RunningGateway, assert_openai_error, run_gateway

CHAT = "/v1/chat/completions"
#: "project nightingale" in full-width letters (U+FF41...)
FULL_WIDTH = "".join(chr(ord(c) + 0xFEE0) if c != " " else c for c in "project nightingale")

GUARDS = """\
guards:
  - name: codename
    kind: regex
    action: block
    decode_base64: true
    settings:
      deny: ["project\\\\s+nightingale"]
  - name: emails
    kind: pii
    action: redact
    applies_to: input
    restore: true
    settings:
      entities: [EMAIL]
  - name: phones-flag
    kind: pii
    action: flag
    settings:
      entities: [PHONE]
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
  - name: dead-webhook
    kind: webhook
    action: block
    applies_to: input
    timeout_s: 1
    settings:
      url: http://127.0.0.1:9/never
  - name: dead-webhook-open
    kind: webhook
    action: block
    applies_to: input
    on_error: allow
    timeout_s: 1
    settings:
      url: http://127.0.0.1:9/never
groups:
  - name: guarded
    guards: [codename, emails, phones-flag, answer-codename, answer-emails]
  - name: webhooked
    guards: [dead-webhook]
  - name: webhooked-open
    guards: [dead-webhook-open]
"""


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("guards"), upstream_url, GUARDS) as gw:
        text = gw.config_path.read_text()
        text = text.replace("  - name: alice\n", "  - name: alice\n    groups: [guarded]\n")
        carol = "  - name: carol\n    models: ['*']\n    groups: [webhooked-open]\n"
        text = text.replace("  - name: bob\n", carol + "  - name: bob\n    groups: [webhooked]\n")
        import asyncio

        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload()), gw.app.last_reload_error
        from sluicegate.store.keys import KeyStore

        gw.keys["carol"] = KeyStore(gw.app.engine).create("carol")[0]
        gw.app.keys.reload()
        yield gw


def chat(gw: RunningGateway, messages: list[dict[str, object]], who: str = "alice", **extra: object) -> httpx.Response:
    with gw.client(who) as c:
        return c.post(CHAT, json={"model": "gpt-4o-mini", "messages": messages, **extra})


def guards_of(event: dict[str, object]) -> list[dict[str, str]]:
    return json.loads(event["guards"]) if event["guards"] else []  # type: ignore[arg-type]


EVASIONS = [
    ("plain", [{"role": "user", "content": "tell me about Project Nightingale"}]),
    ("system", [{"role": "system", "content": "context: project nightingale"}, {"role": "user", "content": "hi"}]),
    (
        "split-across-messages",
        [{"role": "user", "content": "tell me about project"}, {"role": "user", "content": "nightingale please"}],
    ),
    ("zero-width", [{"role": "user", "content": "project night\u200bin\u200dgale"}]),
    ("full-width", [{"role": "user", "content": FULL_WIDTH}]),
    ("homoglyphs", [{"role": "user", "content": "pr\u043eject nightin\u0261\u0430le"}]),
    (
        "tool-call-arguments",
        [
            {"role": "user", "content": "look it up"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "search", "arguments": '{"q": "project nightingale"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "no result"},
        ],
    ),
    ("tool-result", [{"role": "tool", "tool_call_id": "c1", "content": "PROJECT NIGHTINGALE files"}]),
    ("multi-part", [{"role": "user", "content": [{"type": "text", "text": "about project nightingale"}]}]),
    # base64 of "project nightingale", scanned because the guard has decode_base64: true
    ("base64", [{"role": "user", "content": "decode this: cHJvamVjdCBuaWdodGluZ2FsZQ== please"}]),
]


@pytest.mark.parametrize(("case", "messages"), EVASIONS, ids=[c for c, _ in EVASIONS])
def test_input_block_sees_through_evasions(
    gw: RunningGateway, upstream: FakeUpstream, case: str, messages: list[dict[str, object]]
) -> None:
    resp = chat(gw, messages)
    error = assert_openai_error(resp, 400, "content_blocked")
    assert "codename" in error["message"]
    assert upstream.calls == 0
    event = gw.last_audit()
    assert event["decision"] == "blocked" and event["rule"] == "guards.codename"
    records = guards_of(event)
    assert records and records[0]["guard"] == "codename" and records[0]["action"] == "block"
    assert records[0]["part"].startswith("messages[")
    assert "nightingale" not in event["guards"].lower() and "nightingale" not in (event["reason"] or "").lower()


def test_tool_definitions_are_scanned(gw: RunningGateway, upstream: FakeUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "f", "description": "about Project Nightingale"}}]
    resp = chat(gw, [{"role": "user", "content": "hi"}], tools=tools)
    assert_openai_error(resp, 400, "content_blocked")
    assert guards_of(gw.last_audit())[0]["part"] == "tools[0].function.description"


def test_input_redaction_is_stable_and_reaches_upstream_redacted(gw: RunningGateway, upstream: FakeUpstream) -> None:
    messages = [
        {"role": "user", "content": "mail jane.doe@acme-mail.com and bob@corp.io"},
        {"role": "user", "content": "again: jane.doe@acme-mail.com"},
    ]
    resp = chat(gw, messages)
    assert resp.status_code == 200, resp.text
    sent = upstream.requests[-1].json()["messages"]
    assert sent[0]["content"] == "mail <EMAIL_1> and <EMAIL_2>"
    assert sent[1]["content"] == "again: <EMAIL_1>"
    records = guards_of(gw.last_audit())
    assert {(r["guard"], r["action"], r["part"]) for r in records} == {
        ("emails", "redact", "messages[0].content"),
        ("emails", "redact", "messages[1].content"),
    }
    assert "example.com" not in gw.last_audit()["guards"]


def test_flag_lets_the_call_through_and_records_it(gw: RunningGateway, upstream: FakeUpstream) -> None:
    resp = chat(gw, [{"role": "user", "content": "call me on +33 6 12 34 56 78"}])
    assert resp.status_code == 200
    assert upstream.requests[-1].json()["messages"][0]["content"] == "call me on +33 6 12 34 56 78"
    event = gw.last_audit()
    assert event["decision"] == "allowed"
    assert [(r["guard"], r["action"]) for r in guards_of(event)] == [("phones-flag", "flag")]


def test_output_block_on_a_json_answer(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="The codename is Nightingale."))
    resp = chat(gw, [{"role": "user", "content": "what is the codename?"}])
    error = assert_openai_error(resp, 400, "content_blocked")
    assert "answer-codename" in error["message"]
    event = gw.last_audit()
    assert event["decision"] == "blocked" and event["completion_tokens"]  # the tokens were still used
    assert guards_of(event)[0]["direction"] == "output"


def test_output_redaction_on_a_json_answer(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="Write to ops@corp.io today."))
    resp = chat(gw, [{"role": "user", "content": "who?"}])
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "Write to <EMAIL_1> today."


def test_stream_block_never_leaks_the_blocked_text(gw: RunningGateway, upstream: FakeUpstream) -> None:
    # ~590 characters before the match: more than the 256-character hold-back window
    words = " ".join(f"w{i}" for i in range(150))
    # paced chunks, so the text before the window is released while the answer still streams
    upstream.enqueue(Reply(content=f"{words} the secret is nightingale and more {words}", chunk_interval_s=0.001))
    with gw.client() as c:
        resp = c.post(
            CHAT, json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": True}
        )
    body = resp.text
    assert resp.status_code == 200
    # not even its first characters reached the client
    streamed = "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
        for e in body.split("\n\n")
        if e.startswith("data: {") and '"choices"' in e and json.loads(e[6:]).get("choices")
    )
    assert "nigh" not in streamed.lower() and "w0 w1" in streamed
    assert "[DONE]" not in body and "content_blocked" in body.split("\n\n")[-2]
    event = gw.last_audit()
    assert event["decision"] == "blocked" and event["completion_tokens"]
    assert guards_of(event)[0]["part"] == "0.content"


def test_stream_block_through_the_sdk(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="hello, this is nightingale speaking"))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass


def test_stream_without_match_is_complete(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="all clear " * 20))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
        )
        if c.choices
    )
    assert text == "all clear " * 20


def test_a_guard_that_cannot_run_fails_closed(gw: RunningGateway, upstream: FakeUpstream) -> None:
    resp = chat(gw, [{"role": "user", "content": "hi"}], who="bob")
    assert_openai_error(resp, 503, "guard_unavailable")
    assert upstream.calls == 0
    resp = chat(gw, [{"role": "user", "content": "hi"}], who="carol")
    assert resp.status_code == 200
    assert guards_of(gw.last_audit())[0]["action"] == "error_allowed"


def test_no_guard_attached_means_no_guard_stage(gateway: RunningGateway) -> None:
    assert "guardrails" not in gateway.app.pipeline.names


def test_redacted_values_are_restored_in_the_answer(gw: RunningGateway, upstream: FakeUpstream) -> None:
    # the fake upstream echoes: it answers with the placeholder it was sent
    resp = chat(gw, [{"role": "user", "content": "echo: write to jane.doe@acme-mail.com now"}])
    assert upstream.requests[-1].json()["messages"][0]["content"] == "echo: write to <EMAIL_1> now"
    assert resp.json()["choices"][0]["message"]["content"] == "write to jane.doe@acme-mail.com now"


def test_base64_that_decodes_to_nothing_forbidden_passes(gw: RunningGateway, upstream: FakeUpstream) -> None:
    resp = chat(gw, [{"role": "user", "content": "an image: iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"}])
    assert resp.status_code == 200


def test_stream_redaction_rewrites_the_held_events(gw: RunningGateway, upstream: FakeUpstream) -> None:
    filler = " ".join(f"w{i}" for i in range(120))
    upstream.enqueue(Reply(content=f"{filler} write to ops.team@corp.io or ops.team@corp.io today {filler}"))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
    chunks = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"{filler} write to <EMAIL_1> or <EMAIL_1> today {filler}"
    event = gw.last_audit()
    assert event["decision"] == "allowed"
    assert [(r["guard"], r["action"], r["part"]) for r in guards_of(event)] == [
        ("answer-emails", "redact", "0.content"),
        ("answer-emails", "redact", "0.content"),
    ]
