"""`sluicegate serve --workers N` over real processes: the workers share the port, a dead one is
replaced, SIGHUP reloads every one, SIGTERM drains (`/readyz` 503 `draining` while calls are still
served) and stops them all; every call answered has its audit event."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from sluicegate.audit.reader import latest_events
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import BASE_CONFIG, GatewayProcess, gateway_process, wait_for


def _pids(gw: GatewayProcess, tries: int = 60) -> set[int]:
    """Worker pids seen on `/readyz`, one new connection each."""
    seen = set()
    for _ in range(tries):
        seen.add(httpx.get(gw.url + "/readyz", timeout=5).json()["pid"])
    return seen


def _chat(gw: GatewayProcess, key: str, model: str = "gpt-4o-mini") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def _setup(tmp_path: Path, upstream_url: str, extra: str = "") -> tuple[Path, Path, str]:
    config = tmp_path / "gw.yaml"
    config.write_text(BASE_CONFIG.format(upstream=upstream_url, read_s=5) + extra)
    data = tmp_path / "data"
    key, _ = KeyStore(create_engine(f"sqlite:///{data / 'sluicegate.db'}")).create("bob")
    return config, data, key


def test_workers_share_the_port_and_a_dead_one_is_replaced(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    config, data, key = _setup(tmp_path, upstream_url)
    with gateway_process(data, "--config", str(config), "--workers", "2") as gw:
        wait_for(lambda: len(_pids(gw, 20)) == 2, timeout=20)
        workers = _pids(gw)
        assert gw.proc.pid not in workers  # the supervisor serves nothing itself
        assert all(_chat(gw, key).status_code == 200 for _ in range(20))
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        # Replaced: two workers again, the dead one not among them; calls never stopped being served.
        wait_for(lambda: victim not in (seen := _pids(gw, 20)) and len(seen) == 2, timeout=20)
        assert all(_chat(gw, key).status_code == 200 for _ in range(10))
        assert gw.proc.poll() is None
    assert gw.proc.returncode == 0
    assert b"restarting it" in gw.output


def test_sighup_reloads_every_worker(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    config, data, key = _setup(tmp_path, upstream_url)
    with gateway_process(data, "--config", str(config), "--workers", "2") as gw:
        wait_for(lambda: len(_pids(gw, 20)) == 2, timeout=20)
        assert _chat(gw, key, "team-model").status_code == 403
        # Unchanged size and a fresh mtime aside, SIGHUP is what tells the workers.
        config.write_text(config.read_text().replace("models: [gpt-4o-mini]", "models: [team-model]"))
        gw.proc.send_signal(signal.SIGHUP)
        # Every worker took it: 30 calls over new connections, all allowed.
        wait_for(lambda: all(_chat(gw, key, "team-model").status_code == 200 for _ in range(30)), timeout=10)


def test_sigterm_drains_then_stops_every_worker_losing_no_audit_event(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    config, data, key = _setup(tmp_path, upstream_url, "server: {drain_s: 1.5}\n")
    answered = 0
    with gateway_process(data, "--config", str(config), "--workers", "2") as gw:
        wait_for(lambda: len(_pids(gw, 20)) == 2, timeout=20)
        workers = _pids(gw)
        stop = threading.Event()
        counts = [0]

        def load() -> None:
            while not stop.is_set():
                try:
                    if _chat(gw, key).status_code == 200:
                        counts[0] += 1
                except httpx.HTTPError:
                    return

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(0.3)
        gw.proc.send_signal(signal.SIGTERM)
        # Draining: not ready, still serving.
        wait_for(lambda: httpx.get(gw.url + "/readyz", timeout=5).status_code == 503, timeout=3)
        drained = httpx.get(gw.url + "/readyz", timeout=5).json()
        assert drained["status"] == "draining"
        assert _chat(gw, key).status_code == 200
        answered += 1
        code = gw.proc.wait(timeout=30)
        stop.set()
        thread.join(timeout=10)
        answered += counts[0]
    assert code == 0
    assert not any(_alive(pid) for pid in workers)
    events = latest_events(create_engine(f"sqlite:///{data / 'sluicegate.db'}"), 100_000)
    assert len([e for e in events if e["status"] == 200]) >= answered > 0
    # Each event names the worker that wrote it; both served.
    assert {e["instance"] for e in events} == {f"{socket.gethostname()}:{pid}" for pid in workers}


def test_the_workers_go_when_the_supervisor_is_killed(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    config, data, _ = _setup(tmp_path, upstream_url)
    with gateway_process(data, "--config", str(config), "--workers", "2") as gw:
        wait_for(lambda: len(_pids(gw, 20)) == 2, timeout=20)
        workers = _pids(gw)
        gw.proc.kill()
        gw.proc.wait()
        wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=30)


def test_demo_mode_runs_one_worker(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sluicegate.cli import main

    result = CliRunner().invoke(
        main, ["serve", "--workers", "2", "--port", "0"], env={"SLUICEGATE_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code != 0
    assert "demo mode runs one worker" in result.output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by anyone) is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
