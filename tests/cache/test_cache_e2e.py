"""The exact response cache over HTTP, with the official SDKs: what shares an entry and what
does not, every client API streamed and not, scopes, TTL, eviction, client directives, what is
never stored, guards on hits, budgets and the audit."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import RunningGateway, run_gateway, with_claude

CHAT = "/v1/chat/completions"

CACHE = """\
cache:
  enabled: true
  memory_max_bytes: 10000000
  rules:
    - models: [team-model]
      scope: global
    - models: [open-det*]
      cacheable: deterministic
    - models: [open-short*]
      ttl_s: 0.4
    - models: [open-small*]
      max_entry_bytes: 600
    - models: [open-off*]
      enabled: false
    - models: [open-charged*]
      charge: full
groups:
  - name: team
"""


@pytest.fixture(scope="module")
def gw(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("cache"), upstream_url, CACHE) as running:
        running.reconfigure(lambda text: with_claude(text, upstream_url, "claude-cached"))
        yield running


def oai(gw: RunningGateway, who: str = "alice", **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys[who], default_headers=headers, max_retries=0)


def ant(gw: RunningGateway, who: str = "alice") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.keys[who], max_retries=0)


def post(gw: RunningGateway, raw: bytes, who: str = "alice", **headers: str) -> httpx.Response:
    with gw.client(who) as client:
        return client.post(CHAT, content=raw, headers={"content-type": "application/json", **headers})


def question(tag: str) -> list[dict[str, Any]]:
    """A question no other test asks (entries outlive tests in the module's gateway)."""
    return [{"role": "user", "content": f"What is the answer to question {tag}?"}]


def drained(gw: RunningGateway) -> None:
    """Wait for the cache's background writes (the in-process backend writes at once)."""
    deadline = time.monotonic() + 5
    while gw.app.services.cache.pending and time.monotonic() < deadline:
        time.sleep(0.01)


# -- what shares an entry ------------------------------------------------------------------------


def test_key_order_and_whitespace_share_an_entry(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="forty-two"))
    first = post(gw, b'{"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "q-order"}]}')  # fmt: skip  # noqa: E501
    second = post(gw, b'{"messages":[{"content":"q-order","role":"user"}],"temperature":0.0,\n "model":"gpt-4o-mini"}')
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit"
    assert int(second.headers["age"]) >= 0
    assert second.json()["choices"][0]["message"]["content"] == "forty-two"
    assert len(upstream.requests) == 1
    # What the client may send that does not change the answer shares the entry too.
    extras = {"user": "someone", "stream": False, "metadata": {"a": "b"}}
    third = post(gw, orjson.dumps({"model": "gpt-4o-mini", "temperature": 0, **extras,
                                   "messages": [{"role": "user", "content": "q-order"}]}))  # fmt: skip
    assert third.headers["x-cache"] == "hit"
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.7},
        {"max_tokens": 50},
        {"seed": 7},
        {"stop": ["END"]},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q-param"}]},
        {"model": "team-model"},
    ],
    ids=lambda change: next(iter(change)) if "model" not in change else "target",
)
def test_what_shapes_the_answer_is_in_the_key(
    gw: RunningGateway, upstream: FakeUpstream, change: dict[str, Any]
) -> None:
    base = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q-param"}]}
    first = post(gw, orjson.dumps(base))
    assert first.headers["x-cache"] in ("miss", "hit")
    before = len(upstream.requests)
    changed = post(gw, orjson.dumps({**base, **change}))
    assert changed.status_code == 200
    assert len(upstream.requests) == before + 1, "a changed request must go upstream"
    # A different tool is a different key again.
    if "tools" in change:
        other = {"tools": [{"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}]}
        post(gw, orjson.dumps({**base, **other}))
        assert len(upstream.requests) == before + 2


# -- every client API, streamed and not ---------------------------------------------------------


def test_openai_stream_miss_is_stored_as_streamed_and_served_as_stream_or_json(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    text = "one two three four five six seven eight"
    upstream.enqueue(Reply(content=text))
    client = oai(gw)
    messages = question("stream-1")
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True,
                                                  stream_options={"include_usage": True}))  # fmt: skip
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(texts) == text and len(texts) > 1
    usage = chunks[-1].usage
    assert usage is not None
    drained(gw)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    ) as resp:
        assert resp.headers["x-cache"] == "hit"
        again = list(resp.parse())
    again_texts = [c.choices[0].delta.content for c in again if c.choices and c.choices[0].delta.content]
    # Chunked the way the model streamed, with its usage.
    assert again_texts == texts
    assert again[-1].usage is not None and again[-1].usage.completion_tokens == usage.completion_tokens
    whole = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert whole.headers["x-cache"] == "hit"
    completion = whole.parse()
    assert completion.choices[0].message.content == text
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == usage.prompt_tokens
    # Without `include_usage`, a hit streams no usage chunk, as the upstream would not.
    plain = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    assert all(c.usage is None for c in plain)
    assert len(upstream.requests) == 1


def test_one_question_through_openai_anthropic_and_responses_shares_an_entry(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply(content="The capital is Paris."))
    prompt = "What is the capital of France? (dialects)"
    first = oai(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], max_tokens=100
    )
    assert first.headers["x-cache"] == "miss"
    # The same target, asked in Anthropic's dialect: the stored answer, rendered as a Message.
    message = ant(gw).messages.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": prompt}]
    )
    assert message.headers["x-cache"] == "hit"
    parsed = message.parse()
    assert parsed.content[0].type == "text" and parsed.content[0].text == "The capital is Paris."
    assert parsed.usage.output_tokens > 0
    with ant(gw).messages.stream(
        model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": prompt}]
    ) as stream:
        assert "".join(stream.text_stream) == "The capital is Paris."
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    # And through the Responses API.
    response = oai(gw).responses.with_raw_response.create(model="gpt-4o-mini", input=prompt, max_output_tokens=100)
    assert response.headers["x-cache"] == "hit"
    assert response.parse().output_text == "The capital is Paris."
    events = list(oai(gw).responses.create(model="gpt-4o-mini", input=prompt, max_output_tokens=100, stream=True))
    assert any(e.type == "response.completed" for e in events)
    assert len(upstream.requests) == 1


