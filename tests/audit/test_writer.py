"""The audit writer: group commit, drain on close, loud and lossless when the store fails."""

from __future__ import annotations

import logging
import time
from pathlib import Path

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
