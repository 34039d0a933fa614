"""A real `sluicegate serve` killed or stopped at the worst time: no answered call loses its event."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import orjson
import sqlalchemy as sa

from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import BASE_CONFIG, CANARY_KEY, gateway_process, wait_for

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _setup(tmp_path: Path, upstream_url: str, audit: str) -> tuple[Path, Path, sa.Engine, str]:
    config = tmp_path / "gw.yaml"
    config.write_text(BASE_CONFIG.format(upstream=upstream_url, read_s=5) + audit)
    data = tmp_path / "data"
    engine = create_engine(f"sqlite:///{data / 'sluicegate.db'}")
    key, _ = KeyStore(engine).create("alice")
    return config, data, engine, key


def _stored(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT request_id FROM audit_events")).scalars())


def _rename(engine: sa.Engine, old: str, new: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


def test_kill_9_under_load_loses_no_event_of_an_answered_call(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    config, data, engine, key = _setup(tmp_path, upstream_url, "audit:\n  durability: before_response\n")
    answered: list[str] = []
    stop = threading.Event()

    def client(stream: bool) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as c:
            while not stop.is_set():
                try:
                    with c.stream("POST", url + CHAT, json={**BODY, "stream": stream}) as resp:
                        body = resp.read()  # the whole response, chunked end included, or an error
                except httpx.HTTPError:
                    return
                if resp.status_code == 200 and (not stream or body.rstrip().endswith(b"data: [DONE]")):
                    answered.append(resp.headers["x-request-id"])

    with gateway_process(data, "--config", str(config)) as gw:
        url = gw.url
        threads = [threading.Thread(target=client, args=(i % 2 == 1,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(answered) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        gw.proc.kill()  # SIGKILL, mid-load: no shutdown, no flush
        gw.proc.wait()
        stop.set()
        for t in threads:
            t.join()
    assert len(answered) >= 300
    # A restart replays whatever went to the spill file; then every answered call has its event.
    with gateway_process(data, "--config", str(config)):
        pass
    missing = set(answered) - _stored(engine)
    assert not missing, f"{len(missing)} of {len(answered)} answered calls have no audit event"


def test_sigterm_while_the_store_is_down_spills_every_event_and_the_next_start_replays_them(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    config, data, engine, key = _setup(tmp_path, upstream_url, "audit:\n  flush_interval_s: 0.01\n  retry_s: 0.05\n")
    with gateway_process(data, "--config", str(config)) as gw:
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}) as c:
            first = c.post(CHAT, json=BODY).headers["x-request-id"]
            wait_for(lambda: first in _stored(engine))
            _rename(engine, "audit_events", "audit_events_away")  # the store fails from now on
            ids = [c.post(CHAT, json={**BODY, "stream": i % 2 == 1}).headers["x-request-id"] for i in range(20)]
        code = gw.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM), gw.output.decode()
    # one clear line: how many events, and where
    assert b"AUDIT EVENTS SPILLED: 20 events" in gw.output
    assert str(data / "audit-spill*.jsonl").encode() in gw.output
    spilled = b"".join(path.read_bytes() for path in data.glob("audit-spill*.jsonl"))
    assert sorted(orjson.loads(line)["request_id"] for line in spilled.splitlines()) == sorted(ids)
    assert CANARY_KEY.encode() not in spilled and key.encode() not in spilled
    _rename(engine, "audit_events_away", "audit_events")
    with gateway_process(data, "--config", str(config)) as again:  # ready only after the replay
        assert set(ids) <= _stored(engine)
        again.stop()
    assert b"replayed 20 audit events" in again.output
    assert not list(data.glob("audit-spill*"))