def test_anthropic_passthrough_stream_is_stored_and_served(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="Bonjour from Claude, in several pieces of text"))
    client = ant(gw)
    messages = [{"role": "user", "content": "Say hello (passthrough)"}]
    with client.messages.stream(model="claude-cached", max_tokens=64, messages=messages) as stream:  # type: ignore[arg-type]
        first = "".join(stream.text_stream)
        first_usage = stream.get_final_message().usage
    drained(gw)
    with client.messages.with_streaming_response.create(
        model="claude-cached",
        max_tokens=64,
        messages=messages,
        stream=True,  # type: ignore[arg-type]
    ) as resp:
        assert resp.headers["x-cache"] == "hit"
    with client.messages.stream(model="claude-cached", max_tokens=64, messages=messages) as stream:  # type: ignore[arg-type]
        assert "".join(stream.text_stream) == first
        assert stream.get_final_message().usage.output_tokens == first_usage.output_tokens
    whole = client.messages.create(model="claude-cached", max_tokens=64, messages=messages)  # type: ignore[arg-type]
    assert whole.content[0].text == first  # type: ignore[union-attr]
    assert len(upstream.requests) == 1


# -- scope -------------------------------------------------------------------------------------


def test_a_hit_never_crosses_consumers(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="for alice only"), Reply(content="for bob"))
    messages = question("scope")
    alice = oai(gw, "alice").chat.completions.create(model="gpt-4o-mini", messages=messages)
    bob = oai(gw, "bob").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert bob.headers["x-cache"] == "miss"
    assert bob.parse().choices[0].message.content == "for bob"
    assert alice.choices[0].message.content == "for alice only"
    assert len(upstream.requests) == 2
    again = oai(gw, "alice").chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert again.choices[0].message.content == "for alice only"


