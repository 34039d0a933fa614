"""Seeing spend: budget alerts (log, audit, webhook) when a threshold is crossed, the
reconciliation of counters with the audit trail (the ledger wins), and `sluicegate spend`."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from sluicegate.cli import main
from sluicegate.testing import FakeUpstream, serve_in_thread
from sluicegate.testing.wire import read_body
from tests.conftest import wait_for
from tests.limits.test_limits_e2e import CALL_COST, COMPLETION, _many, fixed, limited_gateway


class Hook:
    """A webhook receiver on loopback: keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if body is None:
            return
        self.bodies.append(orjson.loads(body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_alerts_fire_once_per_threshold_crossed(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    fixed(upstream)
    hook = Hook()
    with serve_in_thread(hook) as hook_url:  # type: ignore[arg-type]
        limits = f"""\
  alerts: {{webhook: "{hook_url}/alerts"}}
  budgets:
    - {{name: team, scope: consumer, amount: {10 * CALL_COST / 1e6}, window: day, alerts: [50, 80, 100]}}
"""
        with limited_gateway(tmp_path, upstream_url, limits) as gw, caplog.at_level(logging.WARNING):
            for _ in range(4):
                assert asyncio.run(_many(gw, 1))[0].status_code == 200
            assert not hook.bodies  # 40 %
            assert asyncio.run(_many(gw, 1))[0].status_code == 200  # 50 %
            wait_for(lambda: len(hook.bodies) == 1)
            assert all(r.status_code == 200 for r in asyncio.run(_many(gw, 5)))  # 100 %, 80 % on the way
            wait_for(lambda: len(hook.bodies) == 3)
            assert [b["threshold_pct"] for b in hook.bodies] == [50, 80, 100]
            first = hook.bodies[0]
            assert first["budget"] == "team" and first["scope"] == "consumer" and first["value"] == "alice"
            assert first["used_micro"] == 5 * CALL_COST and first["limit_micro"] == 10 * CALL_COST
            alerts = [e for e in gw.audit() if e["outcome"] == "budget_alert"]
            assert len(alerts) == 3
            assert alerts[0]["rule"] == "limits.budgets.team" and alerts[0]["consumer"] == "alice"
            assert sum("reached 80%" in r.getMessage() for r in caplog.records) == 1


def test_the_ledger_wins_over_a_counter_that_drifted(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    fixed(upstream)
    limits = """\
  reconcile_interval_s: 0
  budgets:
    - {name: monthly, scope: consumer, amount: 1, window: month}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw:
        assert all(r.status_code == 200 for r in asyncio.run(_many(gw, 3)))
        service = gw.app.services.limits
        memory = service.memory
        [(key, level)] = asyncio.run(memory.buckets("b:monthly:consumer=alice:")).items()
        assert level.used == 3 * CALL_COST
        asyncio.run(memory.adjust(key, 500, 60))  # the counter drifts from the trail
        reconcile = service.reconciler
        assert reconcile is not None
        with caplog.at_level(logging.WARNING):
            asyncio.run(reconcile())
            assert service.drift == 500
            assert asyncio.run(memory.levels([(key,)]))[0].used == 3 * CALL_COST + 500  # seen once: reported
            asyncio.run(reconcile())
        assert asyncio.run(memory.levels([(key,)]))[0].used == 3 * CALL_COST  # seen twice: corrected
        assert any("drift +500" in r.getMessage() for r in caplog.records)
        asyncio.run(reconcile())
        assert service.drift == 0


def test_spend_by_consumer_and_budget_state(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed(upstream)
    limits = f"""\
  budgets:
    - {{name: per-consumer, scope: consumer, amount: 1, window: month, timezone: Europe/Paris}}
    - {{name: everyone, scope: gateway, amount: {100 * CALL_COST / 1e6}, window: day}}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw:
        assert all(r.status_code == 200 for r in asyncio.run(_many(gw, 4)))
        gw.audit()
        monkeypatch.setenv("SLUICEGATE_DATA_DIR", str(gw.data_dir))
        runner = CliRunner()
        result = runner.invoke(main, ["spend", "--json", "--config", str(gw.config_path)])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        [row] = [r for r in report["rows"] if r["name"] == "alice"]
        assert row["calls"] == 4 and row["cost_micro"] == 4 * CALL_COST
        assert row["completion_tokens"] == 4 * COMPLETION
        states = {(b["budget"], b["value"]): b for b in report["budgets"]}
        mine = states[("per-consumer", "alice")]
        assert mine["used_micro"] == 4 * CALL_COST
        assert mine["remaining_micro"] == 1_000_000 - 4 * CALL_COST
        assert mine["reserved_micro"] is None  # in-process counters live in the gateway
        assert states[("everyone", "*")]["remaining_micro"] == 96 * CALL_COST
        table = runner.invoke(main, ["spend", "--by", "model", "--config", str(gw.config_path)])
        assert table.exit_code == 0, table.output
        assert "budgeted" in table.output and f"{4 * CALL_COST / 1e6:.6f}" in table.output
        assert "per-consumer" in table.output
        bad = runner.invoke(main, ["spend", "--since", "yesterday"])
        assert bad.exit_code != 0 and "ISO 8601" in bad.output


def test_a_caller_reads_its_own_spend_and_limits(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    fixed(upstream)
    limits = """\
  budgets:
    - {name: mine, scope: consumer, amount: 1, window: month}
    - {name: bobs, scope: consumer, match: [bob], amount: 1, window: month}
    - {name: per-model, scope: model, amount: 1, window: day}
  rate_limits:
    - {name: rpm, scope: key, requests: 100, window: minute}
"""
    with limited_gateway(tmp_path, upstream_url, limits) as gw:
        assert all(r.status_code == 200 for r in asyncio.run(_many(gw, 3)))
        gw.audit()
        with gw.client() as client:
            resp = client.get("/v1/spend")
            assert resp.status_code == 200, resp.text
            view = resp.json()
            assert view["consumer"] == "alice" and view["period"]["name"] == "month"
            assert view["spend"]["calls"] == 3 and view["spend"]["cost_micro"] == 3 * CALL_COST
            by_name = {entry["name"]: entry for entry in view["limits"]}
            assert set(by_name) == {"mine", "rpm"}  # not bob's, not the per-model one
            assert by_name["mine"]["used"] == 3 * CALL_COST and by_name["mine"]["reserved"] == 0
            assert by_name["mine"]["remaining"] == 1_000_000 - 3 * CALL_COST
            assert by_name["rpm"]["used"] == 3 and by_name["rpm"]["window"] == "1m"
            assert client.get("/v1/spend?period=day").json()["period"]["name"] == "day"
            bad = client.get("/v1/spend?period=year")
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "period"
            assert client.post("/v1/spend").status_code == 405
        with gw.client("bob") as bob:
            assert bob.get("/v1/spend").json()["spend"]["calls"] == 0
        with gw.client(None) as anonymous:
            assert anonymous.get("/v1/spend").status_code == 401
