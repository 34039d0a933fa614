"""Budgets and rate limits over HTTP, against a gateway on loopback with in-process counters.

Exactness: N concurrent calls against a budget with room for exactly K calls: K succeed, and
the spend recorded is K times the price to the micro-unit. Leaks: calls that fail, time out, are
cut or whose client leaves free what they reserved. Refusals are 429s in the client's dialect
with `Retry-After` and the `x-ratelimit-*` headers, read by the official SDKs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import httpx
import openai
import pytest

from sluicegate.limits.counters import MemoryCounters
from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import RunningGateway, assert_openai_error, run_gateway, wait_for, with_claude

#: the fake upstream's fixed usage for these tests, and the prices that make a call cost 0.00020 USD
PROMPT, COMPLETION = 7, 100
#: output 2 USD per million tokens: 100 output tokens cost 200 micro-units; input is free
PRICE = "price: {input: 0, output: 2.0}"
CALL_COST = COMPLETION * 2

LIMITS_MODELS = f"""\
  - name: budgeted
    provider: mock
    model: gpt-4o-mini
    {PRICE}
  - name: priced-input
    provider: mock
    model: gpt-4o-mini
    price: {{input: 1.0, output: 2.0}}
"""


def limits_config(text: str, limits: str) -> str:
    text = text.replace("models:\n", "models:\n" + LIMITS_MODELS, 1)
    return text + "limits:\n" + limits


@contextlib.contextmanager
def limited_gateway(tmp: Path, upstream_url: str, limits: str, claude: bool = False) -> Iterator[RunningGateway]:
    with run_gateway(tmp, upstream_url) as gw:
        gw.reconfigure(
            lambda text: limits_config(with_claude(text, upstream_url, "claude") if claude else text, limits)
        )
        yield gw


def fixed(upstream: FakeUpstream, **kwargs: Any) -> None:
    upstream.default = Reply(content="ok", prompt_tokens=PROMPT, completion_tokens=COMPLETION, **kwargs)


async def _many(gw: RunningGateway, n: int, model: str = "budgeted", **body: Any) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {gw.keys['alice']}"}
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=60, limits=limits) as client:
        payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": COMPLETION, **body}
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=payload) for _ in range(n)))


def _holding(gw: RunningGateway) -> int:
    return gw.app.services.limits.memory.holding


def test_concurrent_calls_against_a_budget_with_room_for_exactly_100(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    fixed(upstream, delay_s=0.01)
    budget = 100 * CALL_COST
    limits = f"""\
  budgets:
    - {{name: exact, scope: consumer, match: [alice], amount: {budget / 1e6}, window: month}}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw:
        responses = asyncio.run(_many(gw, 500))
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert len(ok) == 100
        assert len(ok) + len(refused) == 500
        error = assert_openai_error(refused[0], 429, "budget_exceeded")
        assert "exact" in error["message"] and "consumer 'alice'" in error["message"]
        assert int(refused[0].headers["retry-after"]) > 0
        events = [e for e in gw.audit() if e["model_requested"] == "budgeted"]
        assert sum(e["cost_micro_usd"] or 0 for e in events) == 100 * CALL_COST
        assert sum(1 for e in events if e["status"] == 200) == 100
        assert sum(1 for e in events if e["outcome"] == "budget_exceeded") == 400
        assert _holding(gw) == 0


