"""Replay of a history written through the real `AuditWriter` into a real SQLite store, with
timestamps chosen so that windows are known: per-minute rate limits, a time window, a source
range, a month's budget that began before the period, and guards with no content to read."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from sluicegate.audit.events import AuditEvent
from sluicegate.audit.writer import AuditWriter
from sluicegate.cli import main
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore

#: a Saturday, on a minute's boundary (UTC)
SATURDAY = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC).timestamp()
PERIOD = ["--since", "2026-11-28T00:00", "--until", "2026-11-29T00:00"]

NEW = """\
providers:
  - {name: mock, type: openai_compatible, base_url: "http://127.0.0.1:9/v1"}
models:
  - {name: m, provider: mock, price: {input: 1, output: 1}}
consumers:
  - {name: carol, models: [m], guards: [no-codenames]}
  - {name: dave, models: [m], source_ips: [10.0.0.0/8]}
  - {name: erin, models: [m], time_windows: ["Mon-Fri 09:00-17:00"]}
  - {name: frank, models: [m]}
  - {name: newbie, models: [m]}
  - {name: gina, models: [m], max_tokens: 100}
guards:
  - {name: no-codenames, kind: regex, settings: {deny: ["codename-\\\\w+"]}}
limits:
  budgets:
    - {name: frank-month, scope: consumer, match: [frank], amount: 1.0, window: month}
  rate_limits:
    - {name: rpm, scope: consumer, match: [carol], requests: 2, window: minute}
"""


def call(n: int, who: str | None, ts: float, tokens: int = 10, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "request_id": f"req_{n}",
        "ts": ts,
        "endpoint": "chat",
        "consumer": who,
        "key_id": f"key_{who}",
        "client_ip": "127.0.0.1",
        "model_requested": "m",
        "model_served": "m",
        "provider": "mock",
        "status": 200,
        "upstream_status": 200,
        "decision": "allowed",
        "outcome": "ok",
        "prompt_tokens": tokens,
        "completion_tokens": tokens,
        "total_tokens": 2 * tokens,
        "usage_source": "upstream",
        "cost_micro_usd": 2 * tokens,
        "latency_ms": 5.0,
    }
    values.update(fields)
    return AuditEvent(**values)


def captured(max_tokens: int) -> str:
    """An event's `content` as the audit stage writes it: the request and the answer as JSON text."""
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}]}
    return orjson.dumps({"request": orjson.dumps(request).decode(), "response": orjson.dumps(answer).decode()}).decode()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("store")
    engine = create_engine(f"sqlite:///{data / 'sluicegate.db'}")
    newbie = KeyStore(engine).create("newbie")[1].id
    writer = AuditWriter(engine, batch_size=100, flush_interval_s=0.01)
    writer.start()
    events = [
        # frank spent 0.9 of his month the day before the period
        call(0, "frank", SATURDAY - 86400, tokens=450_000),
        # carol: three calls in one minute, three in the next
        *(call(1 + i, "carol", SATURDAY + 1 + i) for i in range(3)),
        *(call(4 + i, "carol", SATURDAY + 61 + i) for i in range(3)),
        call(7, "dave", SATURDAY + 5),
        call(8, "erin", SATURDAY + 6),
        # 0.2 at the new price: no longer fits in frank's month
        call(9, "frank", SATURDAY + 7, tokens=100_000),
        # blocked by a guard (no content kept): the new guards have nothing to read
        call(
            11,
            "carol",
            SATURDAY + 200,
            status=400,
            decision="blocked",
            outcome="content_blocked",
            rule="guards.no-codenames",
            prompt_tokens=None,
            completion_tokens=None,
            cost_micro_usd=None,
        ),
        # refused then by a rule the new config drops, and now by another
        call(
            12,
            "dave",
            SATURDAY + 9,
            status=403,
            decision="denied",
            outcome="model_not_allowed",
            rule="consumers.dave.models",
            prompt_tokens=None,
            completion_tokens=None,
            cost_micro_usd=None,
        ),
        # a consumer the new config no longer has, and one mapped from a token's groups
        call(13, "gone", SATURDAY + 10),
        call(14, "jwt:corp:u1", SATURDAY + 11, key_id="jwt:corp"),
        # a key whose consumer was not configured then (the audit names the key, not the consumer)
        call(
            15,
            None,
            SATURDAY + 12,
            key_id=newbie,
            status=403,
            decision="denied",
            outcome="consumer_not_configured",
            model_requested="m",
            prompt_tokens=None,
            completion_tokens=None,
            cost_micro_usd=None,
        ),
        # captured: asked for 500 output tokens, then 50 (the new rule allows 100)
        call(16, "gina", SATURDAY + 13, content=captured(500)),
        call(17, "gina", SATURDAY + 14, content=captured(50)),
        # refused for a bad body: not a policy decision
        call(10, "carol", SATURDAY + 8, status=400, decision="rejected", outcome="invalid_json"),
    ]
    for e in events:
        writer.submit(e)
    assert writer.wait_idle(10)
    writer.close()
    (data / "new.yaml").write_text(NEW)
    return data


def replay(store: Path, *args: str) -> Any:
    return CliRunner().invoke(
        main,
        ["policy", "replay", "--config", str(store / "new.yaml"), *PERIOD, *args],
        env={"SLUICEGATE_DATA_DIR": str(store), "SLUICEGATE_DATABASE_URL": ""},
    )


