"""Upstream failures reach the client as clear OpenAI errors naming the provider, never its key."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import CANARY_KEY, RunningGateway, assert_openai_error, run_gateway

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def fast_timeout_gateway(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("fast"), upstream_url, read_s=0.5) as gw:
        yield gw


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (Reply(status=429, retry_after=7), 429, "upstream_rate_limited"),
        (Reply(status=500), 502, "upstream_error"),
        (Reply(status=503), 503, "upstream_unavailable"),
        (Reply(status=400, error_message="Invalid value for 'temperature'"), 400, "upstream_bad_request"),
        (Reply(status=404, error_message="The model does not exist"), 404, "upstream_not_found"),
    ],
    ids=["429", "500", "503", "400", "404"],
)
def test_upstream_error_statuses(
    gateway: RunningGateway, upstream: FakeUpstream, reply: Reply, status: int, code: str
) -> None:
    upstream.enqueue(reply)
    with gateway.client() as c:
        resp = c.post(CHAT, json=BODY)
    error = assert_openai_error(resp, status, code)
    assert "'mock'" in error["message"]
    if status == 429:
        assert resp.headers["retry-after"] == "7"
    if reply.error_message:
        assert reply.error_message in error["message"]
    event = gateway.last_audit()
    assert event["status"] == status and event["upstream_status"] == reply.status and event["provider"] == "mock"


def test_upstream_429_through_the_sdk(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=429, retry_after=1))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.keys["alice"], max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**BODY)  # type: ignore[call-overload]


def test_upstream_refusing_the_gateway_key_never_leaks_it(
    gateway: RunningGateway, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    # The fake upstream quotes a masked key in its 401 message, as OpenAI does.
    upstream.required_key = "sk-something-else"
    try:
        with gateway.client() as c:
            resp = c.post(CHAT, json=BODY)
    finally:
        upstream.required_key = CANARY_KEY
    error = assert_openai_error(resp, 502, "upstream_auth_error")
    assert "sk-ca" not in resp.text and "***" not in error["message"]
    event = gateway.last_audit()
    assert CANARY_KEY not in str(event) and "sk-ca" not in str(event)
    assert CANARY_KEY not in caplog.text


def test_unreachable_provider(tmp_path: Path, upstream: FakeUpstream) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with run_gateway(tmp_path, dead) as gw, gw.client() as c:
        resp = c.post(CHAT, json=BODY)
        error = assert_openai_error(resp, 503, "upstream_unavailable")
        assert "'mock'" in error["message"] and "127.0.0.1" not in error["message"]
        assert gw.last_audit()["outcome"] == "upstream_unavailable"


def test_upstream_timeout(fast_timeout_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(fault="hang"))
    started = time.monotonic()
    with fast_timeout_gateway.client() as c:
        resp = c.post(CHAT, json=BODY)
    assert_openai_error(resp, 504, "upstream_timeout")
    assert time.monotonic() - started < 5
    assert fast_timeout_gateway.last_audit()["status"] == 504


def test_connection_reset_without_response(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(fault="reset"))
    with gateway.client() as c:
        resp = c.post(CHAT, json=BODY)
    assert_openai_error(resp, 502)


def _sse_events(text: str) -> list[str]:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e.strip()]


def test_stream_cut_midway_ends_with_an_error_event(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="one two three four five six seven", fault="reset", chunks_before_fault=2))
    with gateway.client() as c:
        resp = c.post(CHAT, json={**BODY, "stream": True})
    assert resp.status_code == 200
    events = _sse_events(resp.text)
    assert "[DONE]" not in events
    assert '"error"' in events[-1] and "upstream_stream_cut" in events[-1]
    assert any('"one"' in e for e in events)
    event = gateway.last_audit()
    assert event["outcome"] == "upstream_stream_cut" and event["decision"] == "error"
    # what was streamed before the cut is still accounted (counted: the upstream sent no usage)
    assert event["usage_source"] == "counted" and event["completion_tokens"] >= 2


def test_stream_cut_through_the_sdk_raises(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="one two three four", fault="reset", chunks_before_fault=1))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.keys["alice"], max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(**BODY, stream=True):  # type: ignore[call-overload]
            pass


def test_stream_going_silent_ends_with_an_error_event(
    fast_timeout_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply(content="one two three", chunk_interval_s=2.0))
    with fast_timeout_gateway.client() as c:
        resp = c.post(CHAT, json={**BODY, "stream": True})
    events = _sse_events(resp.text)
    assert "[DONE]" not in events and "upstream_stream_cut" in events[-1]


def test_no_usage_from_upstream_is_counted(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="The quick brown fox jumps over the lazy dog.", usage=False))
    with gateway.client() as c:
        assert c.post(CHAT, json=BODY).status_code == 200
    event = gateway.last_audit()
    assert event["usage_source"] == "counted"
    # o200k_base: 10 tokens for the answer; "hi" (1) + 3 per message + 3 for the reply
    assert event["completion_tokens"] == 10 and event["prompt_tokens"] == 7
    assert event["cost_micro_usd"] == round(7 * 0.15 + 10 * 0.6)


def test_stream_without_usage_is_counted(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(content="The quick brown fox jumps over the lazy dog.", usage=False))
    with gateway.client() as c:
        resp = c.post(CHAT, json={**BODY, "stream": True})
    assert _sse_events(resp.text)[-1] == "[DONE]"
    event = gateway.last_audit()
    assert event["usage_source"] == "counted" and event["completion_tokens"] == 10


def test_client_disconnect_mid_stream_is_audited_and_accounted(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    upstream.enqueue(Reply(content=words, chunk_interval_s=0.05, usage=False))
    with gateway.client() as c, c.stream("POST", CHAT, json={**BODY, "stream": True}) as resp:
        request_id = resp.headers["x-request-id"]
        received = 0
        for line in resp.iter_lines():
            if line.startswith("data:"):
                received += 1
            if received >= 4:
                break
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = [e for e in gateway.audit() if e["request_id"] == request_id]
        if events:
            break
        time.sleep(0.05)
    assert len(events) == 1
    event = events[0]
    assert event["outcome"] == "client_disconnected" and event["status"] == 499
    assert event["usage_source"] == "counted" and 2 <= event["completion_tokens"] < 40 * 2


def test_upstream_redirect_is_not_followed(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply(status=307, headers={"location": "http://169.254.169.254/latest"}))
    with gateway.client() as c:
        resp = c.post(CHAT, json=BODY)
    assert_openai_error(resp, 502)
    assert upstream.calls == 1


def test_body_cannot_choose_the_upstream(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    hostile = {**BODY, "api_base": "http://127.0.0.2:1", "base_url": "http://127.0.0.2:1"}
    with httpx.Client(base_url=gateway.url) as c:
        resp = c.post(
            CHAT,
            json=hostile,
            headers={"Authorization": f"Bearer {gateway.keys['alice']}", "Host": "127.0.0.2", "X-Forwarded-Host": "x"},
        )
    assert resp.status_code == 200
    assert upstream.calls == 1
