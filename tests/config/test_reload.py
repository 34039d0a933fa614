"""Config changes swap in whole while serving; an invalid change is refused and the old config serves."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import BASE_CONFIG, gateway_process, run_gateway, wait_for

CHAT = "/v1/chat/completions"


def _chat(c: httpx.Client, model: str) -> httpx.Response:
    return c.post(CHAT, json={"model": model, "messages": [{"role": "user", "content": "x"}]})


def test_file_change_is_applied_and_a_bad_one_refused(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    url = upstream_url
    with run_gateway(tmp_path, url, watch_interval_s=0.05) as gw, gw.client("bob") as c:
        assert _chat(c, "team-model").status_code == 403
        # bob may now use team-model
        text = gw.config_path.read_text().replace("models: [gpt-4o-mini]", "models: [gpt-4o-mini, team-model]")
        gw.config_path.write_text(text)
        wait_for(lambda: gw.app.reloads == 1)
        assert _chat(c, "team-model").status_code == 200
        # a broken config is refused whole: the previous one keeps serving
        gw.config_path.write_text(text.replace("provider: mock\n", "provider: nowhere\n", 1) + "\n# v3\n")
        wait_for(lambda: gw.app.last_reload_error is not None)
        assert "models[0].provider" in gw.app.last_reload_error  # type: ignore[operator]
        assert gw.app.reloads == 1
        assert _chat(c, "team-model").status_code == 200
        assert _chat(c, "gpt-4o-mini").status_code == 200


def test_sighup_reloads(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(BASE_CONFIG.format(upstream=upstream_url, read_s=5))
    data = tmp_path / "data"
    key, _ = KeyStore(create_engine(f"sqlite:///{data / 'sluicegate.db'}")).create("bob")
    with (
        gateway_process(data, "--config", str(config)) as gw,
        httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}) as c,
    ):
        assert _chat(c, "team-model").status_code == 403
        config.write_text(config.read_text().replace("models: [gpt-4o-mini]", "models: [team-model]"))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _chat(c, "team-model").status_code == 200)
        assert _chat(c, "gpt-4o-mini").status_code == 403
    assert b"reloaded" in gw.output
