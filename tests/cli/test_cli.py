"""The `sluicegate` command: check, keys (create, list, revoke), audit tail and mock-upstream."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sluicegate.cli import main
from sluicegate.store.keys import KeyStore
from tests.conftest import free_port, run_gateway, wait_for

CHAT = "/v1/chat/completions"


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("SLUICEGATE_DATA_DIR", str(tmp_path / "data"))
    return CliRunner()


def test_check_reports_errors_with_paths(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "providers:\n  - name: o\n    type: openai\n    api_key: env://X\n"
        "models:\n  - name: gpt-4o\n    provider: o\n"
        "consumers:\n  - name: a\n    models: [gpt-4o]\n  - name: b\n    models: []\n"
        "  - name: c\n    models: [gtp-4o]\n"
    )
    result = runner.invoke(main, ["check", "--config", str(bad)])
    assert result.exit_code == 1
    assert "consumers[2].models[0] (line 14): unknown model 'gtp-4o'" in result.output
    assert "1 error(s)" in result.output
    good = tmp_path / "good.yaml"
    good.write_text(bad.read_text().replace("gtp-4o", "gpt-4o"))
    result = runner.invoke(main, ["check", "--config", str(good)])
    assert result.exit_code == 0, result.output
    assert "ok (1 providers, 1 models, 3 consumers)" in result.output
    assert runner.invoke(main, ["check", "--config", str(tmp_path / "none.yaml")]).exit_code == 1


def test_keys_lifecycle_through_the_gateway(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstream_url: str
) -> None:
    url = upstream_url
    with run_gateway(tmp_path, url, key_refresh_s=0.05) as gw:
        monkeypatch.setenv("SLUICEGATE_DATA_DIR", str(gw.data_dir))
        created = runner.invoke(
            main, ["keys", "create", "--consumer", "bob", "--name", "ci", "--config", str(gw.config_path)]
        )
        assert created.exit_code == 0, created.output
        key = created.stdout.strip().splitlines()[-1]
        assert key.startswith("sg-") and len(key) > 40
        # only the hash is stored
        with gw.app.engine.connect() as conn:
            dump = "\n".join(str(r) for r in conn.execute(sa.text("SELECT * FROM api_keys")))
        assert key not in dump and key[3:] not in dump
        listed = runner.invoke(main, ["keys", "list", "--consumer", "bob"])
        assert key not in listed.output and "active" in listed.output and " ci" in listed.output
        key_id = next(line.split()[0] for line in listed.output.splitlines() if line.endswith(" ci"))
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
        with httpx.Client(base_url=gw.url, headers=headers) as c:
            _eventually(lambda: c.post(CHAT, json=body).status_code == 200)
            assert runner.invoke(main, ["keys", "revoke", key_id]).exit_code == 0
            _eventually(lambda: c.post(CHAT, json=body).status_code == 401)
            resp = c.post(CHAT, json=body)
            assert resp.json()["error"]["code"] == "api_key_revoked"
            assert gw.last_audit()["key_id"] == key_id
        assert runner.invoke(main, ["keys", "revoke", key_id]).exit_code == 1
        # unknown consumer for this config
        bad = runner.invoke(main, ["keys", "create", "--consumer", "zed", "--config", str(gw.config_path)])
        assert bad.exit_code == 1 and "not in" in bad.output


def test_expired_key_is_refused(tmp_path: Path, upstream_url: str) -> None:
    url = upstream_url
    with run_gateway(tmp_path, url, key_refresh_s=0.05) as gw:
        key, _ = KeyStore(gw.app.engine).create("alice", expires_at=time.time() - 1)
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}) as c:
            _eventually(lambda: c.post(CHAT, json={}).status_code == 401 and "expired" in c.post(CHAT, json={}).text)


def test_audit_tail(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstream_url: str) -> None:
    url = upstream_url
    with run_gateway(tmp_path, url) as gw, gw.client() as c:
        ids = [
            c.post(CHAT, json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}).headers[
                "x-request-id"
            ]
            for _ in range(3)
        ]
        gw.audit()
    monkeypatch.setenv("SLUICEGATE_DATA_DIR", str(gw.data_dir))
    result = runner.invoke(main, ["audit", "tail", "-n", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [r["request_id"] for r in rows] == ids[1:]
    assert rows[0]["consumer"] == "alice" and rows[0]["total_tokens"] > 0
    table = runner.invoke(main, ["audit", "tail"]).output
    assert ids[0] in table and "allowed" in table


def _eventually(predicate: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_key_rotation_keeps_the_old_key_for_the_overlap(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstream_url: str
) -> None:
    url = upstream_url
    with run_gateway(tmp_path, url, key_refresh_s=0.05) as gw:
        monkeypatch.setenv("SLUICEGATE_DATA_DIR", str(gw.data_dir))
        old_key = gw.keys["bob"]
        old_id = next(r.id for r in KeyStore(gw.app.engine).list("bob"))
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}

        def status(key: str) -> int:
            with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}) as c:
                return c.post(CHAT, json=body).status_code

        rotated = runner.invoke(main, ["keys", "rotate", old_id, "--overlap-hours", "1"])
        assert rotated.exit_code == 0, rotated.output
        new_key = rotated.stdout.strip().splitlines()[-1]
        assert new_key != old_key
        _eventually(lambda: status(new_key) == 200)
        assert status(old_key) == 200  # inside the overlap both work
        # an overlap of zero ends the old key at once
        second = runner.invoke(main, ["keys", "rotate", old_id, "--overlap-hours", "0"])
        assert second.exit_code == 0
        _eventually(lambda: status(old_key) == 401)
        assert runner.invoke(main, ["keys", "rotate", "key_nope"]).exit_code == 1


def test_mock_upstream_paces_stream_events(runner: CliRunner) -> None:
    """`mock-upstream --chunk-interval-ms` sends a streamed answer's events that far apart; a
    negative interval is a usage error."""
    assert runner.invoke(main, ["mock-upstream", "--chunk-interval-ms", "-1"]).exit_code == 2
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluicegate.cli", "mock-upstream", "--port", str(port), "--chunk-interval-ms", "150"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        headers = {"Authorization": "Bearer sk-test"}
        wait_for(lambda: _answers(url + "/models", headers))
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "echo: one two three"}],
        }
        arrivals = []
        with httpx.stream("POST", url + "/chat/completions", json=body, headers=headers, timeout=10) as resp:
            for chunk in resp.iter_raw():
                arrivals.extend([time.monotonic()] * chunk.count(b"data:"))
        assert len(arrivals) >= 5  # role, three words, finish, usage, [DONE]
        # Paced, not fast: the fake sleeps 150 ms before each event after the first (a lower
        # bound the pacing guarantees, whatever the machine's load).
        assert arrivals[-1] - arrivals[0] >= 0.15 * (len(arrivals) - 1) * 0.9
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(url: str, headers: dict[str, str]) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