def test_a_global_scope_is_shared(gw: RunningGateway, upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.enqueue(Reply(content="shared"))
    messages = question("global")
    oai(gw, "alice").chat.completions.create(model="team-model", messages=messages)
    # bob may not use team-model: the shared entry does not get him past access rules.
    with pytest.raises(openai.PermissionDeniedError):
        oai(gw, "bob").chat.completions.create(model="team-model", messages=messages)
    assert len(upstream.requests) == 1


def test_group_scope_shares_within_the_group_only(upstream: FakeUpstream, upstream_url: str, tmp_path: Path) -> None:
    extra = """\
    cache:
      enabled: true
      default: {scope: group}
    groups:
      - name: team
    """
    with run_gateway(tmp_path, upstream_url, extra) as running:
        running.reconfigure(
            lambda text: text.replace("  - name: alice\n", "  - name: alice\n    groups: [team]\n").replace(
                "  - name: bob\n", "  - name: bob\n    groups: [team]\n"
            )
        )
        upstream.enqueue(Reply(content="team answer"))
        messages = question("group")
        oai(running, "alice").chat.completions.create(model="gpt-4o-mini", messages=messages)
        hit = oai(running, "bob").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        assert hit.headers["x-cache"] == "hit"
        assert hit.parse().choices[0].message.content == "team answer"
        running.reconfigure(lambda text: text.replace("  - name: bob\n    groups: [team]\n", "  - name: bob\n"))
        alone = oai(running, "bob").chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        assert alone.headers["x-cache"] == "miss"


# -- policy ------------------------------------------------------------------------------------


def test_ttl_expires_entries(gw: RunningGateway, upstream: FakeUpstream) -> None:
    messages = question("ttl")
    client = oai(gw)
    client.chat.completions.create(model="open-short", messages=messages)
    hit = client.chat.completions.with_raw_response.create(model="open-short", messages=messages)
    assert hit.headers["x-cache"] == "hit"
    time.sleep(0.5)
    expired = client.chat.completions.with_raw_response.create(model="open-short", messages=messages)
    assert expired.headers["x-cache"] == "miss"
    assert len(upstream.requests) == 2


def test_deterministic_policy_caches_only_temperature_zero_or_a_seed(
    gw: RunningGateway, upstream: FakeUpstream
) -> None:
    client = oai(gw)
    messages = question("det")
    warm = client.chat.completions.with_raw_response.create(model="open-det", messages=messages, temperature=0.9)
    assert warm.headers["x-cache"] == "bypass"
    client.chat.completions.with_raw_response.create(model="open-det", messages=messages, temperature=0.9)
    assert len(upstream.requests) == 2
    client.chat.completions.create(model="open-det", messages=messages, temperature=0)
    assert (
        client.chat.completions.with_raw_response.create(model="open-det", messages=messages, temperature=0).headers[
            "x-cache"
        ]
        == "hit"
    )
    client.chat.completions.create(model="open-det", messages=messages, temperature=0.9, seed=3)
    assert (
        client.chat.completions.with_raw_response.create(
            model="open-det", messages=messages, temperature=0.9, seed=3
        ).headers["x-cache"]
        == "hit"
    )
    assert len(upstream.requests) == 4
    audit = gw.audit(10)
    assert audit[-1]["cache"] == "hit" and audit[-6]["cache"] == "bypass"


def test_an_answer_over_the_entry_size_is_not_stored(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="word " * 300), Reply(content="word " * 300))
    client = oai(gw)
    messages = question("big")
    client.chat.completions.create(model="open-small", messages=messages)
    again = client.chat.completions.with_raw_response.create(model="open-small", messages=messages)
    assert again.headers["x-cache"] == "miss"
    assert len(upstream.requests) == 2


def test_readyz_shows_what_the_cache_holds(gw: RunningGateway) -> None:
    oai(gw).chat.completions.create(model="gpt-4o-mini", messages=question("readyz"))
    with gw.client(None) as client:
        ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    cache = ready["cache"]
    assert cache["backend"] == "memory" and cache["entries"] >= 1 and cache["bytes"] > 0
    assert cache["pending_writes"] == 0 and cache["coalescing"] == 0


def test_a_disabled_policy_leaves_no_cache_header(gw: RunningGateway, upstream: FakeUpstream) -> None:
    resp = oai(gw).chat.completions.with_raw_response.create(model="open-off", messages=question("off"))
    assert "x-cache" not in resp.headers
    assert gw.last_audit()["cache"] is None


