"""`sluicegate serve` runs the egress proxy in each worker, and `sluicegate report shadow-ai`
lists what it blocked, intercepted and allowed, by source and host."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from click.testing import CliRunner

from sluicegate.cli import main
from sluicegate.settings import Settings
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import free_port, gateway_process
from tests.egress.conftest import OrgCA, egress_config

EGRESS = """\
port: {port}
gateway_url: https://llm.example.test/v1
source_networks: [127.0.0.0/8]
intercept: [api.openai.com]
allow: [allowed.test]
resolve: {{allowed.test: "{site}"}}
"""


def _report(data_dir: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    monkeypatch.setenv("SLUICEGATE_DATA_DIR", str(data_dir))
    result = CliRunner().invoke(main, ["report", "shadow-ai", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_serve_runs_the_proxy_and_the_report_lists_its_traffic(
    tmp_path: Path,
    upstream_url: str,
    upstream: FakeUpstream,
    test_ca: OrgCA,
    site: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    config = tmp_path / "sluicegate.yaml"
    config.write_text(egress_config(upstream_url, test_ca, EGRESS.format(port=port, site=site)))
    data_dir = tmp_path / "data"
    key = KeyStore(create_engine(Settings(data_dir=data_dir).db_url())).create("alice")[0]
    proxy = f"http://127.0.0.1:{port}"
    with gateway_process(data_dir, "--config", str(config), "--workers", "2"):
        with httpx.Client(proxy=proxy, verify=test_ca.context()) as http:
            client = openai.OpenAI(api_key=key, http_client=http, max_retries=0)
            for _ in range(2):
                answer = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: served"}]
                )
                assert answer.choices[0].message.content == "served"
            with pytest.raises(openai.APIConnectionError):
                openai.OpenAI(
                    base_url="https://api.anthropic.com/v1", api_key=key, http_client=http, max_retries=0
                ).models.list()
        with httpx.Client(proxy=proxy) as plain:
            assert plain.get("http://allowed.test/x").text == "site says /x"
        deadline = time.monotonic() + 10
        while True:
            data = orjson.loads(_report(data_dir, monkeypatch, "--json"))
            if data["totals"] == {"blocked": 1, "intercepted": 2, "allowed": 1, "denied": 0}:
                break
            assert time.monotonic() < deadline, data
            time.sleep(0.05)
    rows = {row["host"]: row for row in data["rows"]}
    assert rows["api.anthropic.com"]["blocked"] == 1 and rows["api.anthropic.com"]["source"] == "127.0.0.1"
    assert rows["api.openai.com"]["intercepted"] == 2 and rows["api.openai.com"]["consumer"] == "alice"
    assert rows["allowed.test"]["allowed"] == 1
    # The blocked host comes first; the table names the sources and hosts too.
    assert data["rows"][0]["host"] == "api.anthropic.com"
    table = _report(data_dir, monkeypatch, "--since", "1h")
    assert "api.anthropic.com" in table and "127.0.0.1" in table and "TOTAL" in table
    assert "api.openai.com" not in _report(data_dir, monkeypatch, "--since", "2020-01-01", "--until", "2020-01-02")
