"""Secret hygiene: the provider key and consumer keys appear in no response, log line or audit record."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import CANARY_KEY, RunningGateway

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_canary_keys_appear_nowhere(
    gateway: RunningGateway, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        with gateway.client() as c:
            for reply in (
                Reply(),
                Reply(status=400, error_message=f"bad request quoting {CANARY_KEY}"),
                Reply(status=500, error_message=f"crash {CANARY_KEY}"),
                Reply(status=429, error_message=f"slow down {CANARY_KEY}"),
                Reply(fault="reset"),
            ):
                upstream.enqueue(reply)
                resp = c.post(CHAT, json=BODY)
                seen.append(resp.text + str(resp.headers))
            upstream.enqueue(Reply(content="a b c d", fault="reset", chunks_before_fault=1))
            seen.append(c.post(CHAT, json={**BODY, "stream": True}).text)
            seen.append(c.get("/v1/models").text)
            seen.append(c.post(CHAT, content=b"{").text)
        upstream.required_key = "sk-other"
        try:
            with gateway.client() as c:
                seen.append(c.post(CHAT, json=BODY).text)
        finally:
            upstream.required_key = CANARY_KEY
        gateway.audit()
    with gateway.app.engine.connect() as conn:
        audit_rows = [str(r) for r in conn.execute(sa.text("SELECT * FROM audit_events"))]
        key_rows = [str(r) for r in conn.execute(sa.text("SELECT * FROM api_keys"))]
    everything = "\n".join(seen + audit_rows + key_rows + [caplog.text])
    # the upstream's own message is relayed for 400/429/500, but with the key scrubbed
    assert "[redacted]" in everything
    assert CANARY_KEY not in everything
    assert CANARY_KEY[:12] not in everything
    for key in gateway.keys.values():
        assert key not in everything
        assert key[3:20] not in everything
