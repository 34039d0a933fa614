"""The audit writer: group commit, drain on close, loud and lossless when the store fails."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from sluicegate.audit.events import AuditEvent
from sluicegate.audit.reader import latest_events
from sluicegate.audit.writer import AuditWriter
from sluicegate.store.db import create_engine


def event(i: int) -> AuditEvent:
    return AuditEvent(
        request_id=f"req_{i}",
        ts=time.time(),
        endpoint="chat",
        consumer="alice",
        key_id="key_1",
        client_ip="127.0.0.1",
        model_requested="m",
        model_served="m",
        provider="p",
        stream=False,
        status=200,
        upstream_status=200,
        decision="allowed",
        outcome="ok",
        reason=None,
        rule=None,
        guards=None,
        prompt_tokens=1,
        completion_tokens=2,
        total_tokens=3,
        usage_source="upstream",
        cost_micro_usd=None,
        latency_ms=1.0,
        ttft_ms=1.0,
    )


def count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one())


def test_events_are_group_committed(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    batches: list[int] = []
    writer = AuditWriter(engine, batch_size=100, flush_interval_s=0.2, on_written=batches.append)
    for i in range(250):
        writer.submit(event(i))
    writer.start()
    assert writer.wait_idle(10)
    assert count(engine) == 250
    assert sum(batches) == 250
    assert len(batches) <= 4 and max(batches) == 100  # many events per transaction
    writer.close()


def test_close_drains_the_queue(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(engine, batch_size=10, flush_interval_s=1.0)
    writer.start()
    for i in range(95):
        writer.submit(event(i))
    writer.close()
    assert count(engine) == 95
    assert [e["request_id"] for e in latest_events(engine, 2)] == ["req_93", "req_94"]


def test_store_failure_is_loud_and_loses_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(engine, batch_size=50, flush_interval_s=0.01, retry_s=0.05)
    writer.start()
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    with caplog.at_level(logging.ERROR, logger="sluicegate.audit"):
        for i in range(20):
            writer.submit(event(i))
        deadline = time.monotonic() + 5
        while writer.healthy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not writer.healthy and writer.last_error
        assert "AUDIT STORE WRITE FAILED" in caplog.text
        assert writer.pending == 20
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    assert writer.wait_idle(10)
    assert writer.healthy
    assert count(engine) == 20
    writer.close()


def rows(engine: sa.Engine, where: str = "1=1") -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM audit_events WHERE {where}"))]


def test_a_number_past_64_bits_is_clamped_and_the_writer_goes_on(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(engine, batch_size=10, flush_interval_s=0.01, retry_s=0.05, spill_dir=tmp_path)
    writer.start()
    bad = event(0)
    bad.prompt_tokens = 2**63
    bad.completion_tokens = -(2**70)
    bad.cost_micro_usd = 2**64
    bad.latency_ms = float("nan")
    writer.submit(bad)
    for i in range(1, 5):
        writer.submit(event(i))
    assert writer.wait_idle(5)
    assert writer.healthy and writer.poisoned == 0
    (row,) = rows(engine, "request_id = 'req_0'")
    assert row["prompt_tokens"] == 2**31 - 1 and row["completion_tokens"] == -(2**31)
    assert row["cost_micro_usd"] == 2**63 - 1 and row["latency_ms"] == 0.0
    assert count(engine) == 5
    writer.close()


def test_strings_are_bounded_to_their_columns(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(engine, flush_interval_s=0.01, spill_dir=tmp_path)
    writer.start()
    bad = event(0)
    bad.model_requested = "m" * 10_000
    bad.consumer = "a\0b\ud800c"
    bad.reason = "r" * 1_000_000
    writer.submit(bad)
    assert writer.wait_idle(5)
    (row,) = rows(engine)
    assert row["model_requested"] == "m" * 200
    assert row["consumer"] == "ab?c"
    assert len(str(row["reason"])) == 32 * 1024
    writer.close()


def _refuse_request_ids(engine: sa.Engine, *ids: str) -> None:
    """A store constraint that refuses these events (as a value out of range would on PostgreSQL)."""
    listed = ", ".join(f"'{i}'" for i in ids)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_events "
                f"WHEN NEW.request_id IN ({listed}) BEGIN SELECT RAISE(ABORT, 'value refused'); END"
            )
        )


def test_rows_the_store_refuses_are_set_aside_and_the_rest_is_written(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    _refuse_request_ids(engine, "req_7", "req_30")
    writer = AuditWriter(engine, batch_size=50, flush_interval_s=0.05, retry_s=0.05, spill_dir=tmp_path)
    for i in range(50):
        writer.submit(event(i))
    writer.start()
    assert writer.wait_idle(5)
    assert writer.healthy and writer.poisoned == 2
    assert count(engine) == 48
    poison = [orjson.loads(line) for line in (tmp_path / "audit-poison.jsonl").read_bytes().splitlines()]
    assert sorted(p["event"]["request_id"] for p in poison) == ["req_30", "req_7"]
    assert {p["error"] for p in poison} == {"IntegrityError"}
    writer.submit(event(99))  # nothing is retried forever: the next event goes in at once
    assert writer.wait_idle(5) and count(engine) == 49
    assert not (tmp_path / "audit-spill.jsonl").exists()
    writer.close()


def _spilled_ids(folder: Path) -> list[str]:
    """Request ids in the spill files. While the store fails, each retry moves the live file
    aside to replay it (`audit-spill.<n>.jsonl`): read whichever names they have now, again if
    one moves while it is read."""
    for _ in range(50):
        try:
            data = b"".join(path.read_bytes() for path in sorted(folder.glob("audit-spill*.jsonl")))
        except FileNotFoundError:
            continue
        return [orjson.loads(line)["request_id"] for line in data.splitlines()]
    raise AssertionError("the spill files kept moving")


def test_an_unwritable_store_spills_to_disk_and_the_spill_is_replayed(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(engine, batch_size=5, flush_interval_s=0.01, retry_s=0.05, spill_dir=tmp_path)
    writer.start()
    _rename(engine, "audit_events", "audit_events_away")
    for i in range(12):
        writer.submit(event(i))
    assert writer.wait_idle(5)  # nothing pending: every event is on disk
    assert not writer.healthy and writer.status()["spilled"] == 12
    assert sorted(_spilled_ids(tmp_path)) == sorted(f"req_{i}" for i in range(12))
    _rename(engine, "audit_events_away", "audit_events")
    deadline = time.monotonic() + 5
    while (count(engine) < 12 or not writer.healthy) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.healthy and count(engine) == 12
    assert not list(tmp_path.glob("audit-spill*"))
    writer.close()


def test_a_replay_is_idempotent(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(engine, flush_interval_s=0.01, spill_dir=tmp_path)
    writer.start()
    for i in range(3):
        writer.submit(event(i))
    assert writer.wait_idle(5)
    writer.close()
    # A spill file holding events the store has (a commit that timed out), twice, and one cut line.
    lines = [json.dumps({**event(i).as_row(), "prompt_tokens": 2**70}).encode() for i in (1, 2, 2, 3, 4)]
    (tmp_path / "audit-spill.jsonl").write_bytes(b"\n".join(lines) + b'\n{"request_id": "req_5", "ts"')
    again = AuditWriter(engine, flush_interval_s=0.01, spill_dir=tmp_path)
    again.start()
    assert sorted(r["request_id"] for r in rows(engine)) == [f"req_{i}" for i in range(5)]
    assert not list(tmp_path.glob("audit-spill*"))
    assert again.replayed == 5 and again.poisoned == 1
    assert b"unreadable spill line" in (tmp_path / "audit-poison.jsonl").read_bytes()
    again.close()


def test_past_the_queue_bound_events_go_to_the_spill_file(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(engine, flush_interval_s=0.01, max_queue_events=5, spill_dir=tmp_path)
    for i in range(20):  # the writer thread is not running yet: the queue fills
        writer.submit(event(i))
    assert not writer.accepting
    deadline = time.monotonic() + 5
    while writer.pending > 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.pending == 5 and writer.status()["spilled"] == 15
    writer.start()
    assert writer.wait_idle(5)
    writer.close()
    assert count(engine) == 20


def test_close_spills_what_the_store_cannot_take(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(engine, batch_size=100, flush_interval_s=5, retry_s=0.05, spill_dir=tmp_path)
    writer.start()
    _rename(engine, "audit_events", "audit_events_away")
    for i in range(40):
        writer.submit(event(i))
    with caplog.at_level(logging.WARNING, logger="sluicegate.audit"):
        writer.close()
    assert writer.pending == 0 and writer.lost == 0
    assert "AUDIT EVENTS SPILLED: 40 events" in caplog.text and str(tmp_path / "audit-spill.jsonl") in caplog.text
    assert len((tmp_path / "audit-spill.jsonl").read_bytes().splitlines()) == 40


def test_commit_resolves_once_the_event_is_durable(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(engine, batch_size=100, flush_interval_s=0.05, retry_s=0.05, spill_dir=tmp_path)
    writer.start()

    async def commit_many(n: int, first: int) -> list[bool]:
        return list(await asyncio.gather(*(writer.commit(event(first + i)) for i in range(n))))

    assert asyncio.run(commit_many(30, 0)) == [True] * 30
    assert count(engine) == 30  # committed, not merely queued, when the futures resolve
    _rename(engine, "audit_events", "audit_events_away")
    assert asyncio.run(commit_many(5, 100)) == [True] * 5  # in the spill file, fsynced
    assert len((tmp_path / "audit-spill.jsonl").read_bytes().splitlines()) == 5
    # (moved aside as a replay does: still waiting for the store)
    (tmp_path / "audit-spill.jsonl").rename(tmp_path / "audit-spill.00000000000000000001-1.jsonl")
    (tmp_path / "audit-spill.jsonl").mkdir()  # the spill file cannot be written either
    assert asyncio.run(commit_many(2, 200)) == [False, False]
    assert writer.spill_error is not None and writer.pending == 2
    (tmp_path / "audit-spill.jsonl").rmdir()
    _rename(engine, "audit_events_away", "audit_events")
    assert writer.wait_idle(5)
    writer.close()
    assert count(engine) == 37


def _rename(engine: sa.Engine, old: str, new: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))


def test_a_store_that_refuses_every_row_is_unavailable_not_a_poison_source(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.begin() as conn:  # e.g. permissions revoked: every insert fails, not for a value of its own
        conn.execute(
            sa.text("CREATE TRIGGER refuse BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'no'); END")
        )
    writer = AuditWriter(engine, batch_size=20, flush_interval_s=0.01, retry_s=0.05, spill_dir=tmp_path)
    writer.start()
    for i in range(10):
        writer.submit(event(i))
    assert writer.wait_idle(5)
    assert not writer.healthy and writer.poisoned == 0 and writer.status()["spilled"] == 10
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER refuse"))
    deadline = time.monotonic() + 5
    while count(engine) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count(engine) == 10 and not (tmp_path / "audit-poison.jsonl").exists()
    writer.close()


def test_each_event_names_the_instance_that_wrote_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sluicegate.settings import Settings

    monkeypatch.setenv("SLUICEGATE_INSTANCE_ID", "gw-eu-1")
    assert Settings.from_env().instance() == "gw-eu-1"
    monkeypatch.delenv("SLUICEGATE_INSTANCE_ID")
    assert Settings.from_env().instance().endswith(f":{os.getpid()}")
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    writer = AuditWriter(engine, instance="gw-eu-1")
    writer.submit(event(1))
    named = event(2)
    named.instance = "gw-us-2"  # an event that names its instance keeps it (a replayed one)
    writer.submit(named)
    writer.start()
    assert writer.wait_idle(10)
    writer.close()
    assert {e["request_id"]: e["instance"] for e in latest_events(engine, 10)} == {
        "req_1": "gw-eu-1",
        "req_2": "gw-us-2",
    }