def test_eviction_by_bytes(upstream: FakeUpstream, upstream_url: str, tmp_path: Path) -> None:
    # Room for about two entries of this size: the least recently used goes first.
    with run_gateway(tmp_path, upstream_url, "cache: {enabled: true, memory_max_bytes: 2400}\n") as running:
        client = oai(running)
        for tag in ("a", "b"):
            client.chat.completions.create(model="gpt-4o-mini", messages=question("evict-" + tag))
        assert (
            client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=question("evict-a")).headers[
                "x-cache"
            ]
            == "hit"
        )
        client.chat.completions.create(model="gpt-4o-mini", messages=question("evict-c"))
        backend = running.app.services.cache.current.backend  # type: ignore[union-attr]
        assert backend.bytes <= 2400
        statuses = {
            tag: client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=question("evict-" + tag)
            ).headers["x-cache"]
            for tag in ("a", "b")
        }
        # `b` was the least recently used when `c` came in.
        assert statuses == {"a": "hit", "b": "miss"}


# -- client directives -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "stored"),
    [
        ({"Cache-Control": "no-store"}, "bypass", False),
        ({"x-sluicegate-cache": "bypass"}, "bypass", False),
        ({"Cache-Control": "no-cache"}, "miss", True),
        ({"x-sluicegate-cache": "refresh"}, "miss", True),
    ],
)
def test_client_directives(
    gw: RunningGateway, upstream: FakeUpstream, headers: dict[str, str], status: str, stored: bool
) -> None:
    tag = "directive-" + "-".join(f"{k}{v}" for k, v in headers.items())
    upstream.enqueue(Reply(content="old"), Reply(content="new"), Reply(content="third"))
    client = oai(gw)
    client.chat.completions.create(model="gpt-4o-mini", messages=question(tag))
    directed = oai(gw, **headers).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=question(tag))
    assert directed.headers["x-cache"] == status
    assert directed.parse().choices[0].message.content == "new"  # asked upstream, whatever was stored
    after = client.chat.completions.create(model="gpt-4o-mini", messages=question(tag))
    # A refresh replaced the entry; a bypass left the old one.
    assert after.choices[0].message.content == ("new" if stored else "old")
    assert len(upstream.requests) == 2


# -- what is never stored ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=500, error_message="boom"),
        Reply(status=429, error_message="slow down"),
        Reply(fault="error_200"),
    ],
    ids=["500", "429", "error_200"],
)
def test_errors_are_not_stored(gw: RunningGateway, upstream: FakeUpstream, reply: Reply) -> None:
    upstream.enqueue(reply, Reply(content="fine now"))
    messages = question("error-" + str(reply.status) + str(reply.fault))
    with pytest.raises(openai.APIError):
        oai(gw).chat.completions.create(model="gpt-4o-mini", messages=messages)
    ok = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert ok.headers["x-cache"] == "miss"
    assert ok.parse().choices[0].message.content == "fine now"


@pytest.mark.parametrize("fault", ["reset", "error_event"])
def test_a_cut_stream_is_not_stored(gw: RunningGateway, upstream: FakeUpstream, fault: str) -> None:
    upstream.enqueue(Reply(content="one two three four five six", fault=fault), Reply(content="whole"))
    messages = question("cut-" + fault)
    with pytest.raises(openai.APIError):
        list(oai(gw).chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    drained(gw)
    again = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert again.headers["x-cache"] == "miss"
    assert again.parse().choices[0].message.content == "whole"


def test_a_client_that_leaves_mid_stream_stores_nothing(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="slow " * 20, chunk_interval_s=0.05), Reply(content="complete"))
    messages = question("leave")
    with oai(gw).chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=messages, stream=True
    ) as resp:
        next(resp.iter_lines())
    time.sleep(0.3)
    drained(gw)
    again = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert again.parse().choices[0].message.content == "complete"


GUARDED = """\
guards:
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
  - name: no-launch-questions
    kind: regex
    action: block
    applies_to: input
    settings:
      deny: ["launch date"]
cache:
  enabled: true
"""


def test_blocked_and_redacted_answers_are_not_stored(upstream: FakeUpstream, upstream_url: str, tmp_path: Path) -> None:
    with run_gateway(tmp_path, upstream_url, GUARDED) as running:
        guards = "  - name: alice\n    guards: [answer-codename, answer-emails]\n"
        running.reconfigure(lambda text: text.replace("  - name: alice\n", guards))
        upstream.enqueue(Reply(content="the nightingale plan"), Reply(content="write to ann@example.com"))
        with pytest.raises(openai.BadRequestError):
            oai(running).chat.completions.create(model="gpt-4o-mini", messages=question("blocked"))
        redacted = oai(running).chat.completions.create(model="gpt-4o-mini", messages=question("redacted"))
        assert "ann@example.com" not in (redacted.choices[0].message.content or "")
        upstream.enqueue(Reply(content="clean"), Reply(content="clean too"))
        for tag in ("blocked", "redacted"):
            again = oai(running).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=question(tag))
            assert again.headers["x-cache"] == "miss"
        assert len(upstream.requests) == 4


