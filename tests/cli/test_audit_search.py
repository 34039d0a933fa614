"""`sluicegate audit search` and `audit export`: every filter against an oracle, a guard filter that
no other guard's name can satisfy, pages that hold while rows arrive, CSV a spreadsheet cannot run,
on SQLite and PostgreSQL, and the events of calls made with the `openai` SDK through a gateway."""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
import tracemalloc
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from click.testing import CliRunner, Result

from sluicegate.audit.events import AuditEvent
from sluicegate.audit.export import write_csv
from sluicegate.audit.search import AuditQuery, columns, search, status_range, stream
from sluicegate.cli import main
from sluicegate.store.db import create_engine
from sluicegate.testing import FakeUpstream
from tests.cli.stores import BACKENDS, event, guards_json, new_store, stored, write
from tests.conftest import guarded_alice, run_gateway

NOW = time.time()
STEP_S = 600.0
#: guard decisions of the trail's events, by `i % 8`; "other" is labelled "codename"
GUARD_SETS: list[tuple[str, ...]] = [
    ("codename",),
    ("answer-codename",),
    ("a_b",),
    ("axb",),
    ('we"ird',),
    ("other",),
    ("emails", "codename"),
    (),
]
STATUSES = [
    (200, "allowed", "ok"),
    (200, "allowed", "ok"),
    (429, "limited", "rate_limited"),
    (403, "rejected", "model_not_allowed"),
    (400, "blocked", "guard_blocked"),
    (502, "error", "upstream_error"),
    (201, "allowed", "ok"),
    (401, "denied", "invalid_key"),
]
SERVED = {"gpt-4o-mini": ("gpt-4o-mini", "openai"), "team-model": ("gpt-4o", "openai"), "claude": ("claude-x", "anth")}
#: the event whose `guards` value was cut to the column's size: it is not JSON any more
CUT = 45


