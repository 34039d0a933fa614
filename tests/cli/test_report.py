"""`sluicegate report`: usage and cost by day, consumer and model, the days of a time zone across
DST changes, the same numbers as `sluicegate spend`, a CSV that parses back and that a spreadsheet
cannot run, a real PNG chart, a clear message without matplotlib, and calls made with the `openai`
SDK through a gateway; on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import os
import struct
import subprocess
import sys
import time
import zoneinfo
from collections import defaultdict
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from click.testing import CliRunner, Result

from sluicegate.audit.events import AuditEvent
from sluicegate.cli import main
from sluicegate.limits.chart import MAX_SERIES, daily_cost_by_consumer
from sluicegate.limits.usage import ROW_FIELDS, micro_text
from sluicegate.limits.windows import local_days
from sluicegate.testing import FakeUpstream
from tests.cli.stores import BACKENDS, event, new_store, write
from tests.conftest import run_gateway

ROOT = Path(__file__).resolve().parents[2]
ZONES = ["Europe/Paris", "America/Santiago", "Australia/Lord_Howe", "America/Havana", "Asia/Kathmandu"]
YEAR = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp(), dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp())


def cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"SLUICEGATE_DATABASE_URL": url})


def report_json(url: str, *args: str) -> dict[str, Any]:
    result = cli(url, "report", "--json", *args)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = orjson.loads(result.stdout)
    return data


def _changes(zone: zoneinfo.ZoneInfo) -> list[float]:
    """The instants of 2026 when the zone's UTC offset changes (a quarter-hour scan)."""
    out: list[float] = []
    t, end = YEAR
    before = dt.datetime.fromtimestamp(t, zone).utcoffset()
    while t < end:
        t += 900
        now = dt.datetime.fromtimestamp(t, zone).utcoffset()
        if now != before:
            out.append(t)
            before = now
    return out


def _dst_events() -> list[AuditEvent]:
    """Events in the hours around each zone's DST changes and local midnights, a hair either side of them."""
    times: list[float] = []
    for name in ZONES:
        zone = zoneinfo.ZoneInfo(name)
        anchors = _changes(zone) or [dt.datetime(2026, 6, 15, tzinfo=zone).timestamp()]
        for anchor in anchors:
            times.extend(anchor + k * 1171.3 for k in range(-80, 81))
            day = dt.datetime.fromtimestamp(anchor, zone).date()
            for d in (day - dt.timedelta(days=1), day, day + dt.timedelta(days=1), day + dt.timedelta(days=2)):
                midnight = dt.datetime(d.year, d.month, d.day, tzinfo=zone).timestamp()
                times.extend((midnight - 0.001, midnight, midnight + 0.001))
    return [
        event(i, ts=ts, consumer=["alice", "bob"][i % 2], model_requested=["m1", "m2", "m3"][i % 3], cost_micro_usd=i)
        for i, ts in enumerate(sorted(times))
    ]


DST_EVENTS = _dst_events()


@pytest.fixture(scope="module", params=BACKENDS)
def dst_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = new_store(request.param, tmp_path_factory.mktemp("dst"), request)
    write(url, DST_EVENTS)
    return url


@pytest.mark.parametrize("zone", ZONES)
def test_days_are_the_time_zones_across_dst_changes(dst_store: str, zone: str) -> None:
    report = report_json(dst_store, "--since", "2026-01-01", "--until", "2027-01-01", "--timezone", zone)
    tz = zoneinfo.ZoneInfo(zone)
    start = dt.datetime(2026, 1, 1, tzinfo=tz).timestamp()
    end = dt.datetime(2027, 1, 1, tzinfo=tz).timestamp()
    expected: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    per_day: dict[str, int] = defaultdict(int)
    for e in DST_EVENTS:
        if start <= e.ts < end:
            day = dt.datetime.fromtimestamp(e.ts, tz).date().isoformat()
            acc = expected[(day, e.consumer or "-", e.model_requested or "-")]
            for i, value in enumerate((1, e.prompt_tokens, e.completion_tokens, e.cost_micro_usd)):
                acc[i] += value or 0
            per_day[day] += e.cost_micro_usd or 0
    got = {
        (r["day"], r["consumer"], r["model"]): [r["calls"], r["prompt_tokens"], r["completion_tokens"], r["cost_micro"]]
        for r in report["rows"]
    }
    assert got == dict(expected)
    assert [d["day"] for d in report["days"]] == [
        (dt.date(2026, 1, 1) + dt.timedelta(days=n)).isoformat() for n in range(365)
    ]
    assert {d["day"]: d["cost_micro"] for d in report["days"] if d["cost_micro"]} == {
        day: cost for day, cost in per_day.items() if cost
    }
    assert report["timezone"] == zone and report["since"] == dt.datetime.fromtimestamp(start, dt.UTC).isoformat()


