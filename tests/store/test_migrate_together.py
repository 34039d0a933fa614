"""Instances starting together on one empty database: the migrations run once, under a lock.

Real processes (the lock is between connections of different processes), each started with its
engine made and connected first, then released at once to `migrate` (what `create_engine` runs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from sluicegate.store import db
from sluicegate.store.db import GENESIS_HASH, audit_chain, create_engine, meta, migrations_table
from tests.postgres_server import Postgres, fresh_database

#: processes started together
INSTANCES = 4
#: fresh databases per test, each a new race (with the lock taken out, 12 rounds of 12 lost it on each)
ROUNDS = 2

#: one instance: the engine as `create_engine` makes it (its migration held back) and a connection
#: open in its pool, then, at the word, `migrate`: released together, they race for the migrations
CHILD = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from sluicegate.store import db
migrate, db.migrate = db.migrate, lambda engine: []
engine = db.create_engine(sys.argv[1])
db.migrate = migrate
engine.connect().close()
print("ready", flush=True)
sys.stdin.readline()
db.migrate(engine)
engine.dispose()
"""


def _start_together(url: str) -> list[str]:
    """Run `INSTANCES` processes released at the same instant on `url`; return their stderr,
    failing the test with it if any of them failed."""
    pipe = subprocess.PIPE
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, url], stdin=pipe, stdout=pipe, stderr=pipe, text=True)
        for _ in range(INSTANCES)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.communicate(timeout=30)[1][-2000:]
        for proc in procs:  # the word to all of them before any is waited on
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=180) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = [(proc.returncode, err[-3000:]) for proc, (_, err) in zip(procs, outputs, strict=True) if proc.returncode]
    assert not failed, f"{len(failed)} of {INSTANCES} instances failed to start:\n" + "\n---\n".join(
        f"exit {code}:\n{err}" for code, err in failed
    )
    return [err for _, err in outputs]


def _migrated_once(url: str) -> None:
    logs = _start_together(url)
    everything = ", ".join(name for name, _ in db.MIGRATIONS)
    # One instance applied every migration; the others, after it, found them applied.
    assert sorted(err.count("database migrated:") for err in logs) == [0] * (INSTANCES - 1) + [1], logs
    assert any(f"database migrated: {everything}\n" in err for err in logs), logs
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = conn.execute(sa.select(migrations_table.c.name).order_by(migrations_table.c.name)).scalars().all()
            genesis = conn.execute(sa.select(audit_chain.c.name, audit_chain.c.seq, audit_chain.c.hash)).all()
            counters = conn.execute(sa.select(meta.c.key, meta.c.value)).all()
        assert names == sorted(name for name, _ in db.MIGRATIONS)  # each once
        assert [tuple(row) for row in genesis] == [("main", 0, GENESIS_HASH)]
        assert [tuple(row) for row in counters] == [("keys_version", 0)]
        assert db.migrate(engine) == []
    finally:
        engine.dispose()


def test_instances_starting_together_on_one_sqlite_file_migrate_it_once(tmp_path: Path) -> None:
    for i in range(ROUNDS):
        _migrated_once(f"sqlite:///{tmp_path / f'round{i}' / 'sluicegate.db'}")


def test_instances_starting_together_on_one_postgresql_database_migrate_it_once(postgres: Postgres) -> None:
    for _ in range(ROUNDS):
        _migrated_once(fresh_database(postgres))


def test_the_postgresql_lock_key_is_the_documented_one() -> None:
    # Instances of different releases must take the same lock: the key never changes.
    assert db.MIGRATE_LOCK_KEY == -235332653065130559


def test_a_failed_migration_leaves_the_sqlite_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One transaction from `BEGIN IMMEDIATE`: the DDL before the failure is rolled back with it
    # (the driver alone would have committed each statement before the first INSERT).
    def m999_fails(conn: sa.Connection) -> None:
        conn.execute(sa.text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("the migration failed")

    monkeypatch.setattr(db, "MIGRATIONS", [*db.MIGRATIONS, ("m999_fails", m999_fails)])
    url = f"sqlite:///{tmp_path / 'sluicegate.db'}"
    with pytest.raises(RuntimeError, match="the migration failed"):
        create_engine(url)
    engine = sa.create_engine(url)
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


def test_sqlite_connections_keep_their_busy_timeout_after_migrating(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'sluicegate.db'}")
    with engine.connect() as conn:  # the pooled connection `migrate` used
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 5000
    engine.dispose()
