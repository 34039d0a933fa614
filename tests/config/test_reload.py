"""Config changes swap in whole while serving; an invalid change is refused and the old config serves."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import BASE_CONFIG, CANARY_KEY, run_gateway

CHAT = "/v1/chat/completions"


def _wait(predicate: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _chat(c: httpx.Client, model: str) -> httpx.Response:
    return c.post(CHAT, json={"model": model, "messages": [{"role": "user", "content": "x"}]})


def test_file_change_is_applied_and_a_bad_one_refused(tmp_path: Path, upstream: FakeUpstream) -> None:
    url = os.environ["SLUICEGATE_TEST_UPSTREAM"]
    with run_gateway(tmp_path, url, watch_interval_s=0.05) as gw, gw.client("bob") as c:
        assert _chat(c, "team-model").status_code == 403
        # bob may now use team-model
        text = gw.config_path.read_text().replace("models: [gpt-4o-mini]", "models: [gpt-4o-mini, team-model]")
        gw.config_path.write_text(text)
        _wait(lambda: gw.app.reloads == 1)
        assert _chat(c, "team-model").status_code == 200
        # a broken config is refused whole: the previous one keeps serving
        gw.config_path.write_text(text.replace("provider: mock\n", "provider: nowhere\n", 1) + "\n# v3\n")
        _wait(lambda: gw.app.last_reload_error is not None)
        assert "models[0].provider" in gw.app.last_reload_error  # type: ignore[operator]
        assert gw.app.reloads == 1
        assert _chat(c, "team-model").status_code == 200
        assert _chat(c, "gpt-4o-mini").status_code == 200


def test_sighup_reloads(tmp_path: Path, upstream: FakeUpstream) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(BASE_CONFIG.format(upstream=os.environ["SLUICEGATE_TEST_UPSTREAM"], read_s=5))
    data = tmp_path / "data"
    key, _ = KeyStore(create_engine(f"sqlite:///{data / 'sluicegate.db'}")).create("bob")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SLUICEGATE_DATA_DIR": str(data), "TEST_UPSTREAM_KEY": CANARY_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluicegate.cli", "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: _ready(base), 15)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
            assert _chat(c, "team-model").status_code == 403
            # same size and mtime granularity do not matter: SIGHUP reloads unconditionally
            config.write_text(config.read_text().replace("models: [gpt-4o-mini]", "models: [team-model]"))
            proc.send_signal(signal.SIGHUP)
            _wait(lambda: _chat(c, "team-model").status_code == 200)
            assert _chat(c, "gpt-4o-mini").status_code == 403
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert b"reloaded" in output


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
