"""Replay of a history recorded by a real gateway over HTTP (the official SDK) against a new
config whose outcome is known call by call: a model taken away, a model given, new prices, a new
budget, a new guard on captured content."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from click.testing import CliRunner

from sluicegate.cli import main
from tests.conftest import BASE_CONFIG, CANARY_KEY, RunningGateway, run_gateway

#: alice's content is captured, so new guards can read it
RECORDED = """
audit:
  capture:
    - consumers: [alice]
"""


def ask(gw: RunningGateway, who: str, model: str, text: str) -> bool:
    """One chat call with the SDK; whether it was answered."""
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.keys[who], max_retries=0)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    except openai.PermissionDeniedError:
        return False
    return True


@pytest.fixture(scope="module")
def history(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """The calls, in order; the gateway's data folder and its audit events."""
    tmp = tmp_path_factory.mktemp("policy")
    with run_gateway(tmp, upstream_url, RECORDED) as gw:
        for _ in range(3):
            assert ask(gw, "alice", "gpt-4o-mini", "hello there")
        assert ask(gw, "alice", "gpt-4o-mini", "the codename-falcon launches today")
        # the fake upstream answers what follows `echo:`: the answer holds a ticket number
        assert ask(gw, "alice", "gpt-4o-mini", "echo: see ticket-4242")
        for _ in range(2):
            assert ask(gw, "alice", "team-model", "hi")
        for _ in range(2):
            assert ask(gw, "bob", "gpt-4o-mini", "hi bob")
        assert not ask(gw, "bob", "team-model", "hi")
        events = gw.audit()
        yield gw.data_dir, events


def new_config(team_call_micro: int) -> str:
    """The new config: new prices, bob moved from gpt-4o-mini to team-model, a guard on alice,
    a budget on team-model that holds one of alice's two team-model calls."""
    text = BASE_CONFIG.format(upstream="http://127.0.0.1:9", read_s=5)
    text = text.replace("input_cost_per_mtok: 0.15", "input_cost_per_mtok: 1.0")
    text = text.replace("output_cost_per_mtok: 0.6", "output_cost_per_mtok: 2.0")
    text = text.replace("    model: gpt-4o\n", "    model: gpt-4o\n    price: {input: 10, output: 10}\n")
    text = text.replace("  - name: alice\n", "  - name: alice\n    guards: [no-codenames, no-tickets]\n")
    text = text.replace("    models: [gpt-4o-mini]\n", "    models: [team-model]\n")
    budget = team_call_micro * 1.5 / 1_000_000
    return text + (
        "guards:\n"
        "  - name: no-codenames\n"
        "    kind: regex\n"
        '    settings: {deny: ["codename-\\\\w+"]}\n'
        "  - name: no-tickets\n"
        "    kind: regex\n"
        "    applies_to: output\n"
        '    settings: {deny: ["ticket-\\\\d+"]}\n'
        "limits:\n"
        "  budgets:\n"
        f"    - {{name: team-cap, scope: model, match: [team-model], amount: {budget!r}, window: month}}\n"
    )


def cost(prompt: int, completion: int, input_micro: int, output_micro: int) -> int:
    """The exact cost at per-million prices in micro-units, rounded half up."""
    return (prompt * input_micro + completion * output_micro + 500_000) // 1_000_000


def run_replay(data_dir: Path, config: Path, *extra: str) -> Any:
    result = CliRunner().invoke(
        main,
        ["policy", "replay", "--config", str(config), "--since", "1h", *extra],
        env={"SLUICEGATE_DATA_DIR": str(data_dir), "SLUICEGATE_DATABASE_URL": ""},
    )
    return result


