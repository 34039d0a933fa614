"""404 and 405: a request id, the client's error shape, and an audit event naming the caller when
its key is valid; without one, aggregated per source so a scanner cannot flood the audit."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from sluicegate.testing import FakeUpstream
from tests.conftest import RunningGateway, assert_openai_error, run_gateway, wait_for


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "allow"),
    [
        ("POST", "/v1/nothing-here", 404, "unknown_url", None),
        ("GET", "/v1/chat/completions", 405, "method_not_allowed", "POST"),
        ("DELETE", "/v1/models", 405, "method_not_allowed", "GET"),
        ("POST", "/healthz", 405, "method_not_allowed", "GET, HEAD"),
    ],
    ids=["unknown", "get-chat", "delete-models", "post-healthz"],
)
def test_answers_carry_a_request_id_and_are_audited_with_the_caller(
    gateway: RunningGateway, upstream: FakeUpstream, method: str, path: str, status: int, code: str, allow: str | None
) -> None:
    with gateway.client("bob") as c:
        resp = c.request(method, path)
    assert_openai_error(resp, status, code)
    assert resp.headers.get("allow") == allow
    event = gateway.last_audit()
    assert event["request_id"] == resp.headers["x-request-id"]
    assert event["status"] == status and event["outcome"] == code
    assert event["consumer"] == "bob" and event["key_id"] and event["key_id"].startswith("key_")
    assert upstream.calls == 0


def test_anthropic_clients_get_their_error_shape(gateway: RunningGateway) -> None:
    headers = {"x-api-key": gateway.keys["alice"], "anthropic-version": "2023-06-01"}
    resp = httpx.post(gateway.url + "/v1/messages/batches", headers=headers, json={})
    assert resp.status_code == 404 and resp.headers["x-request-id"].startswith("req_")
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    resp = httpx.get(gateway.url + "/v1/messages", headers=headers)
    assert resp.status_code == 405 and resp.json()["type"] == "error" and resp.headers["allow"] == "POST"
    # Control characters in a path do not reach the message or the audit.
    resp = httpx.get(gateway.url + "/v1/%0aforged%0d")
    assert "\n" not in resp.json()["error"]["message"]


def test_unauthenticated_scans_are_aggregated(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    extra = "audit:\n  auth_failures_per_window: 3\n  auth_failure_window_s: 0.3\n"
    with run_gateway(tmp_path, upstream_url, extra) as gw:
        with httpx.Client(base_url=gw.url) as c:
            for i in range(40):
                resp = c.get(f"/wp-admin/{i}.php", headers={"Authorization": "Bearer sg-guess"} if i % 2 else {})
                assert resp.status_code == 404 and resp.headers["x-request-id"]
        time.sleep(0.35)
        with gw.client() as c:  # the next audited call closes the window
            assert c.get("/v1/models").status_code == 200
        wait_for(lambda: any(e["outcome"] == "unknown_urls_aggregated" for e in gw.audit()))
        events = gw.audit()
        single = [e for e in events if e["outcome"] == "unknown_url"]
        [summary] = [e for e in events if e["outcome"] == "unknown_urls_aggregated"]
        assert len(single) == 3 and all(e["consumer"] is None for e in single)
        assert summary["total_tokens"] == 37 and summary["client_ip"] == "127.0.0.1" and summary["status"] == 404