def test_a_guard_added_after_storing_applies_to_the_hit(
    upstream: FakeUpstream, upstream_url: str, tmp_path: Path
) -> None:
    with run_gateway(tmp_path, upstream_url, GUARDED) as running:
        upstream.enqueue(Reply(content="the nightingale plan"))
        messages = question("later-guard")
        stored = oai(running).chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert stored.choices[0].message.content == "the nightingale plan"
        running.reconfigure(
            lambda text: text.replace("  - name: alice\n", "  - name: alice\n    guards: [answer-codename]\n")
        )
        with pytest.raises(openai.BadRequestError) as blocked:
            oai(running).chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert "content_blocked" in str(blocked.value.body)
        with pytest.raises(openai.APIError):
            list(oai(running).chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
        event = running.last_audit()
        assert event["cache"] == "hit" and event["decision"] == "blocked"
        assert len(upstream.requests) == 1


# -- audit and budgets -------------------------------------------------------------------------


def test_a_hit_is_audited_with_the_tokens_and_cost_it_saved(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="priced answer", prompt_tokens=1000, completion_tokens=2000))
    messages = question("audit")
    oai(gw).chat.completions.create(model="gpt-4o-mini", messages=messages)
    oai(gw).chat.completions.create(model="gpt-4o-mini", messages=messages)
    miss, hit = gw.audit(2)
    assert miss["cache"] == "miss" and miss["usage_source"] == "upstream"
    assert miss["cost_micro_usd"] == 1000 * 0.15 + 2000 * 0.6  # per million tokens, in micro-units
    assert hit["cache"] == "hit" and hit["usage_source"] == "cache"
    assert (hit["prompt_tokens"], hit["completion_tokens"]) == (1000, 2000)
    assert hit["cost_micro_usd"] == 0
    assert hit["cache_saved_micro_usd"] == miss["cost_micro_usd"]
    assert hit["upstream_status"] is None


def test_charge_full_charges_a_hit(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="charged", prompt_tokens=100, completion_tokens=100))
    messages = question("charge")
    oai(gw).chat.completions.create(model="open-charged", messages=messages)
    oai(gw).chat.completions.create(model="open-charged", messages=messages)
    miss, hit = gw.audit(2)
    assert hit["cache"] == "hit"
    assert hit["cost_micro_usd"] == miss["cost_micro_usd"] == hit["cache_saved_micro_usd"]


def test_hits_are_not_charged_to_budgets_by_default(upstream: FakeUpstream, upstream_url: str, tmp_path: Path) -> None:
    extra = """\
    cache: {enabled: true}
    limits:
      budgets:
        - {name: small, scope: consumer, match: [alice], amount: 0.005, window: day}
    """
    with run_gateway(tmp_path, upstream_url, extra) as running:
        # A call at 1000 + 2000 tokens costs 0.00135; each reserves its worst case (0.00246) first,
        # so the limits stage still decides on hits: they pass while the budget has that room.
        upstream.enqueue(*[Reply(content="budgeted", prompt_tokens=1000, completion_tokens=2000)] * 3)
        messages = question("budget")
        oai(running).chat.completions.create(model="gpt-4o-mini", messages=messages)
        for _ in range(5):
            hit = oai(running).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
            assert hit.headers["x-cache"] == "hit"
        # Had the hits been charged, the budget would be spent; it has room for one more call.
        oai(running).chat.completions.create(model="gpt-4o-mini", messages=question("budget-2"))
        with pytest.raises(openai.RateLimitError):
            oai(running).chat.completions.create(model="gpt-4o-mini", messages=question("budget-3"))
        assert len(upstream.requests) == 2