@pytest.fixture(scope="module")
def replayed(history: tuple[Path, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir, events = history
    team = [e for e in events if e["consumer"] == "alice" and e["model_requested"] == "team-model"]
    one_team_call = cost(team[0]["prompt_tokens"], team[0]["completion_tokens"], 10_000_000, 10_000_000)
    config = tmp_path_factory.mktemp("new") / "new.yaml"
    config.write_text(new_config(one_team_call))
    result = run_replay(data_dir, config, "--json")
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output), events, config


def test_the_history_is_what_the_gateway_recorded(history: tuple[Path, list[dict[str, Any]]]) -> None:
    _, events = history
    assert [e["decision"] for e in events] == ["allowed"] * 9 + ["denied"]
    assert events[-1]["rule"] == "consumers.bob.models"
    assert all(e["content"] for e in events if e["consumer"] == "alice")
    assert not any(e["content"] for e in events if e["consumer"] == "bob")


def test_a_model_taken_away_refuses_its_calls_by_that_rule(replayed: Any) -> None:
    report, _, _ = replayed
    bob = next(t for t in report["consumers"] if t["consumer"] == "bob")
    assert bob["calls"] == 3
    assert bob["newly_refused_by"] == {"consumers.bob.models": 2}
    assert bob["spend_new_micro"] == 0


def test_a_model_given_allows_the_calls_it_refused(replayed: Any) -> None:
    report, events, _ = replayed
    bob = next(t for t in report["consumers"] if t["consumer"] == "bob")
    assert bob["newly_allowed"] == 1
    assert bob["cost_unknown"] == 1  # refused then, so never answered: its cost is not known
    change = next(c for c in report["changes"] if c["request_id"] == events[-1]["request_id"])
    assert change["change"] == "newly_allowed"
    assert change["old"]["rule"] == "consumers.bob.models"


def test_a_new_budget_refuses_from_the_call_that_no_longer_fits(replayed: Any) -> None:
    report, events, _ = replayed
    team = [e["request_id"] for e in events if e["consumer"] == "alice" and e["model_requested"] == "team-model"]
    changes = {c["request_id"]: c for c in report["changes"]}
    assert changes[team[0]]["change"] == "cost_changed"  # the first fits
    second = changes[team[1]]
    assert second["change"] == "newly_refused"
    assert second["new"] == {
        "allowed": False,
        "stage": "limits",
        "rule": "limits.budgets.team-cap",
        "code": "budget_exceeded",
        "cost_micro": None,
    }


def test_a_new_output_guard_reads_the_captured_answer(replayed: Any) -> None:
    report, events, _ = replayed
    ticket = next(e for e in events if e["content"] and "echo:" in e["content"])
    change = next(c for c in report["changes"] if c["request_id"] == ticket["request_id"])
    assert change["change"] == "newly_refused"
    assert (change["new"]["stage"], change["new"]["rule"]) == ("guardrails", "guards.no-tickets")


def test_a_new_guard_blocks_the_captured_content_it_matches(replayed: Any) -> None:
    report, events, _ = replayed
    secret = next(e for e in events if e["content"] and "codename" in e["content"])
    change = next(c for c in report["changes"] if c["request_id"] == secret["request_id"])
    assert change["change"] == "newly_refused"
    assert change["new"]["stage"] == "guardrails"
    assert change["new"]["rule"] == "guards.no-codenames"
    alice = next(t for t in report["consumers"] if t["consumer"] == "alice")
    assert alice["newly_refused_by"] == {
        "guards.no-codenames": 1,
        "guards.no-tickets": 1,
        "limits.budgets.team-cap": 1,
    }
    assert alice["newly_allowed"] == 0
    assert alice["not_evaluated"] == {}


def test_new_prices_change_spend_by_the_exact_amount(replayed: Any) -> None:
    report, events, _ = replayed
    alice = next(t for t in report["consumers"] if t["consumer"] == "alice")
    mine = [e for e in events if e["consumer"] == "alice"]
    assert alice["spend_old_micro"] == sum(e["cost_micro_usd"] for e in mine)
    hello = [e for e in mine if e["model_requested"] == "gpt-4o-mini" and "hello" in e["content"]]
    team = next(e for e in mine if e["model_requested"] == "team-model")
    expected = sum(cost(e["prompt_tokens"], e["completion_tokens"], 1_000_000, 2_000_000) for e in hello)
    expected += cost(team["prompt_tokens"], team["completion_tokens"], 10_000_000, 10_000_000)
    assert alice["spend_new_micro"] == expected
    for e in hello:
        change = next(c for c in report["changes"] if c["request_id"] == e["request_id"])
        assert change["new"]["cost_micro"] == cost(e["prompt_tokens"], e["completion_tokens"], 1_000_000, 2_000_000)
        assert change["old"]["cost_micro"] == e["cost_micro_usd"]
    bob = next(t for t in report["consumers"] if t["consumer"] == "bob")
    assert report["totals"]["spend_new_micro"] == expected
    assert report["totals"]["spend_old_micro"] == alice["spend_old_micro"] + bob["spend_old_micro"]


def test_the_table_says_the_same(replayed: Any, history: tuple[Path, list[dict[str, Any]]]) -> None:
    report, _, config = replayed
    result = run_replay(history[0], config)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "CONSUMER" in out and "NEWLY REFUSED" in out and "SPEND OLD -> NEW" in out
    assert "newly refused by consumers.bob.models: 2" in out
    assert "newly refused by guards.no-codenames: 1" in out
    assert "newly refused by limits.budgets.team-cap: 1" in out
    assert "newly refused by guards.no-tickets: 1" in out
    total = report["totals"]
    assert f"{total['spend_old_micro'] / 1e6:.6f} -> {total['spend_new_micro'] / 1e6:.6f}" in out
    assert CANARY_KEY not in out


def test_the_same_config_changes_nothing(history: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    data_dir, _ = history
    config = tmp_path / "same.yaml"
    config.write_text(BASE_CONFIG.format(upstream="http://127.0.0.1:9", read_s=5))
    result = run_replay(data_dir, config, "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report["changes"] == []
    assert report["totals"]["spend_old_micro"] == report["totals"]["spend_new_micro"] > 0
    assert report["totals"]["newly_refused"] == report["totals"]["newly_allowed"] == 0
    # No guard in this config: nothing to run on the captured content, so nothing unevaluated.
    assert all(t["not_evaluated"] == {} for t in report["consumers"])
