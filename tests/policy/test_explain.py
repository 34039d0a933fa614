"""`sluicegate policy explain`: each stage's decision and rule id for one hypothetical call, with
a budget's headroom read from a real store when there is one."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from sluicegate.audit.events import AuditEvent
from sluicegate.audit.writer import AuditWriter
from sluicegate.cli import main
from sluicegate.store.db import create_engine

CONFIG = """\
providers:
  - {name: us, type: openai_compatible, base_url: "http://127.0.0.1:9/v1", region: us-east}
  - {name: eu, type: openai_compatible, base_url: "http://127.0.0.1:9/v1", region: eu-west}
models:
  - name: smart
    targets:
      - {provider: us, model: big, priority: 0}
      - {provider: eu, model: big-eu, priority: 1}
    price: {input: 1, output: 1}
  - {name: small, provider: us}
groups:
  - {name: eng, models: [smart], time_windows: ["Mon-Fri 08:00-18:00"]}
consumers:
  - {name: alice, models: ["*"], guards: [no-codenames]}
  - {name: bob, groups: [eng], source_ips: [10.0.0.0/8]}
  - {name: carol, models: [smart]}
guards:
  - {name: no-codenames, kind: regex, settings: {deny: ["codename-\\\\w+"]}}
limits:
  budgets:
    - {name: monthly, scope: consumer, amount: 1.0, window: month}
  rate_limits:
    - {name: rpm, scope: consumer, match: [bob], requests: 60, window: minute}
routing:
  pins:
    - {name: carol-in-eu, consumers: [carol], regions: ["eu-*"]}