def _trail_event(i: int) -> tuple[AuditEvent, tuple[str, ...]]:
    consumer = ["alice", "bob", "carol", None][i % 4]
    requested = ["gpt-4o-mini", "team-model", "claude"][i % 3]
    served, provider = SERVED[requested] if i % 7 else (None, None)
    status, decision, outcome = STATUSES[i % 8]
    names = GUARD_SETS[(i // 2) % len(GUARD_SETS)]
    guards = guards_json(*names, label="codename") if names else None
    if i == CUT:
        guards, names = guards_json("codename")[:25], ()
    e = event(
        i,
        ts=NOW - 300 - i * STEP_S,
        consumer=consumer,
        key_id=f"key_{consumer}" if consumer else None,
        model_requested=requested,
        model_served=served,
        provider=provider,
        status=status,
        decision=decision,
        outcome=outcome,
        guards=guards,
    )
    return e, names


TRAIL = [_trail_event(i) for i in range(48)]


@pytest.fixture(scope="module", params=BACKENDS)
def trail(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store holding `TRAIL`, written oldest first (so `seq` and time agree, as in a gateway)."""
    url = new_store(request.param, tmp_path_factory.mktemp("trail"), request)
    write(url, [e for e, _ in reversed(TRAIL)])
    return url


def cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"SLUICEGATE_DATABASE_URL": url})


def found(url: str, *args: str) -> list[str]:
    """Request ids `audit search --json` finds, in its order (every page at once)."""
    result = cli(url, "audit", "search", "--json", "--limit", "1000", *args)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == "last page"
    return [orjson.loads(line)["request_id"] for line in result.stdout.splitlines()]


def _ago(seconds: float) -> str:
    return dt.datetime.fromtimestamp(NOW - seconds, dt.UTC).isoformat()


def _local(seconds: float, zone: str) -> str:
    """A time `seconds` before NOW as the wall clock of `zone` shows it, with no offset."""
    return dt.datetime.fromtimestamp(NOW - seconds, zoneinfo.ZoneInfo(zone)).replace(tzinfo=None).isoformat()


def _age(e: AuditEvent) -> float:
    return time.time() - e.ts


Case = tuple[list[str], Callable[[AuditEvent, tuple[str, ...]], bool]]
CASES: dict[str, Case] = {
    "consumer": (["--consumer", "bob"], lambda e, g: e.consumer == "bob"),
    "key": (["--key", "key_carol"], lambda e, g: e.key_id == "key_carol"),
    "model-requested": (["--model", "team-model"], lambda e, g: e.model_requested == "team-model"),
    "model-served": (["--model", "gpt-4o"], lambda e, g: e.model_served == "gpt-4o"),
    "model-either": (["--model", "gpt-4o-mini"], lambda e, g: "gpt-4o-mini" in (e.model_requested, e.model_served)),
    "provider": (["--provider", "anth"], lambda e, g: e.provider == "anth"),
    "status": (["--status", "429"], lambda e, g: e.status == 429),
    "status-2xx": (["--status", "2xx"], lambda e, g: 200 <= e.status < 300),
    "status-4xx": (["--status", "4xx"], lambda e, g: 400 <= e.status < 500),
    "status-5XX": (["--status", "5XX"], lambda e, g: 500 <= e.status < 600),
    "decision": (["--decision", "blocked"], lambda e, g: e.decision == "blocked"),
    "outcome": (["--outcome", "rate_limited"], lambda e, g: e.outcome == "rate_limited"),
    "guard": (["--guard", "codename"], lambda e, g: "codename" in g),
    "guard-holding-another": (["--guard", "answer-codename"], lambda e, g: "answer-codename" in g),
    "guard-underscore": (["--guard", "a_b"], lambda e, g: "a_b" in g),
    "guard-percent": (["--guard", "a%b"], lambda e, g: False),
    "guard-quote": (["--guard", 'we"ird'], lambda e, g: 'we"ird' in g),
    "guard-label-is-not-a-name": (["--guard", "other"], lambda e, g: "other" in g),
    "guard-none": (["--guard", "code"], lambda e, g: False),
    "request-id": (["--request-id", "req_00007"], lambda e, g: e.request_id == "req_00007"),
    "since-until-iso": (
        ["--since", _ago(300 + 20.5 * STEP_S), "--until", _ago(300 + 10.5 * STEP_S)],
        lambda e, g: NOW - 300 - 20.5 * STEP_S <= e.ts < NOW - 300 - 10.5 * STEP_S,
    ),
    "since-ago": (["--since", "2h"], lambda e, g: _age(e) <= 7200),
    "until-ago": (["--until", "3h"], lambda e, g: _age(e) > 3 * 3600),
    "since-in-a-zone": (
        ["--since", _local(300 + 5.5 * STEP_S, "Asia/Kolkata"), "--timezone", "Asia/Kolkata"],
        lambda e, g: e.ts >= NOW - 300 - 5.5 * STEP_S,
    ),
    "combined": (
        ["--consumer", "alice", "--status", "2xx", "--since", "4h", "--guard", "codename"],
        lambda e, g: e.consumer == "alice" and 200 <= e.status < 300 and _age(e) < 4 * 3600 and "codename" in g,
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_each_filter_finds_what_it_names_newest_first(trail: str, case: str) -> None:
    args, keep = CASES[case]
    expected = [e.request_id for e, names in TRAIL if keep(e, names)]
    assert found(trail, *args) == expected
    if case not in ("guard-percent", "guard-none"):
        assert expected, "the case selects nothing: the trail does not exercise it"


def test_guard_filter_ignores_substrings_labels_and_cut_values(trail: str) -> None:
    """`codename` is inside `answer-codename`, in the label of `other` and in the cut value; none matches."""
    answer_only = {e.request_id for e, g in TRAIL if "answer-codename" in g}
    labelled = {e.request_id for e, g in TRAIL if "other" in g}
    hits = set(found(trail, "--guard", "codename"))
    assert hits and not hits & answer_only and not hits & labelled
    assert TRAIL[CUT][0].request_id not in hits
    assert set(found(trail, "--guard", "a_b")).isdisjoint(e.request_id for e, g in TRAIL if "axb" in g)


def test_oldest_first_and_the_table(trail: str) -> None:
    assert found(trail, "--consumer", "bob", "--oldest-first") == [
        e.request_id for e, _ in reversed(TRAIL) if e.consumer == "bob"
    ]
    table = cli(trail, "audit", "search", "--limit", "5", "--consumer", "carol", "--timezone", "Asia/Tokyo")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "(Asia/Tokyo)"]
    carol = [e for e, _ in TRAIL if e.consumer == "carol"]
    first = carol[0]
    assert first.request_id in lines[1] and "carol" in lines[1]
    assert (
        dt.datetime.fromtimestamp(first.ts, zoneinfo.ZoneInfo("Asia/Tokyo")).strftime("%Y-%m-%d %H:%M:%S") in lines[1]
    )
    assert len(lines) == 7 and lines[-1].startswith("5 event(s); next page: --after ")


@pytest.mark.parametrize("backend", BACKENDS)
def test_paging_returns_each_row_once_while_rows_arrive(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    url = new_store(backend, tmp_path, request)
    write(url, (event(i, ts=NOW + i) for i in range(95)))
    first = [r["request_id"] for r in stored(url)]
    extra = iter(range(1000, 2000))

    def arrive() -> None:
        write(url, (event(next(extra), ts=time.time()) for _ in range(3)))

    newest = _pages(url, [], arrive)
    assert newest == first[::-1]  # rows that arrived meanwhile are newer than the walk's first page
    before = len(stored(url))
    assert before == 95 + 3 * 9
    oldest = _pages(url, ["--oldest-first"], arrive)
    # rows that arrive during an oldest-first walk come on its last pages, each once
    assert oldest == [r["request_id"] for r in stored(url)] and len(oldest) > before
    assert len(set(oldest)) == len(oldest)
    # the guard filter decides in Python: its pages hold too, however sparse the matches
    write(
        url, (event(3000 + i, guards=guards_json("codename" if i % 5 == 0 else "answer-codename")) for i in range(40))
    )
    guarded = _pages(url, ["--guard", "codename", "--limit", "3"], arrive)
    assert guarded == [f"req_{3000 + i:05d}" for i in reversed(range(0, 40, 5))]


def _pages(url: str, args: list[str], between: Callable[[], None]) -> list[str]:
    seen: list[str] = []
    after: list[str] = []
    while True:
        result = cli(url, "audit", "search", "--json", "--limit", "10", *after, *args)
        assert result.exit_code == 0, result.output
        page = [orjson.loads(line) for line in result.stdout.splitlines()]
        seen.extend(r["request_id"] for r in page)
        note = result.stderr.strip()
        if note == "last page":
            return seen
        assert note == f"next page: --after {page[-1]['seq']}"
        after = ["--after", str(page[-1]["seq"])]
        between()


def test_the_table_shows_no_terminal_escapes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = new_store("sqlite", tmp_path, request)
    write(url, [event(1, model_requested="evil\x1b[2J\x07", consumer="c" * 40)])
    result = cli(url, "audit", "search")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "evil?[2J?" in result.output and "c" * 11 + "…" in result.output
    assert result.stdout.splitlines()[-1] == "1 event(s); last page"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "4x"], "status class (4xx)"),
        (["--status", "600"], "status class (4xx)"),
        (["--since", "last tuesday"], "ISO 8601"),
        (["--since", "1h", "--until", "2h"], "--since must be before --until"),
        (["--timezone", "Mars/Olympus"], "unknown time zone"),
        (["--limit", "0"], "--limit"),
        (["--after", "-1"], "--after"),
    ],
    ids=["status-class", "status-range", "since", "since-after-until", "zone", "limit", "after"],
)
def test_bad_filters_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    for command in ("search", "export"):
        if command == "export" and args[0] in ("--limit", "--after"):
            continue
        result = cli(url, "audit", command, *args)
        assert result.exit_code == 2 and message in result.output, result.output
    with pytest.raises(ValueError, match="status"):
        AuditQuery(status="4x")
    assert status_range("404") == (404, 405) and status_range("3xx") == (300, 400)


FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\tx", "\rx"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_parses_back_to_the_stored_values(tmp_path: Path, request: pytest.FixtureRequest, backend: str) -> None:
    url = new_store(backend, tmp_path, request)
    hostile = [
        event(i, ts=NOW + i, consumer=text, reason=text, model_requested="a=b", guards=guards_json('g,"1"'))
        for i, text in enumerate(FORMULAS)
    ]
    write(url, [*hostile, *(event(i, ts=NOW + i, consumer="bob", cost_micro_usd=2**62 + i) for i in range(10, 30))])
    rows = stored(url)
    out = tmp_path / "trail.csv"
    result = cli(url, "audit", "export", "--format", "csv", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"exported 26 event(s) to {out}" and result.stdout == ""
    assert not list(tmp_path.glob("*.partial"))
    with out.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == columns()
        cells = list(reader)
    assert len(cells) == len(rows)
    for cell, row in zip(cells, rows, strict=True):
        for name, value in row.items():
            assert _parsed(cell[name], value) == value, (name, cell[name], value)
        assert cell["time"] == dt.datetime.fromtimestamp(row["ts"], dt.UTC).isoformat(timespec="milliseconds")
    for cell, text in zip(cells, FORMULAS, strict=False):
        assert cell["consumer"] == "'" + text and cell["reason"] == "'" + text
        assert cell["model_requested"] == "a=b"  # not at the start: left alone
    jsonl = cli(url, "audit", "export", "--consumer", "bob", "--since", _ago(-19.5))
    assert jsonl.exit_code == 0, jsonl.output
    lines = [orjson.loads(line) for line in jsonl.stdout.splitlines()]
    assert lines == [{"time": r["time"], **row} for r, row in zip(lines, rows[16:], strict=True)]
    assert sum(r["cost_micro_usd"] for r in lines) == sum(2**62 + i for i in range(20, 30))


def _parsed(cell: str, like: Any) -> Any:
    """A CSV cell read back as the stored value's type (text un-neutralised)."""
    if like is None:
        return None if cell == "" else cell
    if isinstance(like, bool):
        return {"true": True, "false": False}[cell]
    if isinstance(like, int):
        return int(cell)
    if isinstance(like, float):
        return float(cell)
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(("=", "+", "-", "@", "\t", "\r")) else cell


def test_export_streams_in_bounded_memory(tmp_path: Path) -> None:
    """Twenty thousand events pass through the export holding about one chunk of them at a time."""
    url = f"sqlite:///{tmp_path / 'big.db'}"
    create_engine(url).dispose()
    write(url, (event(i, ts=NOW + i, reason="r" * 200) for i in range(20_000)))
    engine = create_engine(url)
    tracemalloc.start()
    try:
        count = write_csv(stream(engine, AuditQuery()), _Null(), columns())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    # Read whole first, these rows take about 30 MB here; streamed, under 2 MB.
    assert peak < 12_000_000, peak
    assert search(engine, AuditQuery(), limit=1).next_after == 20_000


class _Null(io.StringIO):
    def write(self, s: str) -> int:
        return len(s)


GUARDS = """\
guards:
  - name: codename
    kind: regex
    action: block
    applies_to: input
    settings:
      deny: ["project\\\\s+nightingale"]
  - name: answer-codename
    kind: regex
    action: block
    applies_to: output
    settings:
      deny: ["nightingale"]
groups:
  - name: guarded
    guards: [codename, answer-codename]
"""


def test_calls_made_with_the_openai_sdk_are_found_and_exported(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str
) -> None:
    with run_gateway(tmp_path, upstream_url, GUARDS) as gw:
        gw.reconfigure(guarded_alice)
        alice = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["alice"], max_retries=0)
        bob = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys["bob"], max_retries=0)
        ok = alice.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: hello"}]
        )
        ids = {"ok": ok.headers["x-request-id"]}
        usage = ok.parse().usage
        assert usage is not None
        for name, content in (("input", "about Project  Nightingale"), ("output", "echo: the nightingale sings")):
            with pytest.raises(openai.APIStatusError) as refused:
                alice.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": content}])
            ids[name] = refused.value.response.headers["x-request-id"]
        with pytest.raises(openai.PermissionDeniedError) as denied:
            bob.chat.completions.create(model="team-model", messages=[{"role": "user", "content": "hi"}])
        ids["denied"] = denied.value.response.headers["x-request-id"]
        bob.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        gw.audit()
        url = str(gw.app.engine.url.render_as_string(hide_password=False))
        assert found(url, "--guard", "codename") == [ids["input"]]
        assert found(url, "--guard", "answer-codename") == [ids["output"]]
        assert found(url, "--consumer", "bob", "--status", "4xx") == [ids["denied"]]
        assert found(url, "--model", "team-model", "--decision", "denied") == [ids["denied"]]
        assert len(found(url, "--consumer", "alice", "--since", "10m")) == 3
        [event_ok] = [
            orjson.loads(line)
            for line in cli(url, "audit", "search", "--json", "--request-id", ids["ok"]).stdout.splitlines()
        ]
        assert (
            event_ok["prompt_tokens"] == usage.prompt_tokens
            and event_ok["completion_tokens"] == usage.completion_tokens
        )
        assert event_ok["cost_micro_usd"] == round(usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.6)
        export = cli(url, "audit", "export", "--format", "csv", "--consumer", "alice")
        assert export.exit_code == 0, export.output
        rows = list(csv.DictReader(io.StringIO(export.stdout)))
        assert [r["request_id"] for r in rows] == [ids["ok"], ids["input"], ids["output"]]
        assert int(rows[0]["cost_micro_usd"]) == event_ok["cost_micro_usd"]
        assert [orjson.loads(r["guards"])[0]["guard"] for r in rows[1:]] == ["codename", "answer-codename"]
