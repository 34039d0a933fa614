"""Audit through the running gateway: strict mode, readiness, and the flush on SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import sqlalchemy as sa

from sluicegate.audit.reader import latest_events
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import BASE_CONFIG, CANARY_KEY, assert_openai_error, gateway_process, run_gateway, wait_for

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _break_store(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_events RENAME TO audit_events_away"))


def _repair_store(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_events_away RENAME TO audit_events"))


def test_strict_mode_refuses_calls_while_the_audit_store_fails(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    extra = "audit:\n  on_failure: refuse\n  retry_s: 0.05\n  flush_interval_s: 0\n"
    with run_gateway(tmp_path, upstream_url, extra) as gw, gw.client() as c:
        assert c.post(CHAT, json=BODY).status_code == 200
        gw.audit()
        _break_store(gw.app.engine)
        c.post(CHAT, json=BODY)  # its event cannot be written: the writer turns unhealthy
        wait_for(lambda: not gw.app.audit.healthy)
        calls = upstream.calls
        resp = c.post(CHAT, json=BODY)
        assert_openai_error(resp, 503, "audit_unavailable")
        assert upstream.calls == calls
        assert httpx.get(gw.url + "/readyz").status_code == 503
        _repair_store(gw.app.engine)
        wait_for(lambda: gw.app.audit.healthy)
        assert c.post(CHAT, json=BODY).status_code == 200
        # every call, refused ones included, has its event once the store is back
        assert len(gw.audit()) == 4


def test_sigterm_flushes_every_audit_event(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    config = tmp_path / "gw.yaml"
    # a long flush interval: events sit in the queue until shutdown drains them
    config.write_text(
        BASE_CONFIG.format(upstream=upstream_url, read_s=5) + "audit:\n  flush_interval_s: 5\n  batch_size: 10000\n"
    )
    data = tmp_path / "data"
    engine = create_engine(f"sqlite:///{data / 'sluicegate.db'}")
    key, _ = KeyStore(engine).create("alice")
    with gateway_process(data, "--config", str(config)) as gw:
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}) as c:
            ids = [c.post(CHAT, json=BODY).headers["x-request-id"] for _ in range(30)]
        code = gw.stop(signal.SIGTERM)
    # uvicorn re-raises the signal once shutdown is complete: -SIGTERM is a clean exit here
    assert code in (0, -signal.SIGTERM), gw.output.decode()
    assert b"Application shutdown complete" in gw.output
    events = latest_events(engine, 100)
    assert sorted(e["request_id"] for e in events if e["endpoint"] == "chat") == sorted(ids)
    assert CANARY_KEY.encode() not in gw.output and key.encode() not in gw.output
