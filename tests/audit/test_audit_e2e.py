"""Audit through the running gateway: strict mode, readiness, and the flush on SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import sqlalchemy as sa

from sluicegate.app import Gateway
from sluicegate.audit.reader import latest_events
from sluicegate.config.loader import load_config
from sluicegate.settings import Settings
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream, serve_in_thread
from sluicegate.types import Message, Receive, Scope, Send
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


class _LastByteProbe:
    """Serves the gateway and notes, at each response's last body message, how many audit
    events the writer had been handed by then."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.handed: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.gateway(scope, receive, send)
            return

        async def probe(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                writer = self.gateway.audit
                self.handed.append(writer.pending + writer.written)
            await send(message)

        await self.gateway(scope, receive, probe)


def test_an_answered_call_has_its_event_queued(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    # With the default durability the event is queued (not yet committed) before the response's
    # last byte: a client holding the whole answer never finds the gateway without its record.
    config_path = tmp_path / "sluicegate.yaml"
    config_path.write_text(BASE_CONFIG.format(upstream=upstream_url, read_s=5))
    settings = Settings(data_dir=tmp_path / "data")
    engine = create_engine(settings.db_url())
    key, _ = KeyStore(engine).create("alice")
    gateway = Gateway(load_config(config_path), settings=settings, engine=engine)
    probe = _LastByteProbe(gateway)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    requests = [body, {**body, "stream": True}, {**body, "model": "no-such-model"}, {**body, "messages": "x"}]
    with serve_in_thread(probe) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
        for request in requests:
            assert c.post("/v1/chat/completions", json=request).status_code in (200, 400, 404)
        assert c.get("/v1/models").status_code == 200
        assert c.get("/v1/no-such-path").status_code == 404
    assert probe.handed == [1, 2, 3, 4, 5, 6]