def test_input_priced_calls_reserve_their_counted_prompt_near_the_limit(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    # Input is priced. Its bound, the body's size in bytes, is above the 7 tokens the upstream
    # reports; near the limit the prompt's tokens are counted instead (here 7 as well), so the
    # budget admits exactly what it has room for, and calls wait for those in flight meanwhile.
    fixed(upstream, delay_s=0.01)
    actual = PROMPT * 1 + COMPLETION * 2
    budget = 50 * actual
    limits = f"""\
  budget_wait_s: 20
  budgets:
    - {{name: wide, scope: gateway, amount: {budget / 1e6}, window: day}}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw:
        responses = asyncio.run(_many(gw, 200, model="priced-input"))
        assert sum(r.status_code == 200 for r in responses) == 50
        spent = sum(e["cost_micro_usd"] or 0 for e in gw.audit() if e["status"] == 200)
        assert spent == budget
        assert _holding(gw) == 0


def test_a_worst_case_above_the_actual_cost_never_overspends(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    # The upstream reports fewer output tokens than the reserved cap: calls reserve more than
    # they cost, and the last ones are refused once what is left is below a worst case.
    fixed(upstream, delay_s=0.01)
    limits = f"""\
  budget_wait_s: 20
  budgets:
    - {{name: wide, scope: gateway, amount: {50 * CALL_COST / 1e6}, window: day}}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw:
        responses = asyncio.run(_many(gw, 200, max_tokens=2 * COMPLETION))
        ok = sum(r.status_code == 200 for r in responses)
        assert 40 <= ok < 50
        spent = sum(e["cost_micro_usd"] or 0 for e in gw.audit() if e["status"] == 200)
        assert spent == ok * CALL_COST <= 50 * CALL_COST
        assert _holding(gw) == 0


def test_requests_at_the_exact_window_boundary(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    fixed(upstream)
    now = [1_800_000_000.0 + 50.5]  # 9.5 s before a minute ends
    limits = """\
  rate_limits:
    - {name: per-minute, scope: consumer, requests: 3, window: minute}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw:
        gw.app.services.limits.memory = MemoryCounters(clock=lambda: now[0])
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
        for i in range(3):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-remaining-requests"] == str(2 - i)
            assert raw.headers["x-ratelimit-reset-requests"] == "9.5s"
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        resp = caught.value.response
        assert resp.headers["retry-after"] == "10"
        assert resp.headers["x-ratelimit-remaining-requests"] == "0"
        assert caught.value.code == "rate_limit_exceeded"
        assert "per-minute" in caught.value.message and "3 requests per 1m" in caught.value.message
        now[0] += 9.5  # the next minute
        ok = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert ok.headers["x-ratelimit-remaining-requests"] == "2"
        assert ok.headers["x-ratelimit-reset-requests"] == "1m0s"


def test_concurrent_calls_are_capped(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    fixed(upstream, delay_s=0.5)
    limits = """\
  rate_limits:
    - {name: two-at-once, scope: key, concurrent: 2}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw:
        responses = asyncio.run(_many(gw, 6, model="gpt-4o-mini"))
        assert sorted(r.status_code for r in responses) == [200, 200, 429, 429, 429, 429]
        assert _holding(gw) == 0
        # The slots are free again.
        assert all(r.status_code == 200 for r in asyncio.run(_many(gw, 2, model="gpt-4o-mini")))


def test_tokens_are_reserved_at_the_worst_case_and_settled_at_the_actual(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    fixed(upstream)
    limits = """\
  rate_limits:
    - {name: tpm, scope: consumer, tokens: 1000, window: hour}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw, gw.client() as client:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}
        first = client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200
        # Reserved: the body's bytes and 500 output tokens; settled: what the upstream reported.
        reserved = 1000 - int(first.headers["x-ratelimit-remaining-tokens"])
        assert reserved > 500
        second = client.post("/v1/chat/completions", json=body)
        assert second.status_code == 200
        assert int(second.headers["x-ratelimit-remaining-tokens"]) == 1000 - (PROMPT + COMPLETION) - reserved
        too_big = client.post("/v1/chat/completions", json={**body, "max_tokens": 900})
        error = assert_openai_error(too_big, 429, "rate_limit_exceeded")
        assert "tpm" in error["message"] and "tokens" in error["message"]


def test_a_request_without_a_limit_gets_the_cap_it_was_reserved_for(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    fixed(upstream)
    limits = """\
  default_max_output_tokens: 300
  budgets:
    - {name: monthly, scope: gateway, amount: 10, window: month}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw, gw.client() as client:
        resp = client.post(
            "/v1/chat/completions", json={"model": "budgeted", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert resp.status_code == 200
        sent = upstream.requests[-1].json()
        assert sent.get("max_completion_tokens", sent.get("max_tokens")) == 300
        # What is left once this call's worst case (300 output tokens at 2 USD per million) is held.
        assert resp.headers["x-ratelimit-remaining-budget"] == "9.999400"
        assert resp.headers["x-ratelimit-limit-budget"] == "10.000000"


def test_a_budget_refusal_tells_the_sdks_not_to_retry(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    fixed(upstream)
    limits = f"""\
  budgets:
    - {{name: tiny, scope: consumer, amount: {CALL_COST / 1e6}, window: month, timezone: Europe/Paris}}
"""
    with limited_gateway(tmp_path, upstream_url, limits, claude=True) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"])  # default retries
        client.chat.completions.create(
            model="budgeted", messages=[{"role": "user", "content": "hi"}], max_tokens=COMPLETION
        )
        before = len(gw.audit())
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(
                model="budgeted", messages=[{"role": "user", "content": "hi"}], max_tokens=COMPLETION
            )
        assert caught.value.code == "budget_exceeded"
        assert "month (Europe/Paris)" in caught.value.message
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert len(gw.audit()) == before + 1  # one attempt: the SDK did not retry
        claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"])
        with pytest.raises(anthropic.RateLimitError) as refused:
            claude.messages.create(model="claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert len(gw.audit()) == before + 2


def test_anthropic_clients_get_their_own_rate_limit_headers(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    limits = """\
  rate_limits:
    - {name: rpm, scope: consumer, requests: 5, window: minute}
"""
    with limited_gateway(tmp_path, upstream_url, limits, claude=True) as gw:
        claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["alice"], max_retries=0)
        raw = claude.messages.with_raw_response.create(
            model="claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "5"
        assert raw.headers["anthropic-ratelimit-requests-remaining"] == "4"
        assert raw.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        assert raw.headers["x-ratelimit-remaining-requests"] == "4"


def test_failed_cut_and_abandoned_calls_free_their_reservations(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    """10,000 mixed calls (answered, failed, cut, timed out, abandoned by their client, streamed or
    not): none leaves anything reserved, and the counter holds what the audit trail holds."""
    limits = """\
  budgets:
    - {name: monthly, scope: consumer, amount: 1000, window: month}
  rate_limits:
    - {name: rl, scope: consumer, tokens: 100000000, concurrent: 1000, window: day}
"""
    kinds = [
        Reply(content="ok", prompt_tokens=PROMPT, completion_tokens=COMPLETION),
        Reply(content="ok", prompt_tokens=PROMPT, completion_tokens=COMPLETION, usage=False),
        Reply(status=500, error_message="boom"),
        Reply(fault="reset", chunks_before_fault=2),
        Reply(status=429, error_message="slow down", retry_after=1),
        Reply(content="ok", fault="error_event"),
        Reply(content="slow", delay_s=0.2),  # its client leaves first (below), or it answers
        Reply(fault="hang"),  # the upstream times out
    ]
    total = 10_000
    with limited_gateway(tmp_path, upstream_url, limits) as gw:
        gw.reconfigure(lambda text: text.replace("read_s: 5", "read_s: 0.3"))

        answered = 0

        async def one(session: aiohttp.ClientSession, i: int) -> None:
            nonlocal answered
            kind = i % len(kinds)
            upstream.enqueue(kinds[kind])
            body = {"model": "budgeted", "messages": [{"role": "user", "content": "hi"}], "stream": i % 2 == 0}
            timeout = aiohttp.ClientTimeout(total=0.05 if kind == 6 and i % 3 else 10)
            try:
                async with session.post("/v1/chat/completions", json=body, timeout=timeout) as resp:
                    await resp.read()
                    answered += 1
            except (aiohttp.ClientError, TimeoutError):
                pass  # the client gave up (or was cut off): the gateway must still settle

        async def run() -> None:
            headers = {"Authorization": f"Bearer {gw.keys['alice']}"}
            async with aiohttp.ClientSession(gw.url, headers=headers) as session:
                step = len(kinds) * 25
                for start in range(0, total, step):
                    await asyncio.gather(*(one(session, i) for i in range(start, min(total, start + step))))

        asyncio.run(run())
        wait_for(lambda: _holding(gw) == 0, timeout=10)
        events = [e for e in gw.audit(3 * total) if e["model_requested"] == "budgeted"]
        # A client that gives up before its request is sent leaves no call to audit.
        assert answered <= len(events) <= total
        assert len(events) > 0.95 * total
        outcomes = {e["outcome"] for e in events}
        assert {"ok", "client_disconnected", "upstream_timeout"} <= outcomes, outcomes
        ledger = sum(e["cost_micro_usd"] or 0 for e in events)
        assert ledger > 0
        memory = gw.app.services.limits.memory
        [level] = asyncio.run(memory.levels([_budget_window(gw, memory)]))
        assert level.reserved == 0
        assert level.used == ledger


def _budget_window(gw: RunningGateway, memory: MemoryCounters) -> tuple[str, ...]:
    stage = next(s for s in gw.app.pipeline.stages if s.name == "limits")
    consumer = gw.app.snapshot.consumers["alice"]
    applied = stage.plan.applicable(None, consumer, "budgeted", "mock").applied[0]  # type: ignore[attr-defined]
    assert applied.rule.kind == "budget"
    return applied.charge(0, memory.clock())[0].window  # type: ignore[no-any-return]


#: one call per client API: path, body (the model is filled in), and how its error names the kind
ENDPOINT_CALLS = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}),
    "completions": ("/v1/completions", {"prompt": "hi", "max_tokens": 50}),
    "responses": ("/v1/responses", {"input": "hi", "max_output_tokens": 50}),
    "embeddings": ("/v1/embeddings", {"input": "hi"}),
    "messages": ("/v1/messages", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}),
}


@pytest.mark.parametrize("endpoint", list(ENDPOINT_CALLS))
@pytest.mark.parametrize("model", ["budgeted", "claude"], ids=["openai-upstream", "anthropic-upstream"])
def test_every_client_api_is_priced_counted_and_refused_in_its_own_format(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, endpoint: str, model: str
) -> None:
    if endpoint in ("embeddings", "completions") and model == "claude":
        pytest.skip("Anthropic serves neither embeddings nor legacy completions")
    fixed(upstream)
    if endpoint == "embeddings":
        model = "priced-input"  # an embedding has input tokens only
    limits = """\
  budgets:
    - {name: monthly, scope: consumer, amount: 1, window: month}
  rate_limits:
    - {name: once, scope: consumer, requests: 1, window: day}
"""
    with limited_gateway(tmp_path, upstream_url, limits, claude=True) as gw, gw.client() as client:
        path, body = ENDPOINT_CALLS[endpoint]
        first = client.post(path, json={"model": model, **body})
        assert first.status_code == 200, first.text
        assert first.headers["x-ratelimit-remaining-requests"] == "0"
        assert float(first.headers["x-ratelimit-remaining-budget"]) < 1
        second = client.post(path, json={"model": model, **body})
        assert second.status_code == 429
        assert "once" in second.text and int(second.headers["retry-after"]) > 0
        if endpoint == "messages":
            assert second.json()["type"] == "error"
            assert second.json()["error"]["type"] == "rate_limit_error"
        else:
            assert_openai_error(second, 429, "rate_limit_exceeded")
        [event] = [e for e in gw.audit() if e["status"] == 200 and e["endpoint"] == endpoint]
        assert event["cost_micro_usd"] is not None and event["cost_micro_usd"] > 0
        memory = gw.app.services.limits.memory
        [level] = asyncio.run(memory.buckets("b:monthly:consumer=alice:")).values()
        assert level == (event["cost_micro_usd"], 0)


def test_the_openai_sdk_waits_out_a_short_window_and_succeeds(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    fixed(upstream)
    limits = """\
  rate_limits:
    - {name: burst, scope: consumer, requests: 1, window: 2s}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=3)
        for _ in range(2):  # the second is refused, then retried by the SDK after Retry-After
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert raw.http_response.status_code == 200
        outcomes = [e["outcome"] for e in gw.audit() if e["model_requested"] == "gpt-4o-mini"]
        assert outcomes[0] == "ok" and outcomes[-1] == "ok"
        assert "rate_limit_exceeded" in outcomes  # the SDK was refused at least once, and retried


def test_streamed_answers_and_upstream_errors_carry_the_figures_too(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    fixed(upstream)
    limits = """\
  rate_limits:
    - {name: rpm, scope: consumer, requests: 10, window: minute}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw, gw.client() as client:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            assert resp.headers["x-ratelimit-remaining-requests"] == "9"
            assert b"[DONE]" in resp.read()
        upstream.enqueue(Reply(status=500, error_message="boom"))
        failed = client.post("/v1/chat/completions", json={**body, "stream": False})
        assert failed.status_code >= 500
        assert failed.headers["x-ratelimit-remaining-requests"] == "8"


def test_a_restart_does_not_give_a_budget_back(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    fixed(upstream)
    limits = f"""\
  budgets:
    - {{name: four, scope: consumer, amount: {4 * CALL_COST / 1e6}, window: month, timezone: Europe/Paris}}
    - {{name: everyone, scope: gateway, amount: 1, window: 7d, rolling: true}}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw:
        assert all(r.status_code == 200 for r in asyncio.run(_many(gw, 3)))
        gw.audit()
    # The same data folder, a new gateway with the budget in its config from the start.
    with run_gateway(tmp_path, upstream_url, extra="limits:\n" + limits) as started:
        [mine] = asyncio.run(started.app.services.limits.memory.buckets("b:four:consumer=alice:")).values()
        assert mine == (3 * CALL_COST, 0)
    # And one whose config gains the budgets on a reload: seeded before they serve.
    with limited_gateway(tmp_path, upstream_url, limits) as again:
        memory = again.app.services.limits.memory
        [mine] = asyncio.run(memory.buckets("b:four:consumer=alice:")).values()
        assert mine == (3 * CALL_COST, 0)
        [everyone] = asyncio.run(memory.buckets("b:everyone:gateway=*:")).values()
        assert everyone.used == 3 * CALL_COST
        responses = asyncio.run(_many(again, 3))
        assert [r.status_code for r in responses].count(200) == 1  # room for one more, not four


def test_an_absurd_output_request_is_refused_not_overflowed(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    fixed(upstream)
    limits = """\
  budgets:
    - {name: monthly, scope: consumer, amount: 1000, window: month}
  rate_limits:
    - {name: tpm, scope: consumer, tokens: 1000000, window: minute}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw, gw.client() as client:
        body = {"model": "budgeted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**15, "n": 128}
        resp = client.post("/v1/chat/completions", json=body)
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["code"] in ("budget_exceeded", "rate_limit_exceeded")
        assert client.post("/v1/chat/completions", json={**body, "max_tokens": 10, "n": 1}).status_code == 200
