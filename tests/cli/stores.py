"""Audit stores for the CLI tests: SQLite in a temporary folder, or a fresh database on a PostgreSQL
server started from the machine's binaries (skipped where there are none), filled by the real
`AuditWriter`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from sluicegate.audit.events import AuditEvent
from sluicegate.audit.writer import AuditWriter
from sluicegate.store.db import audit_events, create_engine

BACKENDS = ["sqlite", "postgres"]


def new_store(backend: str, folder: Path, request: pytest.FixtureRequest) -> str:
    """The URL of an empty, migrated store of `backend`."""
    if backend == "sqlite":
        url = f"sqlite:///{folder / f'{uuid.uuid4().hex}.db'}"
    else:
        from tests.postgres_server import fresh_database

        url = fresh_database(request.getfixturevalue("postgres"))
    create_engine(url).dispose()
    return url


def write(url: str, events: Iterable[AuditEvent]) -> None:
    """Store events through the audit writer, as the gateway does, and wait until they are written."""
    engine = create_engine(url)
    writer = AuditWriter(engine, batch_size=500, flush_interval_s=0.01)
    writer.start()
    for e in events:
        writer.submit(e)
    writer.close()
    engine.dispose()


def stored(url: str) -> list[dict[str, Any]]:
    """Every stored event as a dict, in `seq` order."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = [dict(row._mapping) for row in conn.execute(sa.select(audit_events).order_by(audit_events.c.seq))]
    engine.dispose()
    return rows


def guards_json(*names: str, label: str = "x") -> str:
    """A `guards` column value with one decision per guard name, as the audit stage writes it."""
    return orjson.dumps(
        [
            {"guard": n, "kind": "regex", "action": "block", "direction": "input", "part": "m0", "label": label}
            for n in names
        ]
    ).decode()


def event(i: int, ts: float | None = None, **fields: Any) -> AuditEvent:
    """An allowed chat call by alice with figures that differ per `i`; `fields` override."""
    values: dict[str, Any] = {
        "request_id": f"req_{i:05d}",
        "ts": time.time() if ts is None else ts,
        "endpoint": "chat",
        "consumer": "alice",
        "key_id": "key_alice",
        "client_ip": "127.0.0.1",
        "model_requested": "gpt-4o-mini",
        "model_served": "gpt-4o-mini",
        "provider": "openai",
        "stream": False,
        "status": 200,
        "upstream_status": 200,
        "decision": "allowed",
        "outcome": "ok",
        "reason": None,
        "rule": None,
        "guards": None,
        "prompt_tokens": 10 + i,
        "completion_tokens": 20 + 2 * i,
        "total_tokens": 30 + 3 * i,
        "usage_source": "upstream",
        "cost_micro_usd": 1_000 + 7 * i,
        "latency_ms": 1.25 + i / 8,
        "ttft_ms": None,
    }
    values.update(fields)
    return AuditEvent(**values)