def test_an_answer_the_neutral_form_cannot_carry_is_not_stored(gw: RunningGateway, upstream: FakeUpstream) -> None:
    # Anthropic's server tools: a block a hit could not give back is never stored.
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
            {"type": "text", "text": "Found it."},
        ],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    upstream.enqueue(Reply(body=body), Reply(body=body))
    client = ant(gw)
    messages = [{"role": "user", "content": "search the web (server tools)"}]
    client.messages.create(model="claude-cached", max_tokens=64, messages=messages)  # type: ignore[arg-type]
    again = client.messages.with_raw_response.create(model="claude-cached", max_tokens=64, messages=messages)  # type: ignore[arg-type]
    assert again.headers["x-cache"] == "miss"
    assert [b.type for b in again.parse().content] == ["server_tool_use", "text"]


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def test_a_streamed_tool_call_is_replayed_whole_and_streamed(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(tool_calls=[{"name": "lookup", "arguments": {"city": "Paris", "days": 3}}]))
    client = oai(gw)
    messages = question("tools")
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS, stream=True))  # type: ignore[arg-type]
    streamed = "".join(
        call.function.arguments or ""
        for c in chunks
        if c.choices
        for call in c.choices[0].delta.tool_calls or ()
        if call.function is not None
    )
    drained(gw)
    whole = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert whole.headers["x-cache"] == "hit"
    choice = whole.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "lookup"  # type: ignore[union-attr]
    assert orjson.loads(call.function.arguments) == {"city": "Paris", "days": 3}  # type: ignore[union-attr]
    assert call.function.arguments == streamed  # type: ignore[union-attr]
    # Anthropic's dialect gets the same call as a tool_use block (same target and parameters).
    claude = ant(gw)
    message = claude.messages.with_raw_response.create(
        model="gpt-4o-mini",
        max_tokens=64,
        messages=messages,  # type: ignore[arg-type]
        tools=[{"name": "lookup", "input_schema": {"type": "object"}}],
    )
    assert message.headers["x-cache"] == "miss"  # max_tokens: another entry
    assert len(upstream.requests) == 2


def test_a_hit_passes_the_input_guards_first(upstream: FakeUpstream, upstream_url: str, tmp_path: Path) -> None:
    with run_gateway(tmp_path, upstream_url, GUARDED) as running:
        upstream.enqueue(Reply(content="May 4"))
        messages = [{"role": "user", "content": "What is the launch date?"}]
        oai(running).chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        running.reconfigure(
            lambda text: text.replace("  - name: alice\n", "  - name: alice\n    guards: [no-launch-questions]\n")
        )
        with pytest.raises(openai.BadRequestError) as blocked:
            oai(running).chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        assert "content_blocked" in str(blocked.value.body)
        event = running.last_audit()
        # Refused before the cache was read: no cache status, nothing served.
        assert event["decision"] == "blocked" and event["cache"] is None
        assert len(upstream.requests) == 1


def test_identical_concurrent_misses_reach_the_upstream_once(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="asked once", delay_s=0.5))
    messages = question("coalesce")

    def ask() -> tuple[str, str]:
        resp = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        return resp.headers["x-cache"], resp.parse().choices[0].message.content or ""

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        first = pool.submit(ask)
        time.sleep(0.15)  # the first is on its way upstream
        others = [pool.submit(ask) for _ in range(5)]
        results = [first.result(), *(f.result() for f in others)]
    assert sorted(results) == [("hit", "asked once")] * 5 + [("miss", "asked once")]
    assert len(upstream.requests) == 1


def test_waiting_misses_go_upstream_when_the_first_fails(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=500, error_message="boom", delay_s=0.4), Reply(content="second try"))
    messages = question("coalesce-fail")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(
            lambda: oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        )
        time.sleep(0.15)
        second = pool.submit(
            lambda: oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        )
        with pytest.raises(openai.InternalServerError):
            first.result()
        resp = second.result()
    assert resp.headers["x-cache"] == "miss"
    assert resp.parse().choices[0].message.content == "second try"
    assert len(upstream.requests) == 2


def test_a_streamed_request_does_not_wait_for_an_identical_one(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="slow first", delay_s=1.0), Reply(content="streamed at once"))
    messages = question("coalesce-stream")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(lambda: oai(gw).chat.completions.create(model="gpt-4o-mini", messages=messages))
        time.sleep(0.15)
        chunks = list(oai(gw).chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
        first.result()
    # It went upstream itself (the second answer), not waiting to be served the first's.
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed at once"
    assert len(upstream.requests) == 2
