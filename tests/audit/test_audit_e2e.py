"""Audit through the running gateway: strict mode, readiness, and the flush on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from sluicegate.audit.reader import latest_events
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import BASE_CONFIG, CANARY_KEY, assert_openai_error, run_gateway

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _break_store(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_events RENAME TO audit_events_away"))


def _repair_store(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_events_away RENAME TO audit_events"))


def _wait(predicate: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_strict_mode_refuses_calls_while_the_audit_store_fails(tmp_path: Path, upstream: FakeUpstream) -> None:
    extra = "audit:\n  on_failure: refuse\n  retry_s: 0.05\n  flush_interval_s: 0\n"
    with run_gateway(tmp_path, _upstream_url(upstream), extra) as gw, gw.client() as c:
        assert c.post(CHAT, json=BODY).status_code == 200
        gw.audit()
        _break_store(gw.app.engine)
        c.post(CHAT, json=BODY)  # its event cannot be written: the writer turns unhealthy
        _wait(lambda: not gw.app.audit.healthy)
        calls = upstream.calls
        resp = c.post(CHAT, json=BODY)
        assert_openai_error(resp, 503, "audit_unavailable")
        assert upstream.calls == calls
        assert httpx.get(gw.url + "/readyz").status_code == 503
        _repair_store(gw.app.engine)
        _wait(lambda: gw.app.audit.healthy)
        assert c.post(CHAT, json=BODY).status_code == 200
        # every call, refused ones included, has its event once the store is back
        assert len(gw.audit()) == 4


def _upstream_url(upstream: FakeUpstream) -> str:
    # set by the conftest fixture that started the session's fake upstream
    return os.environ["SLUICEGATE_TEST_UPSTREAM"]


def test_sigterm_flushes_every_audit_event(tmp_path: Path, upstream: FakeUpstream) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(BASE_CONFIG.format(upstream=_upstream_url(upstream), read_s=5))
    data = tmp_path / "data"
    engine = create_engine(f"sqlite:///{data / 'sluicegate.db'}")
    key, _ = KeyStore(engine).create("alice")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SLUICEGATE_DATA_DIR": str(data), "TEST_UPSTREAM_KEY": CANARY_KEY}
    # a long flush interval: events sit in the queue until shutdown drains them
    config.write_text(config.read_text() + "audit:\n  flush_interval_s: 5\n  batch_size: 10000\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluicegate.cli", "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: _ready(url), timeout=15)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            ids = [c.post(CHAT, json=BODY).headers["x-request-id"] for _ in range(30)]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    # uvicorn re-raises the signal once shutdown is complete: -SIGTERM is a clean exit here
    assert proc.returncode in (0, -signal.SIGTERM), output.decode()
    assert b"Application shutdown complete" in output
    events = latest_events(engine, 100)
    assert sorted(e["request_id"] for e in events if e["endpoint"] == "chat") == sorted(ids)
    assert CANARY_KEY.encode() not in output and key.encode() not in output


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
