"""The audit writer against a real PostgreSQL: its ranges, its aborted transactions, its outages.

A server is started for the module from the machine's PostgreSQL binaries (initdb in a temporary
folder, loopback only); the tests are skipped where there are none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sluicegate.audit.writer import AuditWriter
from sluicegate.store.db import create_engine
from tests.audit.test_writer import event
from tests.postgres_server import Postgres, fresh_database

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def engine(postgres: Postgres) -> Iterator[sa.Engine]:
    # A database per test: the audit table is append-only, so it cannot be emptied between tests.
    engine = create_engine(fresh_database(postgres))
    yield engine
    engine.dispose()


def count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one())


def test_values_past_postgres_ranges_are_bounded(engine: sa.Engine, tmp_path: Path) -> None:
    writer = AuditWriter(engine, flush_interval_s=0.01, retry_s=0.05, spill_dir=tmp_path)
    writer.start()
    bad = event(0)
    bad.prompt_tokens = 2**40  # INTEGER is 32 bits in PostgreSQL
    bad.cost_micro_usd = 2**63
    bad.model_requested = "m" * 5000  # VARCHAR(200)
    bad.reason = "NUL\0inside"  # PostgreSQL text holds no NUL
    bad.consumer = "\ud800"
    writer.submit(bad)
    writer.submit(event(1))
    assert writer.wait_idle(10)
    assert writer.healthy and writer.poisoned == 0 and count(engine) == 2
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM audit_events WHERE request_id = 'req_0'")).one()._mapping
    assert row["prompt_tokens"] == 2**31 - 1 and row["cost_micro_usd"] == 2**63 - 1
    assert len(row["model_requested"]) == 200 and row["reason"] == "NULinside"
    writer.close()


@pytest.mark.parametrize("kind", ["check", "trigger"])
def test_rows_postgres_refuses_are_set_aside_each_part_in_its_own_transaction(
    engine: sa.Engine, tmp_path: Path, kind: str
) -> None:
    with engine.begin() as conn:
        if kind == "check":  # IntegrityError
            conn.execute(sa.text("ALTER TABLE audit_events ADD CONSTRAINT no_poison CHECK (request_id <> 'req_13')"))
        else:  # RAISE EXCEPTION: an InternalError, neither a value's nor a connection's error class
            conn.execute(
                sa.text(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF NEW.request_id = 'req_13' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$"
                )
            )
            conn.execute(
                sa.text("CREATE TRIGGER refuse BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse()")
            )
    try:
        writer = AuditWriter(engine, batch_size=40, flush_interval_s=0.05, retry_s=0.05, spill_dir=tmp_path)
        for i in range(40):
            writer.submit(event(i))
        writer.start()
        assert writer.wait_idle(10)
        assert writer.healthy and writer.poisoned == 1 and count(engine) == 39
        assert b'"req_13"' in (tmp_path / "audit-poison.jsonl").read_bytes()
        writer.close()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE audit_events DROP CONSTRAINT IF EXISTS no_poison"))
            conn.execute(sa.text("DROP TRIGGER IF EXISTS refuse ON audit_events"))
            conn.execute(sa.text("DROP FUNCTION IF EXISTS refuse()"))


def test_a_postgres_outage_spills_and_the_spill_is_replayed(
    postgres: Postgres, engine: sa.Engine, tmp_path: Path
) -> None:
    writer = AuditWriter(engine, batch_size=10, flush_interval_s=0.01, retry_s=0.1, spill_dir=tmp_path)
    writer.start()
    writer.submit(event(0))
    assert writer.wait_idle(10) and count(engine) == 1
    postgres.stop()
    try:
        for i in range(1, 21):
            writer.submit(event(i))
        assert writer.wait_idle(20)
        assert not writer.healthy and writer.status()["spilled"] == 20 and writer.poisoned == 0
    finally:
        postgres.start()
    deadline = time.monotonic() + 20
    while (count(engine) < 21 or not writer.healthy) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count(engine) == 21 and writer.healthy
    assert not list(tmp_path.glob("audit-spill*"))
    writer.close()


# -- the hash chain on PostgreSQL ------------------------------------------------------------------

CHAIN_KEY = "a test key that is long enough"


def test_writers_sharing_postgres_make_one_gapless_verifiable_chain(engine: sa.Engine, tmp_path: Path) -> None:
    from sluicegate.audit.chain import Chain, ChainKey, verify

    key = ChainKey.from_secret(CHAIN_KEY)
    url = engine.url.render_as_string(hide_password=False)
    writers = [
        AuditWriter(create_engine(url), flush_interval_s=0.001, batch_size=5, chain=Chain(key)) for _ in range(3)
    ]
    for w in writers:
        w.start()
    for i in range(240):
        writers[i % 3].submit(event(i))
    for w in writers:
        assert w.wait_idle(20)
        w.close()
    result = verify(engine, key)
    assert result.intact, result.problems
    assert (result.events, result.first, result.last, result.head_seq) == (240, 1, 240, 240)


def test_postgres_refuses_update_delete_and_truncate_until_retention_covers_an_event(engine: sa.Engine) -> None:
    from sluicegate.audit.chain import Chain, ChainKey, retain, verify
    from sluicegate.store.db import APPEND_ONLY

    key = ChainKey.from_secret(CHAIN_KEY)
    writer = AuditWriter(engine, flush_interval_s=0.001, chain=Chain(key))
    writer.start()
    for i in range(10):
        e = event(i)
        e.ts = 1000.0 + i
        writer.submit(e)
    assert writer.wait_idle(10)
    writer.close()
    for statement in (
        "UPDATE audit_events SET consumer = 'mallory' WHERE chain_seq = 2",
        "DELETE FROM audit_events WHERE chain_seq = 2",
        "TRUNCATE audit_events",
    ):
        with pytest.raises(sa.exc.DatabaseError, match=APPEND_ONLY), engine.begin() as conn:
            conn.execute(sa.text(statement))
    done = retain(engine, Chain(key), 1004.5)
    assert (done.through_seq, done.deleted) == (5, 5)
    with pytest.raises(sa.exc.DatabaseError, match=APPEND_ONLY), engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_checkpoints"))
    result = verify(engine, key)
    assert result.intact, result.problems
    assert result.checkpoint == 5 and result.events == 6
    # Tampering with what is left is reported at its position.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        conn.execute(sa.text("UPDATE audit_events SET total_tokens = 99 WHERE chain_seq = 7"))
    result = verify(engine, key)
    assert [(p.kind, p.position) for p in result.problems][:1] == [("edited", 7)]