def test_a_day_across_a_dst_change_lasts_23_or_25_hours() -> None:
    def hours(zone: str, day: dt.date) -> tuple[float, str]:
        tz = zoneinfo.ZoneInfo(zone)
        [(_, start, end)] = [d for d in local_days(YEAR[0], YEAR[1], tz) if d[0] == day]
        return (end - start) / 3600, dt.datetime.fromtimestamp(start, tz).strftime("%H:%M")

    assert hours("Europe/Paris", dt.date(2026, 3, 29)) == (23, "00:00")
    assert hours("Europe/Paris", dt.date(2026, 10, 25)) == (25, "00:00")
    assert hours("Europe/Paris", dt.date(2026, 10, 26)) == (24, "00:00")
    # midnight does not exist that day: the day begins at 01:00
    assert hours("America/Santiago", dt.date(2026, 9, 6)) == (23, "01:00")
    # midnight happens twice: the day begins at the first
    assert hours("America/Havana", dt.date(2026, 11, 1)) == (25, "00:00")
    assert hours("Australia/Lord_Howe", dt.date(2026, 4, 5)) == (24.5, "00:00")
    # a period that starts and ends inside days is cut to them
    tz = zoneinfo.ZoneInfo("Asia/Kathmandu")
    noon = dt.datetime(2026, 6, 15, 12, tzinfo=tz).timestamp()
    days = local_days(noon, noon + 86400, tz)
    assert [(d.isoformat(), b - a) for d, a, b in days] == [("2026-06-15", 43200), ("2026-06-16", 43200)]


