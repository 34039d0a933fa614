"""Bad input over raw HTTP: a clear OpenAI-shaped error with the right status, and an audit event."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sluicegate.testing import FakeUpstream
from tests.conftest import RunningGateway, assert_openai_error, run_gateway

CHAT = "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def small_gateway(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway with a 2 KiB body limit."""
    extra = "server:\n  max_body_bytes: 2048\n"
    with run_gateway(tmp_path_factory.mktemp("small"), upstream_url, extra) as gw:
        yield gw


def test_missing_key(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with gateway.client(key=None) as c:
        resp = c.post(CHAT, json={"model": "gpt-4o-mini", "messages": OK_MESSAGES})
    error = assert_openai_error(resp, 401, "missing_api_key")
    assert error["type"] == "authentication_error"
    assert resp.headers["www-authenticate"].startswith("Bearer")
    event = gateway.last_audit()
    assert event["request_id"] == resp.headers["x-request-id"]
    assert event["decision"] == "denied" and event["consumer"] is None and event["status"] == 401
    assert upstream.calls == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer sg-wrong"},
        {"Authorization": "Basic c2c6eA=="},
        {"x-api-key": "sg-wrong"},
        {"Authorization": "Bearer " + "x" * 5000},
    ],
    ids=["wrong-bearer", "basic-scheme", "wrong-x-api-key", "huge-key"],
)
def test_wrong_key(gateway: RunningGateway, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=gateway.url) as c:
        resp = c.post(CHAT, json={"model": "gpt-4o-mini", "messages": OK_MESSAGES}, headers=headers)
    assert_openai_error(resp, 401)
    assert gateway.last_audit()["request_id"] == resp.headers["x-request-id"]


def test_x_api_key_header_is_accepted(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with httpx.Client(base_url=gateway.url) as c:
        resp = c.post(
            CHAT, json={"model": "gpt-4o-mini", "messages": OK_MESSAGES}, headers={"x-api-key": gateway.keys["bob"]}
        )
    assert resp.status_code == 200
    assert gateway.last_audit()["consumer"] == "bob"


BAD_BODIES = [
    (b"{not json", 400, "invalid_json", None),
    (b"", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_json", None),
    (b'"text"', 400, "invalid_json", None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "missing_required_parameter", "model"),
    (b'{"model": 42, "messages": []}', 400, "invalid_value", "model"),
    (b'{"model": "gpt-4o-mini"}', 400, "missing_required_parameter", "messages"),
    (b'{"model": "gpt-4o-mini", "messages": "hello"}', 400, "invalid_value", "messages"),
    (b'{"model": "gpt-4o-mini", "messages": []}', 400, "invalid_value", "messages"),
    (b'{"model": "gpt-4o-mini", "messages": ["hi"]}', 400, "invalid_value", "messages[0]"),
    (b'{"model": "gpt-4o-mini", "messages": [{"content": "x"}]}', 400, "invalid_value", "messages[0].role"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "stream": "yes"}', 400, "invalid_value", "stream"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "n": 0}', 400, "invalid_value", "n"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "n": 1000}', 400, "invalid_value", "n"),
    (
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "max_tokens": "9"}',
        400,
        "invalid_value",
        "max_tokens",
    ),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "tools": {}}', 400, "invalid_value", "tools"),
    (
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "stream": true, "stream_options": 1}',
        400,
        "invalid_value",
        "stream_options",
    ),
    (b'{"model": "gtp-4o", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found", "model"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json", None),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD_BODIES, ids=[f"{i}" for i in range(len(BAD_BODIES))])
def test_bad_chat_bodies(
    gateway: RunningGateway, upstream: FakeUpstream, body: bytes, status: int, code: str, param: str | None
) -> None:
    with gateway.client() as c:
        resp = c.post(CHAT, content=body, headers={"content-type": "application/json"})
    error = assert_openai_error(resp, status, code)
    assert error["param"] == param
    assert upstream.calls == 0
    event = gateway.last_audit()
    assert event["request_id"] == resp.headers["x-request-id"]
    assert event["status"] == status and event["consumer"] == "alice" and event["outcome"] == code


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", b'{"model": "gpt-4o-mini"}', "prompt"),
        ("/v1/completions", b'{"model": "gpt-4o-mini", "prompt": 5}', "prompt"),
        ("/v1/embeddings", b'{"model": "text-embedding-3-small"}', "input"),
        ("/v1/embeddings", b'{"model": "text-embedding-3-small", "input": []}', "input"),
        ("/v1/embeddings", b'{"model": "text-embedding-3-small", "input": "x", "stream": true}', "stream"),
    ],
)
def test_bad_other_bodies(gateway: RunningGateway, path: str, body: bytes, param: str) -> None:
    with gateway.client() as c:
        resp = c.post(path, content=body)
    assert assert_openai_error(resp, 400)["param"] == param


def test_body_over_the_limit(small_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 4000}]}
    with small_gateway.client() as c:
        resp = c.post(CHAT, json=big)
    assert_openai_error(resp, 413, "request_too_large")
    assert upstream.calls == 0
    assert small_gateway.last_audit()["status"] == 413


def test_body_over_the_limit_without_content_length(small_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 512
        yield b'"}]}'

    with small_gateway.client() as c:
        resp = c.post(CHAT, content=chunks())
    assert_openai_error(resp, 413, "request_too_large")
    assert upstream.calls == 0


def test_unauthenticated_request_is_refused_before_the_body_is_read(small_gateway: RunningGateway) -> None:
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 4000}]}
    with small_gateway.client(key=None) as c:
        resp = c.post(CHAT, json=big)
    assert_openai_error(resp, 401)


def test_unknown_path_and_wrong_method(gateway: RunningGateway) -> None:
    with gateway.client() as c:
        resp = c.post("/v1/nothing-here", json={})
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_url"
        resp = c.get(CHAT)
        assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


def test_health_and_readiness(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_every_refusal_leaves_exactly_one_audit_event(gateway: RunningGateway, tmp_path: Path) -> None:
    before = len(gateway.audit())
    ids = []
    with gateway.client() as c:
        for body in (b"{", b'{"model": "gtp"}', b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}]}'):
            ids.append(c.post(CHAT, content=body).headers["x-request-id"])
    events = gateway.audit()
    assert len(events) == before + 3
    assert [e["request_id"] for e in events[-3:]] == ids
