"""Guards read every field a model reads, over HTTP, through every client API: text hidden under
property names that used to be skipped, as a dictionary key, as a JSON number, in response
formats and predictions, in token-id prompts, and in every answer field, streamed or not. The
streamed form of an answer is blocked exactly when its JSON form is."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from sluicegate import tokens
from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import (
    CANARY_KEY,
    RunningGateway,
    assert_openai_error,
    guarded_alice,
    run_gateway,
    wait_for,
    with_claude,
)

GUARDS = """\
guards:
  - name: codename
    kind: regex
    action: block
    applies_to: input
    settings:
      deny: ["project\\\\s+nightingale"]
  - name: cards
    kind: pii
    action: block
    applies_to: input
    settings:
      entities: [CREDIT_CARD]
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
    guards: [codename, cards, emails, answer-codename, answer-emails]
"""
PASSTHROUGH, TRANSLATED = "claude-sonnet", "gpt-4o-mini"
SECRET = "Project Nightingale"
CARD = 4111111111111111
#: property names a skip list of "non-text keys" used to leave unread at any depth
HIDING_NAMES = ["data", "url", "type", "id", "format", "source", "status"]


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("guard-fields"), upstream_url, GUARDS) as gw:
        legacy = "models:\n  - {name: legacy-alias, provider: mock, model: gpt-4}\n"
        gw.reconfigure(
            lambda text: guarded_alice(with_claude(text, upstream_url, PASSTHROUGH).replace("models:\n", legacy, 1))
        )
        yield gw


def oai(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)


def claude(gw: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)


def schema(name: str, value: Any = SECRET) -> dict[str, Any]:
    """A JSON schema whose property `name` hides `value` in its description."""
    return {"type": "object", "properties": {name: {"type": "string", "description": value}}}


def audit_of(gw: RunningGateway, resp: httpx.Response) -> dict[str, Any]:
    """The audit event of the call that got `resp` (it may be written just after the answer)."""
    request_id = resp.headers["x-request-id"]
    found: list[dict[str, Any]] = []

    def written() -> bool:
        found[:] = [e for e in gw.audit(50) if e["request_id"] == request_id]
        return bool(found)

    wait_for(written)
    return found[0]


def blocked(gw: RunningGateway, upstream: FakeUpstream, resp: httpx.Response, guard: str = "codename") -> None:
    assert upstream.calls == 0, "the hidden text reached the upstream"
    event = audit_of(gw, resp)
    assert event["outcome"] == "content_blocked" and guard in event["guards"], event


# -- input: chat completions --------------------------------------------------------------------------

USER: Any = [{"role": "user", "content": "hi"}]


def chat_cases() -> dict[str, tuple[dict[str, Any], str]]:
    cases: dict[str, tuple[dict[str, Any], str]] = {}
    for name in HIDING_NAMES:
        cases[f"tool-schema-property-{name}"] = (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema(name)}}]},
            "codename",
        )
        # the escape hides the phrase from a scan of the raw arguments text
        arguments = json.dumps({name: "\\u0050roject Nightingale"}).replace("\\\\", "\\")
        cases[f"tool-call-arguments-{name}"] = (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                ]
            },
            "codename",
        )
    cases["schema-key"] = (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema(SECRET, "x")}}]},
        "codename",
    )
    cases["card-as-json-number"] = (
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "integer", "default": CARD}}}
            ]
        },
        "cards",
    )
    cases["response-format-json-schema"] = (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema("data")}}},
        "codename",
    )
    cases["response-format-description"] = (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "description": SECRET}}},
        "codename",
    )
    cases["prediction-content"] = ({"prediction": {"type": "content", "content": f"draft about {SECRET}"}}, "codename")
    cases["prediction-parts"] = (
        {"prediction": {"type": "content", "content": [{"type": "text", "text": SECRET}]}},
        "codename",
    )
    cases["unknown-field"] = ({"extra_context": {"notes": [SECRET]}}, "codename")
    return cases


CHAT_CASES = chat_cases()


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_chat_input_blocked(gw: RunningGateway, upstream: FakeUpstream, case: str) -> None:
    extra, guard = CHAT_CASES[case]
    messages = extra.get("messages", USER)
    extra = {k: v for k, v in extra.items() if k != "messages"}
    with pytest.raises(openai.BadRequestError) as caught:
        oai(gw).chat.completions.create(model=TRANSLATED, messages=messages, extra_body=extra)
    assert caught.value.response.json()["error"]["code"] == "content_blocked"
    blocked(gw, upstream, caught.value.response, guard)


def test_clean_schema_with_those_names_passes(gw: RunningGateway, upstream: FakeUpstream) -> None:
    """Reading schemas whole blocks nothing ordinary: the same names, harmless text."""
    tools: Any = [
        {"type": "function", "function": {"name": "f", "parameters": schema(name, "a field")}} for name in HIDING_NAMES
    ]
    oai(gw).chat.completions.create(model=TRANSLATED, messages=USER, tools=tools)
    sent = upstream.requests[-1].json()
    assert sent["tools"] == tools


def test_redaction_renames_a_key_and_rewrites_arguments(gw: RunningGateway, upstream: FakeUpstream) -> None:
    """A redacted key is renamed in place (order kept); a redaction inside decoded arguments
    writes the arguments again; the rest of the body goes upstream as sent."""
    arguments = '{"to": "b\\u006fb@example.com", "n": 1}'
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "mail",
                "parameters": {"type": "object", "properties": {"alice@example.com": {"type": "string"}, "z": {}}},
            },
        }
    ]
    messages: Any = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "mail", "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sent"},
    ]
    oai(gw).chat.completions.create(model=TRANSLATED, messages=messages, tools=tools)
    sent = upstream.requests[-1].json()
    key, after = sent["tools"][0]["function"]["parameters"]["properties"]
    assert re.fullmatch("<EMAIL_[0-9]>", key) and after == "z"
    call = json.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"])
    assert list(call) == ["to", "n"] and re.fullmatch("<EMAIL_[0-9]>", call["to"]) and call["n"] == 1
    assert "example.com" not in upstream.requests[-1].body.decode()


# -- input: token-id prompts ----------------------------------------------------------------------------


def test_completions_token_ids_are_guarded(gw: RunningGateway, upstream: FakeUpstream) -> None:
    ids = tokens.encode_ids(f"Tell me about {SECRET}.", "o200k_base")
    for prompt in (ids, [tokens.encode_ids("hello", "o200k_base"), ids]):
        with pytest.raises(openai.BadRequestError) as caught:
            oai(gw).completions.create(model=TRANSLATED, prompt=prompt)
        assert caught.value.response.json()["error"]["code"] == "content_blocked"
        blocked(gw, upstream, caught.value.response)


def test_token_ids_decode_with_the_upstream_models_encoding(gw: RunningGateway, upstream: FakeUpstream) -> None:
    """`legacy-alias` is gpt-4 upstream: its ids are cl100k ids, whatever the alias is called."""
    ids = tokens.encode_ids(f"Tell me about {SECRET}.", "cl100k_base")
    assert SECRET not in tokens.decode_ids(ids, "o200k_base")
    with pytest.raises(openai.BadRequestError) as caught:
        oai(gw).completions.create(model="legacy-alias", prompt=ids)
    assert caught.value.response.json()["error"]["code"] == "content_blocked"
    blocked(gw, upstream, caught.value.response)


def test_embeddings_token_ids_are_guarded(gw: RunningGateway, upstream: FakeUpstream) -> None:
    ids = tokens.encode_ids(f"Tell me about {SECRET}.", "cl100k_base")
    with pytest.raises(openai.BadRequestError) as caught:
        oai(gw).embeddings.create(model="text-embedding-3-small", input=[ids])
    assert caught.value.response.json()["error"]["code"] == "content_blocked"
    blocked(gw, upstream, caught.value.response)


def test_token_ids_redacted_are_encoded_again(gw: RunningGateway, upstream: FakeUpstream) -> None:
    ids = tokens.encode_ids("write to alice@example.com today", "o200k_base")
    oai(gw).completions.create(model=TRANSLATED, prompt=ids)
    sent = upstream.requests[-1].json()["prompt"]
    assert all(isinstance(t, int) for t in sent)
    assert tokens.decode_ids(sent, "o200k_base") == "write to <EMAIL_1> today"


@pytest.mark.parametrize(
    "prompt",
    [[10**9], [-1], [True, 5], [[1, 2], "text"], [200005]],
    ids=["out-of-range", "negative", "boolean", "mixed", "unassigned"],
)
def test_undecodable_token_ids_are_refused(gw: RunningGateway, upstream: FakeUpstream, prompt: Any) -> None:
    with gw.client() as c:
        resp = c.post("/v1/completions", json={"model": TRANSLATED, "prompt": prompt})
    error = assert_openai_error(resp, 400, "invalid_value")
    assert error["param"].startswith("prompt")
    assert upstream.calls == 0


def test_token_ids_pass_without_guards(gw: RunningGateway, upstream: FakeUpstream) -> None:
    """Consumers without input guards send token ids as they are: nothing needs to read them."""
    with gw.client("bob") as c:
        resp = c.post("/v1/completions", json={"model": TRANSLATED, "prompt": [10**9]})
    assert resp.status_code == 200, resp.text
    assert upstream.requests[-1].json()["prompt"] == [10**9]


# -- input: Responses -----------------------------------------------------------------------------------


def responses_cases() -> dict[str, tuple[dict[str, Any], str]]:
    cases: dict[str, tuple[dict[str, Any], str]] = {}
    for name in HIDING_NAMES:
        cases[f"tool-schema-property-{name}"] = (
            {"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": schema(name)}]},
            "codename",
        )
    cases["text-format-schema"] = (
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "r", "schema": schema("format")}}},
        "codename",
    )
    cases["text-format-description"] = (
        {
            "input": "hi",
            "text": {"format": {"type": "json_schema", "name": "r", "description": SECRET, "schema": {}}},
        },
        "codename",
    )
    cases["text-format-key"] = (
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "r", "schema": schema(SECRET, "x")}}},
        "codename",
    )
    cases["function-call-arguments-escaped"] = (
        {
            "input": [
                {"role": "user", "content": "look it up"},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "s",
                    "arguments": '{"id": "\\u0050roject Nightingale"}',
                },
                {"type": "function_call_output", "call_id": "c1", "output": "none"},
            ]
        },
        "codename",
    )
    cases["card-as-json-number"] = (
        {
            "input": "hi",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "integer", "enum": [CARD]}}],
        },
        "cards",
    )
    return cases


RESPONSES_CASES = responses_cases()


@pytest.mark.parametrize("case", list(RESPONSES_CASES))
def test_responses_input_blocked(gw: RunningGateway, upstream: FakeUpstream, case: str) -> None:
    body, guard = RESPONSES_CASES[case]
    with gw.client() as c:
        resp = c.post("/v1/responses", json={"model": TRANSLATED, **body})
    assert_openai_error(resp, 400, "content_blocked")
    blocked(gw, upstream, resp, guard)


# -- input: Anthropic Messages --------------------------------------------------------------------------


def messages_cases() -> dict[str, tuple[dict[str, Any], str]]:
    cases: dict[str, tuple[dict[str, Any], str]] = {}
    for name in HIDING_NAMES:
        cases[f"tool-schema-property-{name}"] = (
            {"messages": USER, "tools": [{"name": "f", "input_schema": schema(name)}]},
            "codename",
        )
        cases[f"tool-use-input-{name}"] = (
            {
                "messages": [
                    {"role": "user", "content": "look it up"},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "s", "input": {name: SECRET}}],
                    },
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "none"}]},
                ]
            },
            "codename",
        )
    cases["tool-use-input-key"] = (
        {
            "messages": [
                {"role": "user", "content": "look it up"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "s", "input": {SECRET: 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "none"}]},
            ]
        },
        "codename",
    )
    cases["tool-use-input-card-number"] = (
        {
            "messages": [
                {"role": "user", "content": "pay"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "pay", "input": {"n": CARD}}],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
            ]
        },
        "cards",
    )
    cases["tool-schema-required"] = (
        {"messages": USER, "tools": [{"name": "f", "input_schema": {"type": "object", "required": [SECRET]}}]},
        "codename",
    )
    return cases


MESSAGES_CASES = messages_cases()


@pytest.mark.parametrize("model", [PASSTHROUGH, TRANSLATED])
@pytest.mark.parametrize("case", list(MESSAGES_CASES))
def test_messages_input_blocked(gw: RunningGateway, upstream: FakeUpstream, case: str, model: str) -> None:
    body, guard = MESSAGES_CASES[case]
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude(gw).messages.create(model=model, max_tokens=20, **body)
    assert caught.value.response.json()["type"] == "error"
    blocked(gw, upstream, caught.value.response, guard)


# -- output: every answer field, JSON and streamed alike -------------------------------------------------


def _completion(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chunks(deltas: list[dict[str, Any]]) -> list[Any]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    events: list[Any] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    events += [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append(b"data: [DONE]\n\n")
    return events


#: answer shapes: (the message of a JSON answer, the deltas of the same answer streamed)
OPENAI_ANSWERS: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "legacy-function-call-arguments": (
        {"content": None, "function_call": {"name": "f", "arguments": '{"q": "nightingale"}'}},
        [{"function_call": {"name": "f", "arguments": ""}}, {"function_call": {"arguments": '{"q": "night'}},
         {"function_call": {"arguments": 'ingale"}'}}],
    ),
    "legacy-function-call-name": (
        {"content": None, "function_call": {"name": "nightingale_tool", "arguments": "{}"}},
        [{"function_call": {"name": "nightingale_tool", "arguments": "{}"}}],
    ),
    "reasoning": ({"content": "ok", "reasoning": "the nightingale plan"}, [{"reasoning": "the night"},
                                                                            {"reasoning": "ingale plan"}]),
    "reasoning-text": ({"content": "ok", "reasoning_text": "nightingale"}, [{"reasoning_text": "nightingale"}]),
    "reasoning-content": ({"content": "ok", "reasoning_content": "nightingale"}, [{"reasoning_content": "nightin"},
                                                                                 {"reasoning_content": "gale"}]),
    "thinking": ({"content": "ok", "thinking": "nightingale"}, [{"thinking": "nightingale"}]),
    "list-content": (
        {"content": [{"type": "text", "text": "the nightingale"}]},
        [{"content": [{"type": "text", "text": "the night"}]}, {"content": [{"type": "text", "text": "ingale"}]}],
    ),
    "refusal": ({"content": None, "refusal": "no nightingale"}, [{"refusal": "no night"}, {"refusal": "ingale"}]),
    "audio-transcript": (
        {"content": None, "audio": {"id": "a1", "data": "AAAA", "transcript": "nightingale", "expires_at": 1}},
        [{"audio": {"id": "a1", "transcript": "night"}}, {"audio": {"transcript": "ingale"}}],
    ),
    "tool-call-name": (
        {"content": None, "tool_calls": [{"id": "c", "type": "function",
                                          "function": {"name": "nightingale", "arguments": "{}"}}]},
        [{"tool_calls": [{"index": 0, "id": "c", "type": "function",
                          "function": {"name": "nightingale", "arguments": "{}"}}]}],
    ),
    "tool-call-arguments": (
        {"content": None, "tool_calls": [{"id": "c", "type": "function",
                                          "function": {"name": "f", "arguments": '{"nightingale": 1}'}}]},
        [{"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]},
         {"tool_calls": [{"index": 0, "function": {"arguments": '{"nigh'}}]},
         {"tool_calls": [{"index": 0, "function": {"arguments": 'tingale": 1}'}}]}],
    ),
    "clean": ({"content": "a harmless answer"}, [{"content": "a harmless "}, {"content": "answer"}]),
}  # fmt: skip


def _chat_answer(gw: RunningGateway, stream: bool) -> httpx.Response:
    body = {"model": TRANSLATED, "messages": USER, "stream": stream}
    with gw.client() as c:
        return c.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("shape", list(OPENAI_ANSWERS))
def test_chat_answer_fields_guarded(gw: RunningGateway, upstream: FakeUpstream, shape: str, stream: bool) -> None:
    message, deltas = OPENAI_ANSWERS[shape]
    upstream.enqueue(Reply(body=_completion(message), events=_chunks(deltas)))
    resp = _chat_answer(gw, stream)
    status, text = resp.status_code, resp.text
    assert CANARY_KEY not in text
    if shape == "clean":
        assert status == 200 and "content_blocked" not in text
        return
    assert "nightingale" not in text.lower() and "nigh" not in text, text
    assert "content_blocked" in text
    assert status == (200 if stream else 400)
    assert audit_of(gw, resp)["outcome"] == "content_blocked"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_responses_answer_reasoning_guarded(gw: RunningGateway, upstream: FakeUpstream, stream: bool) -> None:
    """A Responses client of a chat upstream: the neutral answer is read whole before rendering."""
    message, deltas = OPENAI_ANSWERS["reasoning"]
    upstream.enqueue(Reply(body=_completion(message), events=_chunks(deltas)))
    with gw.client() as c:
        resp = c.post("/v1/responses", json={"model": TRANSLATED, "input": "hi", "stream": stream})
    assert "nightingale" not in resp.text.lower() and "content_blocked" in resp.text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_messages_client_of_chat_upstream_answer_guarded(
    gw: RunningGateway, upstream: FakeUpstream, stream: bool
) -> None:
    message, deltas = OPENAI_ANSWERS["list-content"]
    upstream.enqueue(Reply(body=_completion(message), events=_chunks(deltas)))
    headers = {"x-api-key": gw.keys["alice"], "anthropic-version": "2023-06-01"}
    body = {"model": TRANSLATED, "max_tokens": 20, "messages": USER, "stream": stream}
    resp = httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=10)
    assert "nightingale" not in resp.text.lower() and "nigh" not in resp.text
    assert "invalid_request_error" in resp.text


def _message(content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }


def _events(blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[Any]:
    start = _message([])
    events: list[Any] = [{"type": "message_start", "message": start}]
    for i, (block, deltas) in enumerate(blocks):
        events.append({"type": "content_block_start", "index": i, "content_block": block})
        events += [{"type": "content_block_delta", "index": i, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": i})
    events.append({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                   "usage": {"output_tokens": 1}})  # fmt: skip
    events.append({"type": "message_stop"})
    return events


TOOL_INPUT = {"source": "nightingale"}
#: Anthropic answer shapes: (the content of a JSON message, the same blocks streamed)
ANTHROPIC_ANSWERS: dict[str, tuple[list[dict[str, Any]], list[tuple[dict[str, Any], list[dict[str, Any]]]]]] = {
    "text-in-block-start": (
        [{"type": "text", "text": "the nightingale"}],
        [({"type": "text", "text": "the nightingale"}, [])],
    ),
    "tool-use-name": (
        [{"type": "tool_use", "id": "t1", "name": "nightingale", "input": {}}],
        [({"type": "tool_use", "id": "t1", "name": "nightingale", "input": {}}, [])],
    ),
    "tool-use-input-whole-at-start": (
        [{"type": "tool_use", "id": "t1", "name": "f", "input": TOOL_INPUT}],
        [({"type": "tool_use", "id": "t1", "name": "f", "input": TOOL_INPUT}, [])],
    ),
    "tool-use-input-deltas": (
        [{"type": "tool_use", "id": "t1", "name": "f", "input": {"nightingale": 1}}],
        [({"type": "tool_use", "id": "t1", "name": "f", "input": {}},
          [{"type": "input_json_delta", "partial_json": '{"nigh'},
           {"type": "input_json_delta", "partial_json": 'tingale": 1}'}])],
    ),
    "server-tool-use-name": (
        [{"type": "server_tool_use", "id": "s1", "name": "nightingale_search", "input": {"query": "x"}}],
        [({"type": "server_tool_use", "id": "s1", "name": "nightingale_search", "input": {"query": "x"}}, [])],
    ),
    "thinking": (
        [{"type": "thinking", "thinking": "the nightingale", "signature": "sig"}],
        [({"type": "thinking", "thinking": "", "signature": ""},
          [{"type": "thinking_delta", "thinking": "the night"}, {"type": "thinking_delta", "thinking": "ingale"},
           {"type": "signature_delta", "signature": "sig"}])],
    ),
    "citation": (
        [{"type": "text", "text": "as said",
          "citations": [{"type": "char_location", "cited_text": "nightingale", "document_index": 0,
                         "document_title": "doc", "start_char_index": 0, "end_char_index": 11}]}],
        [({"type": "text", "text": ""},
          [{"type": "text_delta", "text": "as said"},
           {"type": "citations_delta", "citation": {"type": "char_location", "cited_text": "nightingale",
                                                    "document_index": 0, "document_title": "doc",
                                                    "start_char_index": 0, "end_char_index": 11}}])],
    ),
    "clean": (
        [{"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "text", "text": "fine"}],
        [({"type": "thinking", "thinking": "", "signature": ""},
          [{"type": "thinking_delta", "thinking": "hmm"}, {"type": "signature_delta", "signature": "sig"}]),
         ({"type": "text", "text": ""}, [{"type": "text_delta", "text": "fine"}])],
    ),
}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("shape", list(ANTHROPIC_ANSWERS))
def test_messages_answer_fields_guarded(gw: RunningGateway, upstream: FakeUpstream, shape: str, stream: bool) -> None:
    content, blocks = ANTHROPIC_ANSWERS[shape]
    upstream.enqueue(Reply(body=_message(content), events=_events(blocks)))
    headers = {"x-api-key": gw.keys["alice"], "anthropic-version": "2023-06-01"}
    body = {"model": PASSTHROUGH, "max_tokens": 20, "messages": USER, "stream": stream}
    resp = httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=10)
    if shape == "clean":
        assert resp.status_code == 200 and "invalid_request_error" not in resp.text, resp.text
        return
    assert "nightingale" not in resp.text.lower() and "nigh" not in resp.text, resp.text
    assert "invalid_request_error" in resp.text
    assert resp.status_code == (200 if stream else 400)
    assert audit_of(gw, resp)["outcome"] == "content_blocked"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_tool_input_given_whole_is_redacted(gw: RunningGateway, upstream: FakeUpstream, stream: bool) -> None:
    """A tool input that comes whole (a JSON message, or a stream's `content_block_start`) is
    redacted where it stands; its numbers stay numbers, its key order is kept."""
    block = {"type": "tool_use", "id": "t1", "name": "mail", "input": {"to": "bob@example.com", "n": 3}}
    upstream.enqueue(Reply(body=_message([block]), events=_events([(block, [])])))
    kwargs: Any = {"model": PASSTHROUGH, "max_tokens": 20, "messages": USER}
    if stream:
        with claude(gw).messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = claude(gw).messages.create(**kwargs)
    used = message.content[0]
    assert used.type == "tool_use" and used.input == {"to": "<EMAIL_1>", "n": 3}


def test_redacted_choice_loses_its_logprobs(gw: RunningGateway, upstream: FakeUpstream) -> None:
    """Logprobs spell a choice's text token by token: once the text is redacted they would undo it."""
    answer = _completion({"content": "mail bob@example.com"})
    answer["choices"][0]["logprobs"] = {"content": [{"token": "bob@example.com", "logprob": -0.1, "bytes": None,
                                                     "top_logprobs": []}]}  # fmt: skip
    upstream.enqueue(Reply(body=answer))
    got = oai(gw).chat.completions.create(model=TRANSLATED, messages=USER, logprobs=True)
    assert got.choices[0].message.content == "mail <EMAIL_1>" and got.choices[0].logprobs is None
