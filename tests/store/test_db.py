"""The database's migrations: a store made by an earlier release upgrades in place."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sluicegate.audit.chain import Chain, ChainKey, verify
from sluicegate.audit.writer import AuditWriter
from sluicegate.store import db
from sluicegate.store.db import CHAIN_COLUMNS, USAGE_DETAIL_COLUMNS, audit_events, create_engine
from tests.audit.test_writer import event
from tests.audit.test_writer_postgres import Postgres

#: the migrations an earlier release applied, before the audit kept usage details
EARLIER = ("m001_initial", "m002_secrets")
CHAIN_NAMES = {name for name, _ in CHAIN_COLUMNS}


def _earlier_store(url: str) -> None:
    """A database as a release with only `EARLIER` left it: `audit_events` without the usage
    detail columns, one event in it, both migrations recorded."""
    old = sa.MetaData()
    sa.Table(
        audit_events.name,
        old,
        *(
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, autoincrement=c.autoincrement)
            for c in audit_events.columns
            if c.name not in USAGE_DETAIL_COLUMNS and c.name not in CHAIN_NAMES
        ),
    )
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        old.create_all(conn)
        db.m001_initial(conn)  # its audit table exists already: it adds the rest
        db.m002_secrets(conn)
        db.migrations_table.create(conn, checkfirst=True)
        conn.execute(db.migrations_table.insert(), [{"name": name} for name in EARLIER])
        conn.execute(
            sa.text(
                "INSERT INTO audit_events (request_id, ts, endpoint, stream, status, decision, outcome,"
                " prompt_tokens, usage_source, latency_ms) VALUES ('req_old', 1.0, 'chat', false, 200,"
                " 'allowed', 'ok', 5, 'upstream', 1.0)"
            )
        )
    engine.dispose()


def _columns(engine: sa.Engine) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(audit_events.name)}


def _upgrades(url: str) -> None:
    _earlier_store(url)
    engine = sa.create_engine(url)
    assert not _columns(engine) & set(USAGE_DETAIL_COLUMNS)
    assert db.migrate(engine) == [
        "m003_usage_details",
        "m004_audit_chain",
        "m005_cache",
        "m006_attempts",
        "m007_routed_by",
    ]
    added = {name for name, _ in db.CACHE_COLUMNS} | {"attempts", "routed_by"}
    assert set(USAGE_DETAIL_COLUMNS) | CHAIN_NAMES | added <= _columns(engine)
    assert db.migrate(engine) == []
    engine.dispose()
    # The writer stores the new fields; the earlier event reads back with them NULL.
    engine = create_engine(url)
    key = ChainKey.from_secret("a test key that is long enough")
    writer = AuditWriter(engine, batch_size=10, flush_interval_s=0.01, chain=Chain(key))
    writer.start()
    new = event(1)
    new.cached_tokens, new.cache_write_tokens, new.reasoning_tokens = 3, 4, 5
    writer.submit(new)
    assert writer.wait_idle(10)
    writer.close()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT request_id, prompt_tokens, cached_tokens, cache_write_tokens, reasoning_tokens"
                    " FROM audit_events ORDER BY seq")
        ).all()  # fmt: skip
    assert [tuple(r) for r in rows] == [("req_old", 5, None, None, None), ("req_1", 1, 3, 4, 5)]
    # The chain begins after the earlier events: they are counted, not reported as inserted.
    report = verify(engine, key)
    assert report.intact, report.problems
    assert (report.legacy, report.events, report.first) == (1, 1, 1)
    engine.dispose()


def test_a_sqlite_store_from_an_earlier_release_upgrades(tmp_path: Path) -> None:
    _upgrades(f"sqlite:///{tmp_path / 'old.db'}")


def test_a_new_store_has_the_columns_and_m003_changes_nothing(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    assert set(USAGE_DETAIL_COLUMNS) <= _columns(engine)
    with engine.connect() as conn:
        done = set(conn.execute(sa.select(db.migrations_table.c.name)).scalars())
    assert {name for name, _ in db.MIGRATIONS} == done
    engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL server (skipped where none is installed)."""
    # Not under pytest's temporary folder: the `postgres` user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="sluicegate-pg-"))
    try:
        server = Postgres(root)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_postgresql_store_from_an_earlier_release_upgrades(pg_url: str) -> None:
    _upgrades(pg_url)