def _spend_events(now: float) -> list[AuditEvent]:
    """Calls of alice, bob and no one, a reaped reservation (spend, not a call), the limits' own
    bookkeeping (neither), calls without a cost, and calls before the period."""
    out = [
        event(i, ts=now - 60 - i, consumer=["alice", "bob", None][i % 3], model_requested=f"m{i % 2}")
        for i in range(30)
    ]
    out.append(event(100, ts=now - 30, consumer="alice", outcome="reservation_reaped", cost_micro_usd=5_000))
    out.append(event(101, ts=now - 30, consumer="alice", endpoint="limits", outcome="budget_alert", cost_micro_usd=9))
    out.append(event(102, ts=now - 30, consumer="bob", cost_micro_usd=None, prompt_tokens=None, completion_tokens=None))
    out.append(event(103, ts=now - 40 * 86400, consumer="bob", cost_micro_usd=123_456))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_numbers_are_those_of_spend(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    url = new_store(backend, tmp_path, request)
    write(url, _spend_events(time.time()))
    for period in (["--period", "month"], ["--since", "2d", "--until", "0s"], ["--since", "90d"]):
        spend = cli(url, "spend", "--json", *period)
        assert spend.exit_code == 0, spend.output
        expected = {
            r["name"]: (r["calls"], r["prompt_tokens"], r["completion_tokens"], r["cost_micro"])
            for r in orjson.loads(spend.stdout)["rows"]
        }
        report = report_json(url, *period)
        got = {
            r["consumer"]: (r["calls"], r["prompt_tokens"], r["completion_tokens"], r["cost_micro"])
            for r in report["consumers"]
        }
        assert got == expected, period
        assert report["total_cost_micro"] == sum(v[3] for v in expected.values())
        assert sum(r["cost_micro"] for r in report["rows"]) == sum(d["cost_micro"] for d in report["days"])
    assert expected["alice"][0] == 10 and expected["-"][0] == 10
    assert expected["bob"][3] == sum(1_000 + 7 * i for i in range(1, 30, 3)) + 123_456


def test_table_and_csv(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = new_store("sqlite", tmp_path, request)
    now = time.time()
    write(
        url,
        [
            event(1, ts=now - 5, consumer="=cmd|' /C calc'!A0", model_requested="@SUM(A1)", cost_micro_usd=1_234_567),
            event(2, ts=now - 4, consumer="alice", model_requested="gpt-4o-mini", cost_micro_usd=2**62),
            event(3, ts=now - 3, consumer="alice", model_requested="gpt-4o-mini", cost_micro_usd=1),
            event(4, ts=now - 2, consumer="-1+2", model_requested="m", cost_micro_usd=0),
        ],
    )
    out = tmp_path / "usage.csv"
    result = cli(url, "report", "--period", "day", "--csv", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote the rows to {out}" in result.stderr
    lines = result.stdout.splitlines()
    today = dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()
    assert lines[0] == f"usage by day, consumer and model, {today} to {today} (UTC, USD)"
    assert lines[1].split() == ["DAY", "CONSUMER", "MODEL", "CALLS", "PROMPT", "COMPLETION", "COST"]
    assert lines[2].split() == [today, "alice", "gpt-4o-mini", "2", "25", "50", micro_text(2**62 + 1)]
    assert lines[-1].split() == ["TOTAL", micro_text(2**62 + 1_234_568)]
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ROW_FIELDS
    data = report_json(url, "--period", "day")
    assert len(rows) == len(data["rows"]) == 3
    for row, want in zip(rows, data["rows"], strict=True):
        for name in ("calls", "prompt_tokens", "completion_tokens", "cost_micro"):
            assert int(row[name]) == want[name]
        assert row["cost"] == micro_text(want["cost_micro"]) and row["day"] == today
    by_consumer = {r["consumer"]: r for r in rows}
    assert by_consumer["alice"]["cost"] == "4611686018427.387905"  # exact: 2**62 + 1 micro-units
    # names a spreadsheet would run start with a quote; numbers stay numbers
    assert by_consumer["'=cmd|' /C calc'!A0"]["model"] == "'@SUM(A1)"
    assert by_consumer["'-1+2"]["cost_micro"] == "0"
    assert by_consumer["'=cmd|' /C calc'!A0"]["cost"] == "1.234567"


def test_chart_is_a_png_of_the_daily_cost_per_consumer(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = new_store("sqlite", tmp_path, request)
    base = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC).timestamp()
    write(
        url,
        (
            event(i, ts=base + (i % 14) * 86400, consumer=f"team-{i % 4}", cost_micro_usd=(1 + i % 4) * 10_000 + i)
            for i in range(200)
        ),
    )
    chart = tmp_path / "daily.png"
    result = cli(url, "report", "--since", "2026-03-01", "--until", "2026-03-15", "--chart", str(chart))
    assert result.exit_code == 0, result.output
    data = chart.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height == 500 and len(data) > 10_000
    assert not list(tmp_path.glob("*.partial"))


def test_the_chart_series_sum_the_smallest_consumers() -> None:
    days = [{"day": f"2026-03-0{d}"} for d in (1, 2)]
    rows: list[dict[str, Any]] = [
        {"day": days[i % 2]["day"], "consumer": f"c{i:02d}", "cost_micro": 1_000 * (i + 1)}
        for i in range(MAX_SERIES + 3)
    ]
    series = daily_cost_by_consumer({"days": days, "rows": rows})
    assert list(series)[:3] == ["c12", "c11", "c10"] and list(series)[-1] == "others"
    assert len(series) == MAX_SERIES + 1
    assert series["others"] == [1_000 + 3_000, 2_000]
    assert sum(map(sum, series.values())) == sum(r["cost_micro"] for r in rows)


def test_a_chart_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    chart, rows = tmp_path / "c.png", tmp_path / "r.csv"
    code = "import sys; sys.modules['matplotlib'] = None; from sluicegate.cli import main; main()"
    env = {**os.environ, "SLUICEGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    done = subprocess.run(
        [sys.executable, "-c", code, "report", "--chart", str(chart), "--csv", str(rows)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "drawing a chart needs matplotlib: pip install 'sluicegate[report]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not chart.exists() and not rows.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timezone", "Nowhere/Else"], "unknown time zone"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "--since must be before --until"),
        (["--since", "soon"], "ISO 8601"),
    ],
    ids=["zone", "order", "since"],
)
def test_bad_periods_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = cli(f"sqlite:///{tmp_path / 'a.db'}", "report", *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_calls_made_with_the_openai_sdk(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    with run_gateway(tmp_path, upstream_url, "limits:\n  currency: EUR\n") as gw:
        costs: dict[str, int] = defaultdict(int)
        for who, n in (("alice", 3), ("bob", 2)):
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys[who], max_retries=0)
            for i in range(n):
                done = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"echo: {'word ' * (i + 1)}"}]
                )
                assert done.usage is not None
                costs[who] += round(done.usage.prompt_tokens * 0.15 + done.usage.completion_tokens * 0.6)
        gw.audit()
        config = str(gw.config_path)
        env = {"SLUICEGATE_DATA_DIR": str(gw.data_dir)}
        result = CliRunner().invoke(main, ["report", "--json", "--period", "day", "--config", config], env=env)
        assert result.exit_code == 0, result.output
        report = orjson.loads(result.stdout)
        assert report["currency"] == "EUR"
        assert {r["consumer"]: r["cost_micro"] for r in report["consumers"]} == costs
        assert {(r["consumer"], r["model"], r["calls"]) for r in report["rows"]} == {
            ("alice", "gpt-4o-mini", 3),
            ("bob", "gpt-4o-mini", 2),
        }
        spend = CliRunner().invoke(main, ["spend", "--json", "--period", "day", "--config", config], env=env)
        assert {r["name"]: r["cost_micro"] for r in orjson.loads(spend.stdout)["rows"]} == costs
        table = CliRunner().invoke(main, ["report", "--period", "day", "--config", config], env=env)
        assert "(UTC, EUR)" in table.stdout.splitlines()[0]
