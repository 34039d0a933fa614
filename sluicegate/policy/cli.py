"""`sluicegate policy explain | replay`: thin click commands over `policy.evaluate` and `policy.replay`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from sluicegate.config.snapshot import Snapshot


def parse_moment(text: str, now: float, option: str) -> float:
    """A time given as `7d`, `24h`, `30m` (that long before `now`) or ISO 8601 (UTC without an
    offset), as epoch seconds; a one-line usage error otherwise."""
    from sluicegate import moments

    try:
        return moments.parse_moment(text, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _load(config_path: str) -> Snapshot:
    from sluicegate.config.loader import ConfigInvalid, load_config

    try:
        return load_config(config_path)
    except ConfigInvalid as exc:
        # One line: the first problem, and how many more (`sluicegate check` lists them all).
        first = exc.issues[0] if exc.issues else "invalid"
        more = f" (and {len(exc.issues) - 1} more: run `sluicegate check`)" if len(exc.issues) > 1 else ""
        raise click.ClickException(f"invalid config {config_path}: {first}{more}") from None


def _engine(snapshot: Snapshot, must_exist: bool) -> Engine | None:
    """The audit store of the config (the environment's first); None when a SQLite file is absent
    and `must_exist` is false."""
    from sluicegate.settings import Settings
    from sluicegate.store.db import create_engine

    url = Settings.from_env().db_url(snapshot.config.database_url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        if not must_exist:
            return None
        raise click.ClickException(f"no audit store at {url.removeprefix('sqlite:///')}: nothing was recorded there")
    try:
        return create_engine(url)
    except Exception as exc:
        if not must_exist:
            return None
        raise click.ClickException(f"cannot open the audit store ({type(exc).__name__})") from None


def _json(data: Any) -> str:
    import orjson

    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


@click.group()
def policy() -> None:
    """What a config decides: one call explained, or the recorded calls replayed against it."""


@policy.command("explain")
@click.option("--consumer", required=True, help="The consumer, as named in the config.")
@click.option("--model", required=True, help="The model the call asks for.")
@click.option(
    "--at", "at", default=None, help="When: ISO 8601 (UTC without an offset) or a time ago (2h); default: now."
)
@click.option("--from", "source", default=None, help="The caller's address (for source_ips rules).")
@click.option("--endpoint", default="chat", show_default=True, help="chat, completions, embeddings, messages ...")
@click.option("--stream", is_flag=True, help="The call asks for a stream.")
@click.option("--key", "key_id", default=None, help="The API key id (for limits scoped to keys).")
@click.option("--prompt", default=None, help="A user message: the input guards run on it.")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The config to ask.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
def explain(
    consumer: str,
    model: str,
    at: str | None,
    source: str | None,
    endpoint: str,
    stream: bool,
    key_id: str | None,
    prompt: str | None,
    config_path: str,
    as_json: bool,
) -> None:
    """Each stage's decision for one call, with the rule that decided it."""
    from sluicegate.policy.evaluate import Evaluator, Subject
    from sluicegate.policy.explain import LedgerHeadroom, explain_json, explain_lines

    now = time.time()
    moment = parse_moment(at, now, "--at") if at else now
    snapshot = _load(config_path)
    if consumer not in snapshot.consumers:
        raise click.ClickException(f"unknown consumer '{consumer}': {config_path} names no such consumer")
    engine = _engine(snapshot, must_exist=False)
    limiter = LedgerHeadroom(engine, snapshot) if engine is not None else None
    body = prompt_body(endpoint, model, prompt) if prompt is not None else None
    subject = Subject(consumer, model, moment, endpoint, source, key_id, stream, body=body)
    evaluation = asyncio.run(Evaluator(snapshot).evaluate(subject, limiter))
    if engine is None and any(d.stage == "limits" for d in evaluation.decisions):
        evaluation.unevaluated.append("limits: no audit store, so no headroom (limits as configured)")
    if as_json:
        click.echo(_json(explain_json(evaluation, config_path)))
        return
    for line in explain_lines(evaluation, config_path):
        click.echo(line)


def prompt_body(endpoint: str, model: str, text: str) -> dict[str, Any]:
    """The smallest request body of `endpoint` that holds `text` as what the model reads."""
    if endpoint in ("chat", "messages"):
        return {"model": model, "messages": [{"role": "user", "content": text}]}
    if endpoint == "completions":
        return {"model": model, "prompt": text}
    return {"model": model, "input": text}


@policy.command("replay")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The new config.")
@click.option("--since", required=True, help="Start: a time ago (7d, 24h, 30m) or ISO 8601 (UTC without an offset).")
@click.option("--until", default=None, help="End, excluded: a time ago or ISO 8601; default: now.")
@click.option("--consumer", default=None, help="Only this consumer's calls.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, with every changed call.")
def replay_command(config_path: str, since: str, until: str | None, consumer: str | None, as_json: bool) -> None:
    """Replay the recorded calls of a period against a new config: what would change."""
    import sqlalchemy as sa

    from sluicegate.audit.search import AuditQuery, stream
    from sluicegate.policy.evaluate import Evaluator
    from sluicegate.policy.replay import replay
    from sluicegate.store.keys import KeyStore

    now = time.time()
    start = parse_moment(since, now, "--since")
    end = parse_moment(until, now, "--until") if until else now
    if start >= end:
        raise click.BadParameter("--since must be before --until", param_hint="--since")
    snapshot = _load(config_path)
    engine = _engine(snapshot, must_exist=True)
    assert engine is not None
    try:
        owners = {k.id: k.consumer for k in KeyStore(engine).list()}
        events = stream(engine, AuditQuery(consumer=consumer, since=start, until=end))
        try:
            report = asyncio.run(replay(Evaluator(snapshot), events, config_path, start, end, engine, owners))
        finally:
            events.close()
    except sa.exc.SQLAlchemyError as exc:
        raise click.ClickException(f"cannot read the audit store ({type(exc).__name__})") from None
    data = report.as_dict()
    if as_json:
        click.echo(_json(data))
        return
    for line in replay_lines(data):
        click.echo(line)


def replay_lines(data: dict[str, Any]) -> list[str]:
    """The human table of a replay report (`Replay.as_dict`)."""
    currency = data["currency"]
    totals = data["totals"]
    lines = [
        f"replay of {totals['calls']} recorded call(s), {data['since']} to {data['until']}, "
        f"against {data['config']} ({currency})",
        f"{'CONSUMER':<24} {'CALLS':>7} {'NEWLY REFUSED':>14} {'NEWLY ALLOWED':>14} {'SPEND OLD -> NEW':>30}",
    ]

    def row(name: str, t: dict[str, Any]) -> str:
        spend = f"{_money(t['spend_old_micro'])} -> {_money(t['spend_new_micro'])}"
        return f"{_cell(name, 24):<24} {t['calls']:>7} {t['newly_refused']:>14} {t['newly_allowed']:>14} {spend:>30}"

    for t in data["consumers"]:
        lines.append(row(t["consumer"], t))
        for rule, count in t["newly_refused_by"].items():
            lines.append(f"    newly refused by {rule}: {count}")
        if t["rule_changed"]:
            lines.append(f"    refused by another rule: {t['rule_changed']}")
        if t["cost_unknown"]:
            lines.append(f"    newly allowed, never answered (cost unknown, counted 0): {t['cost_unknown']}")
        for note, count in t["not_evaluated"].items():
            lines.append(f"    not evaluated: {note}: {count}")
    lines.append(row("TOTAL", totals))
    for reason, count in data["skipped"].items():
        lines.append(f"not replayed: {reason}: {count}")
    return lines


def _money(micro: int) -> str:
    return f"{micro / 1_000_000:.6f}"


def _cell(value: str, width: int) -> str:
    """Control characters (a recorded name can hold escapes) shown as `?`, cut to width."""
    text = "".join(ch if ch.isprintable() else "?" for ch in value)
    return text if len(text) <= width else text[: width - 1] + "…"
