"""The database's migrations: a store made by an earlier release upgrades in place."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sluicegate.audit.chain import CHAIN_FIELDS, DEFAULT_KEY_FILE, Chain, ChainKey, verify
from sluicegate.audit.events import FIELDS, AuditEvent
from sluicegate.audit.rows import row_of
from sluicegate.audit.writer import AuditWriter
from sluicegate.cli import main
from sluicegate.store import db
from sluicegate.store.db import CHAIN_COLUMNS, USAGE_DETAIL_COLUMNS, audit_events, create_engine
from tests.audit.test_writer import event
from tests.postgres_server import Postgres

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
        "m008_instance",
        "m009_egress",
    ]
    added = {name for name, _ in (*db.CACHE_COLUMNS, *db.EGRESS_COLUMNS)} | {"attempts", "routed_by", "instance"}
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


# -- from the previous release: everything up to `m006_attempts` ----------------------------------

#: the migrations the previous release applied; those after them are this release's
_NAMES = [name for name, _ in db.MIGRATIONS]
PREVIOUS = tuple(_NAMES[: _NAMES.index("m006_attempts") + 1])
NEW = _NAMES[len(PREVIOUS) :]
#: `audit_events` as the previous release made it (history: it does not follow the current table)
PREVIOUS_COLUMNS = (
    "seq", "request_id", "ts", "endpoint", "consumer", "key_id", "client_ip", "model_requested",
    "model_served", "provider", "stream", "status", "upstream_status", "decision", "outcome", "reason",
    "rule", "guards", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
    "cache_write_tokens", "reasoning_tokens", "usage_source", "cost_micro_usd", "latency_ms", "ttft_ms",
    "prompt_hmac", "answer_hmac", "content", "chain_seq", "chain_hash", "cache", "cache_saved_micro_usd",
    "attempts",
)  # fmt: skip
#: the columns this release added to `audit_events`
ADDED = tuple(c.name for c in audit_events.columns if c.name not in PREVIOUS_COLUMNS)
SECRET = "the previous release's audit chain key"


def _previous_store(url: str, key: ChainKey) -> list[AuditEvent]:
    """A database as the previous release left it: its migrations applied and recorded, and
    events chained by its writer (in its columns: no `routed_by`); return those events."""
    old = sa.MetaData()
    old_events = sa.Table(
        audit_events.name,
        old,
        *(
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable,
                      autoincrement=c.autoincrement, index=c.index)
            for c in audit_events.columns
            if c.name in PREVIOUS_COLUMNS
        ),
    )  # fmt: skip
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        old.create_all(conn)
        db.migrations_table.create(conn)
        for name, fn in db.MIGRATIONS:
            if name in PREVIOUS:
                fn(conn)  # m001 finds its audit table made: it makes the rest
                conn.execute(db.migrations_table.insert().values(name=name))
    events = []
    for i in range(3):
        old_event = event(100 + i)
        old_event.attempts = orjson.dumps([{"target": "p/m", "status": 200}]).decode()
        old_event.cache, old_event.cache_saved_micro_usd = ("hit", 7) if i == 1 else ("miss", None)
        old_event.cached_tokens = i
        old_event.prompt_hmac = f"{i:064x}"
        # Fields unknown to that release are null: not in its canonical form, as they were not.
        assert all(getattr(old_event, name) is None for name in ADDED)
        events.append(old_event)
    # Its writer's transaction: the chain extended under the head's lock, the rows in its columns.
    columns = [name for name in (*FIELDS, *CHAIN_FIELDS) if name in PREVIOUS_COLUMNS]
    chain = Chain(key)
    with engine.begin() as conn:
        rows = chain.extend(conn, [row_of(e) for e in events])
        values = [dict(zip((*FIELDS, *CHAIN_FIELDS), row, strict=True)) for row in rows]
        conn.execute(old_events.insert(), [{name: v[name] for name in columns} for v in values])
    engine.dispose()
    return events


def _cli_verify(url: str, data_dir: Path) -> dict[str, object]:
    """`sluicegate audit verify --json` on the database (the key in the data folder's key file)."""
    env = {"SLUICEGATE_DATA_DIR": str(data_dir), "SLUICEGATE_DATABASE_URL": url}
    result = CliRunner().invoke(main, ["audit", "verify", "--json"], env=env, catch_exceptions=False)
    report: dict[str, object] = orjson.loads(result.stdout)
    assert result.exit_code == (0 if report["intact"] else 1), result.output
    return report


def _upgrades_from_previous(url: str, data_dir: Path) -> None:
    key = ChainKey.from_secret(SECRET)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / DEFAULT_KEY_FILE).write_text(SECRET + "\n")
    old_events = _previous_store(url, key)
    engine = sa.create_engine(url)
    assert not _columns(engine) & set(ADDED)
    with engine.connect() as conn:  # (this release's `verify` reads this release's columns)
        head = conn.execute(sa.select(db.audit_chain.c.seq, db.audit_chain.c.hash)).one()
    assert head.seq == 3
    assert "routed_by" in ADDED and "m007_routed_by" in NEW
    assert db.migrate(engine) == NEW
    assert set(ADDED) <= _columns(engine)
    assert db.migrate(engine) == []
    engine.dispose()
    # The chain written before the upgrade still verifies, by the library and the CLI.
    engine = create_engine(url)
    report = verify(engine, key)
    assert report.intact, report.problems
    assert (report.events, report.first, report.last, report.legacy) == (3, 1, 3, 0)
    assert (report.head_seq, report.head_hash) == (3, head.hash)
    cli = _cli_verify(url, data_dir)
    assert (cli["intact"], cli["events"], cli["last"]) == (True, 3, 3)
    # The current writer continues the chain with the new column.
    writer = AuditWriter(engine, batch_size=10, flush_interval_s=0.01, chain=Chain(key))
    writer.start()
    new = event(1)
    new.routed_by = orjson.dumps({"rule": "pii", "pins": ["eu"]}).decode()
    writer.submit(new)
    assert writer.wait_idle(10)
    writer.close()
    # The old events read back as they were written, the new column NULL; the new one has it.
    names = ("request_id", "attempts", "cache", "cache_saved_micro_usd", "cached_tokens", "prompt_hmac", "routed_by")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*(audit_events.c[n] for n in names)).order_by(audit_events.c.seq)).all()
    expected = [tuple(getattr(e, n) for n in names) for e in (*old_events, new)]
    assert [tuple(r) for r in rows] == expected
    assert rows[-1].routed_by is not None
    with engine.connect() as conn:  # every column this release added is NULL in the old events
        added = conn.execute(sa.select(*(audit_events.c[n] for n in ADDED)).order_by(audit_events.c.seq)).all()
    assert [tuple(r) for r in added[:-1]] == [(None,) * len(ADDED)] * len(old_events)
    report = verify(engine, key)
    assert report.intact, report.problems
    assert (report.events, report.first, report.last) == (4, 1, 4)
    cli = _cli_verify(url, data_dir)
    assert (cli["intact"], cli["events"], cli["last"]) == (True, 4, 4)
    engine.dispose()


def test_a_sqlite_store_from_the_previous_release_upgrades(tmp_path: Path) -> None:
    _upgrades_from_previous(f"sqlite:///{tmp_path / 'previous.db'}", tmp_path / "data")


def test_a_postgresql_store_from_the_previous_release_upgrades(pg_url: str, tmp_path: Path) -> None:
    _upgrades_from_previous(pg_url, tmp_path / "data")