@pytest.fixture(scope="module")
def report(store: Path) -> dict[str, Any]:
    result = replay(store, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = orjson.loads(result.output)
    return data


def by_consumer(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["consumer"]: t for t in report["consumers"]}


def test_a_rate_limit_refuses_past_its_count_in_each_minute(report: dict[str, Any]) -> None:
    refused = [
        c["request_id"] for c in report["changes"] if c["change"] == "newly_refused" and c["consumer"] == "carol"
    ]
    assert refused == ["req_3", "req_6"]
    assert by_consumer(report)["carol"]["newly_refused_by"] == {"limits.rate_limits.rpm.requests": 2}


def test_source_and_time_window_rules_read_the_recorded_address_and_time(report: dict[str, Any]) -> None:
    tallies = by_consumer(report)
    assert tallies["dave"]["newly_refused_by"] == {"consumers.dave.source_ips": 1}
    assert tallies["erin"]["newly_refused_by"] == {"consumers.erin.time_windows": 1}


def test_a_budget_begun_before_the_period_carries_its_recorded_spend(report: dict[str, Any]) -> None:
    frank = by_consumer(report)["frank"]
    assert frank["calls"] == 1  # the earlier call is outside the period
    assert frank["newly_refused_by"] == {"limits.budgets.frank-month": 1}
    assert frank["spend_new_micro"] == 0


def test_guards_with_no_content_to_read_are_reported_not_evaluated(report: dict[str, Any]) -> None:
    carol = by_consumer(report)["carol"]
    # Only the calls that got past the rate limit reach the guards.
    assert carol["not_evaluated"] == {
        "guardrails: no content captured": 5,
        "blocked by a guard then; no content to run the new guards on": 1,
    }
    assert carol["newly_allowed"] == 0
    assert report["skipped"] == {"not a policy decision (a malformed request, a policy store down)": 1}


def test_the_consumer_filter_and_the_table(store: Path) -> None:
    result = replay(store, "--consumer", "carol")
    assert result.exit_code == 0, result.output
    assert "replay of 7 recorded call(s)" in result.output
    assert "newly refused by limits.rate_limits.rpm.requests: 2" in result.output
    assert "not evaluated: guardrails: no content captured: 5" in result.output
    assert "dave" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "'yesterday' is neither a time ago"),
        (["--since", "1d", "--until", "2d"], "--since must be before --until"),
    ],
    ids=["bad-since", "since-after-until"],
)
def test_bad_times_are_one_line_errors(store: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        main,
        ["policy", "replay", "--config", str(store / "new.yaml"), *args],
        env={"SLUICEGATE_DATA_DIR": str(store), "SLUICEGATE_DATABASE_URL": ""},
    )
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_broken_config_is_a_one_line_error(store: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("consumers:\n  - name: x\n    models: [nope]\n    colour: blue\n")
    result = CliRunner().invoke(
        main,
        ["policy", "replay", "--config", str(broken), "--since", "7d"],
        env={"SLUICEGATE_DATA_DIR": str(store), "SLUICEGATE_DATABASE_URL": ""},
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: invalid config {broken}:"), result.output


def test_no_store_is_a_one_line_error(tmp_path: Path, store: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["policy", "replay", "--config", str(store / "new.yaml"), "--since", "7d"],
        env={"SLUICEGATE_DATA_DIR": str(tmp_path / "none"), "SLUICEGATE_DATABASE_URL": ""},
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: no audit store at ")
    assert not (tmp_path / "none").exists()


def test_a_refusal_by_another_rule_is_a_rule_change(report: dict[str, Any]) -> None:
    dave = by_consumer(report)["dave"]
    assert dave["rule_changed"] == 1 and dave["newly_allowed"] == 0
    change = next(c for c in report["changes"] if c["request_id"] == "req_12")
    assert change["change"] == "rule_changed"
    assert (change["old"]["rule"], change["new"]["rule"]) == ("consumers.dave.models", "consumers.dave.source_ips")


def test_a_consumer_no_longer_configured_is_refused_by_identity(report: dict[str, Any]) -> None:
    gone = by_consumer(report)["gone"]
    assert gone["newly_refused_by"] == {"consumers.gone": 1}
    change = next(c for c in report["changes"] if c["request_id"] == "req_13")
    assert (change["new"]["stage"], change["new"]["code"]) == ("identity", "consumer_not_configured")


def test_a_consumer_made_from_token_groups_is_not_evaluated(report: dict[str, Any]) -> None:
    token = by_consumer(report)["jwt:corp:u1"]
    assert token["not_evaluated"] == {"identity: a consumer made from a token's groups": 1}
    assert token["newly_refused"] == token["newly_allowed"] == 0
    assert token["spend_old_micro"] == token["spend_new_micro"] == 20


def test_a_key_whose_consumer_is_now_configured_is_newly_allowed(report: dict[str, Any]) -> None:
    newbie = by_consumer(report)["newbie"]
    assert (newbie["calls"], newbie["newly_allowed"], newbie["cost_unknown"]) == (1, 1, 1)
    change = next(c for c in report["changes"] if c["request_id"] == "req_15")
    assert change["change"] == "newly_allowed" and change["old"]["decision"] == "denied"


def test_the_max_tokens_rule_reads_the_captured_request(report: dict[str, Any]) -> None:
    gina = by_consumer(report)["gina"]
    assert gina["newly_refused_by"] == {"consumers.gina.max_tokens": 1}
    assert gina["not_evaluated"] == {}
    change = next(c for c in report["changes"] if c["consumer"] == "gina" and c["change"] == "newly_refused")
    assert change["request_id"] == "req_16" and change["new"]["code"] == "max_tokens_exceeded"