"""
#: a Wednesday, in bob's time window
WEDNESDAY = "2026-12-02T10:00"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("explain")
    (data / "sluicegate.yaml").write_text(CONFIG)
    engine = create_engine(f"sqlite:///{data / 'sluicegate.db'}")
    writer = AuditWriter(engine, flush_interval_s=0.01)
    writer.start()
    ts = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC).timestamp()
    writer.submit(
        AuditEvent(
            request_id="req_1",
            ts=ts,
            endpoint="chat",
            consumer="alice",
            model_requested="smart",
            status=200,
            decision="allowed",
            outcome="ok",
            cost_micro_usd=250_000,
        )
    )
    assert writer.wait_idle(10)
    writer.close()
    return data


def explain(data: Path, *args: str, store: bool = True) -> Any:
    env = {"SLUICEGATE_DATA_DIR": str(data if store else data / "none"), "SLUICEGATE_DATABASE_URL": ""}
    return CliRunner().invoke(main, ["policy", "explain", "--config", str(data / "sluicegate.yaml"), *args], env=env)


def explained(data: Path, *args: str) -> dict[str, Any]:
    result = explain(data, *args, "--json")
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = orjson.loads(result.output)
    return report


def stages(report: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {s["stage"]: (s["outcome"], s["rule"]) for s in report["stages"]}


def test_an_allowed_call_shows_every_stage_with_its_rule(setup: Path) -> None:
    report = explained(setup, "--consumer", "bob", "--model", "smart", "--from", "10.1.2.3", "--at", WEDNESDAY)
    assert report["allowed"] is True and report["refused_by"] is None
    assert stages(report) == {
        "identity": ("allow", "consumers.bob"),
        "access": ("allow", None),
        "model_access": ("allow", "consumers.bob.models + groups.eng.models"),
        "limits": ("allow", None),
        "guardrails": ("allow", None),
        "router": ("allow", None),
    }
    details = {s["stage"]: s["detail"] for s in report["stages"]}
    assert "consumers.bob.source_ips" in details["access"] and "groups.eng.time_windows" in details["access"]
    assert "limits.budgets.monthly" in details["limits"] and "1.00 USD left" in details["limits"]
    assert "limits.rate_limits.rpm.requests: 60 requests per 1m of consumer 'bob'" in details["limits"]
    assert details["router"] == "smart -> us/big > eu/big-eu (priority)"


@pytest.mark.parametrize(
    ("args", "stage", "rule", "code"),
    [
        (["--consumer", "bob", "--model", "smart", "--from", "192.168.1.1", "--at", WEDNESDAY], "access",
         "consumers.bob.source_ips", "source_ip_not_allowed"),
        (["--consumer", "bob", "--model", "smart", "--from", "10.1.2.3", "--at", "2026-12-05T10:00"], "access",
         "groups.eng.time_windows", "outside_time_window"),
        (["--consumer", "bob", "--model", "small", "--from", "10.1.2.3", "--at", WEDNESDAY], "model_access",
         "consumers.bob.models + groups.eng.models", "model_not_allowed"),
        (["--consumer", "alice", "--model", "nothing"], "model_access", "models", "model_not_found"),
        (["--consumer", "alice", "--model", "small", "--endpoint", "messages", "--stream"], None, None, None),
    ],
    ids=["source", "time-window", "model", "no-such-model", "allowed"],
)  # fmt: skip
def test_a_refusal_names_its_stage_and_rule(
    setup: Path, args: list[str], stage: str | None, rule: str | None, code: str | None
) -> None:
    report = explained(setup, *args)
    refused = report["refused_by"]
    if stage is None:
        assert refused is None
        return
    assert (refused["stage"], refused["rule"], refused["code"]) == (stage, rule, code)


def test_headroom_comes_from_the_ledger_and_pins_narrow_the_targets(setup: Path) -> None:
    result = explain(setup, "--consumer", "carol", "--model", "smart", "--at", "2026-12-02T10:00")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "smart -> eu/big-eu (priority) [routing.pins.carol-in-eu]" in out
    assert "verdict: allowed" in out
    # alice spent 0.25 of her month on December 1st: 0.75 is left on the 2nd, 1.00 in November
    assert "0.75 USD left" in explain(setup, "--consumer", "alice", "--model", "smart", "--at", WEDNESDAY).output
    assert "1.00 USD left" in explain(setup, "--consumer", "alice", "--model", "smart", "--at", "2026-11-30").output


def test_guards_that_would_run_are_listed(setup: Path) -> None:
    report = explained(setup, "--consumer", "alice", "--model", "small")
    guard = next(s for s in report["stages"] if s["stage"] == "guardrails")
    assert guard["outcome"] == "skip"
    assert guard["detail"] == "would run: no-codenames (regex, block); no content to run them on"


@pytest.mark.parametrize("endpoint", ["chat", "messages", "completions", "responses"])
def test_a_prompt_runs_the_input_guards(setup: Path, endpoint: str) -> None:
    args = ["--consumer", "alice", "--model", "small", "--endpoint", endpoint]
    refused = explained(setup, *args, "--prompt", "ship codename-falcon today")["refused_by"]
    assert (refused["stage"], refused["rule"], refused["code"]) == (
        "guardrails",
        "guards.no-codenames",
        "content_blocked",
    )
    report = explained(setup, *args, "--prompt", "nothing to see")
    guard = next(s for s in report["stages"] if s["stage"] == "guardrails")
    assert (guard["outcome"], guard["detail"]) == ("allow", "ran: no-codenames (regex, block); nothing found")


def test_without_a_store_the_limits_are_as_configured(setup: Path) -> None:
    result = explain(setup, "--consumer", "alice", "--model", "smart", store=False)
    assert result.exit_code == 0, result.output
    assert "limits        info  limits.budgets.monthly: 1.00 USD per month of consumer 'alice'" in result.output
    assert "not evaluated: limits: no audit store" in result.output
    assert not (setup / "none").exists()


@pytest.mark.parametrize(
    ("args", "message", "status"),
    [
        (["--consumer", "zed", "--model", "smart"], "Error: unknown consumer 'zed'", 1),
        (["--consumer", "alice", "--model", "smart", "--at", "soon"], "'soon' is neither a time ago", 2),
    ],
    ids=["unknown-consumer", "bad-at"],
)
def test_bad_input_is_a_one_line_error(setup: Path, args: list[str], message: str, status: int) -> None:
    result = explain(setup, *args)
    assert result.exit_code == status
    assert message in result.output
    assert "Traceback" not in result.output


def test_the_documented_example_is_what_explain_prints(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "policy.md").read_text()
    config = tmp_path / "sluicegate.yaml"
    config.write_text(re.findall(r"```yaml\n(.*?)```", doc, re.S)[0])
    example = doc.split("the same call on a Saturday:\n\n```\n")[1].split("```")[0]
    command, *expected = example.replace("\\\n", " ").strip().splitlines()
    args = [str(config) if a == "sluicegate.yaml" else a for a in command.split()[2:]]
    env = {"SLUICEGATE_DATA_DIR": str(tmp_path / "none"), "SLUICEGATE_DATABASE_URL": ""}
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert result.output.replace(str(config), "sluicegate.yaml").strip().splitlines() == expected
