"""The gateway's database: tables, ordered migrations, and engine creation.

SQLite (WAL) by default, in the data folder; any SQLAlchemy URL works (PostgreSQL for many
instances). Migrations are named functions applied in order and recorded in `_migrations`, in
one transaction that holds the database's migration lock: instances starting together on one
database apply them once (`migrate`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger("sluicegate.store")

metadata = sa.MetaData()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("consumer", sa.String(200), nullable=False, index=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("consumer", sa.String(200)),
    sa.Column("key_id", sa.String(32)),
    sa.Column("client_ip", sa.String(64)),
    sa.Column("model_requested", sa.String(200)),
    sa.Column("model_served", sa.String(200)),
    sa.Column("provider", sa.String(200)),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("upstream_status", sa.Integer),
    sa.Column("decision", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("rule", sa.String(200)),
    #: guard decisions as JSON: guard, kind, action, direction, part, label (never the matched text)
    sa.Column("guards", sa.Text),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("total_tokens", sa.Integer),
    #: usage details (`m003_usage_details`): cache reads and writes among the prompt tokens,
    #: reasoning among the completion tokens; NULL where the upstream did not say
    sa.Column("cached_tokens", sa.Integer),
    sa.Column("cache_write_tokens", sa.Integer),
    sa.Column("reasoning_tokens", sa.Integer),
    sa.Column("usage_source", sa.String(16), nullable=False),
    sa.Column("cost_micro_usd", sa.BigInteger),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("ttft_ms", sa.Float),
    #: HMACs of the request body as received and the response body as sent (`m004_audit_chain`):
    #: they prove what was said without keeping it; `content` holds it where capture is enabled
    sa.Column("prompt_hmac", sa.String(64)),
    sa.Column("answer_hmac", sa.String(64)),
    sa.Column("content", sa.Text),
    #: the event's place in the hash chain and `HMAC(key, previous hash, canonical event)`; set by
    #: the writer in the transaction that stores the event (`audit.chain`)
    sa.Column("chain_seq", sa.BigInteger),
    sa.Column("chain_hash", sa.String(64)),
    #: what the response cache did, and what a hit saved (`m005_cache`)
    sa.Column("cache", sa.String(16)),
    sa.Column("cache_saved_micro_usd", sa.BigInteger),
    #: a multi-target route's attempts (`m006_attempts`)
    sa.Column("attempts", sa.Text),
    #: the routing rules that chose or narrowed the call's targets (`m007_routed_by`)
    sa.Column("routed_by", sa.Text),
    #: the gateway process that wrote the event (`m008_instance`)
    sa.Column("instance", sa.String(128)),
    #: the door of a call that did not come by the data plane, and the host it was for (`m009_egress`)
    sa.Column("door", sa.String(16)),
    sa.Column("egress_host", sa.String(255)),
    sa.Index("ix_audit_events_chain_seq", "chain_seq", unique=True),
)

#: the head of the audit hash chain: one row, locked by every transaction that extends the chain
audit_chain = sa.Table(
    "audit_chain",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    #: which key wrote the chain (a short hash of it, never the key)
    sa.Column("key_id", sa.String(32)),
    #: events stored before the chain began have `seq` up to this and no `chain_seq`
    sa.Column("legacy_max_seq", sa.BigInteger, nullable=False),
)

#: retention checkpoints: the chain position through which events were deleted, and its hash
audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    #: the chain position through which events were deleted
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    #: events at or before this time (and at or before `seq`) may be deleted
    sa.Column("through_ts", sa.Float, nullable=False),
    sa.Column("deleted", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),
    #: HMAC of the checkpoint's fields, so that one cannot be made without the key
    sa.Column("mac", sa.String(64), nullable=False),
)

secrets_table = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    # AES-256-GCM under the master key; the secret's name is bound as associated data
    sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("nonce", sa.LargeBinary(12), nullable=False),
    #: which master key encrypted the row (a short hash of it, never the key)
    sa.Column("key_id", sa.String(32), nullable=False),
    #: short SHA-256 of the value, shown by `secrets list` to tell values apart
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

migrations_table = sa.Table(
    "_migrations",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("applied_at", sa.DateTime, server_default=sa.func.now()),
)

Migration = Callable[[sa.Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    """Append a migration; its function name is its permanent id."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(conn: sa.Connection) -> None:
    for table in (meta, api_keys, audit_events):
        table.create(conn, checkfirst=True)
    conn.execute(meta.insert(), [{"key": "keys_version", "value": 0}])


@migration
def m002_secrets(conn: sa.Connection) -> None:
    secrets_table.create(conn, checkfirst=True)


#: columns `m003_usage_details` adds to `audit_events`
USAGE_DETAIL_COLUMNS = ("cached_tokens", "cache_write_tokens", "reasoning_tokens")


@migration
def m003_usage_details(conn: sa.Connection) -> None:
    # m001 creates the table as it is now (checkfirst): a database made since has the columns.
    present = {column["name"] for column in sa.inspect(conn).get_columns(audit_events.name)}
    for name in USAGE_DETAIL_COLUMNS:
        if name not in present:
            # Nullable, no default: SQLite and PostgreSQL add it without rewriting the table.
            conn.execute(sa.text(f"ALTER TABLE {audit_events.name} ADD COLUMN {name} INTEGER"))


#: columns `m004_audit_chain` adds to `audit_events`
CHAIN_COLUMNS = (
    ("prompt_hmac", "VARCHAR(64)"),
    ("answer_hmac", "VARCHAR(64)"),
    ("content", "TEXT"),
    ("chain_seq", "BIGINT"),
    ("chain_hash", "VARCHAR(64)"),
)
GENESIS_HASH = "0" * 64
#: the message of the append-only triggers (the writer and the CLI recognise it)
APPEND_ONLY = "audit_events is append-only"


@migration
def m004_audit_chain(conn: sa.Connection) -> None:
    present = {column["name"] for column in sa.inspect(conn).get_columns(audit_events.name)}
    for name, kind in CHAIN_COLUMNS:
        if name not in present:
            conn.execute(sa.text(f"ALTER TABLE {audit_events.name} ADD COLUMN {name} {kind}"))
    indexes = {index["name"] for index in sa.inspect(conn).get_indexes(audit_events.name)}
    if "ix_audit_events_chain_seq" not in indexes:
        conn.execute(sa.text("CREATE UNIQUE INDEX ix_audit_events_chain_seq ON audit_events (chain_seq)"))
    audit_chain.create(conn, checkfirst=True)
    audit_checkpoints.create(conn, checkfirst=True)
    legacy = conn.execute(sa.select(sa.func.coalesce(sa.func.max(audit_events.c.seq), 0))).scalar_one()
    conn.execute(audit_chain.insert().values(name="main", seq=0, hash=GENESIS_HASH, key_id=None, legacy_max_seq=legacy))
    install_append_only(conn)


#: columns `m005_cache` adds to `audit_events`
CACHE_COLUMNS = (("cache", "VARCHAR(16)"), ("cache_saved_micro_usd", "BIGINT"))


def add_audit_columns(conn: sa.Connection, columns: tuple[tuple[str, str], ...]) -> None:
    """Add to `audit_events` those of `columns` (name, SQL type) it does not have yet. Nullable,
    with no default: older events keep their chain hashes (null fields are not hashed)."""
    present = {column["name"] for column in sa.inspect(conn).get_columns(audit_events.name)}
    for name, kind in columns:
        if name not in present:
            conn.execute(sa.text(f"ALTER TABLE {audit_events.name} ADD COLUMN {name} {kind}"))


@migration
def m005_cache(conn: sa.Connection) -> None:
    add_audit_columns(conn, CACHE_COLUMNS)


@migration
def m006_attempts(conn: sa.Connection) -> None:
    add_audit_columns(conn, (("attempts", "TEXT"),))


@migration
def m007_routed_by(conn: sa.Connection) -> None:
    add_audit_columns(conn, (("routed_by", "TEXT"),))


@migration
def m008_instance(conn: sa.Connection) -> None:
    add_audit_columns(conn, (("instance", "VARCHAR(128)"),))


#: columns `m009_egress` adds to `audit_events`
EGRESS_COLUMNS = (("door", "VARCHAR(16)"), ("egress_host", "VARCHAR(255)"))


@migration
def m009_egress(conn: sa.Connection) -> None:
    add_audit_columns(conn, EGRESS_COLUMNS)


def install_append_only(conn: sa.Connection) -> None:
    """Triggers that refuse UPDATE and DELETE on the audit events and their checkpoints.

    The one deletion allowed is retention's: an event covered by a retention checkpoint (its chain
    position and time at or before the checkpoint's), which the same transaction wrote first."""
    covered = (
        "EXISTS (SELECT 1 FROM audit_checkpoints c WHERE c.seq >= COALESCE(OLD.chain_seq, 0) "
        "AND c.through_ts >= OLD.ts)"
    )
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION sluicegate_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                "BEGIN\n"
                # Nested: PL/pgSQL does not promise to evaluate AND left to right.
                "  IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_events' THEN\n"
                f"    IF {covered} THEN RETURN OLD; END IF;\n"
                "  END IF;\n"
                f"  RAISE EXCEPTION '{APPEND_ONLY} (% on %)', TG_OP, TG_TABLE_NAME;\n"
                "END $$"
            )
        )
        for table in ("audit_events", "audit_checkpoints"):
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}"))
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION sluicegate_audit_append_only()"
                )
            )
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}"))
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION sluicegate_audit_append_only()"
                )
            )
        return
    for table in ("audit_events", "audit_checkpoints"):
        conn.execute(
            sa.text(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
            )
        )
    conn.execute(
        sa.text(
            "CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events "
            f"WHEN NOT {covered} BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
        )
    )
    conn.execute(
        sa.text(
            "CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints "
            f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
        )
    )


def default_url(data_dir: Path) -> str:
    """The embedded default: SQLite in the data folder."""
    return f"sqlite:///{data_dir / 'sluicegate.db'}"


def create_engine(url: str) -> Engine:
    """An engine for `url`, migrated to the latest schema; SQLite in WAL mode."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

    migrate(engine)
    return engine


#: the PostgreSQL advisory lock `migrate` holds for its transaction: the first 8 bytes of
#: SHA-256("sluicegate.migrate") as a signed bigint, -235332653065130559 (fixed: instances of
#: different releases starting together must take the same lock)
MIGRATE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"sluicegate.migrate").digest()[:8], "big", signed=True)
#: how long a SQLite connection waits for another process's migrations before it gives up
MIGRATE_SQLITE_WAIT_MS = 120_000


def migrate(engine: Engine) -> list[str]:
    """Apply the migrations not yet recorded; return their names.

    One transaction that first takes the database's migration lock, then reads `_migrations`,
    then applies what is missing: instances starting together on one database serialise here,
    and each one after the first finds the migrations recorded and applies none. PostgreSQL: a
    transaction-level advisory lock (`MIGRATE_LOCK_KEY`), released by the commit or rollback.
    SQLite: `BEGIN IMMEDIATE`, the file's write lock from the transaction's start (the driver
    would otherwise begin only at the first INSERT, after the reads and the DDL). Other
    databases take no lock: start one instance first.
    """
    applied: list[str] = []
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        waited = _sqlite_wait(conn, MIGRATE_SQLITE_WAIT_MS) if sqlite else None
        try:
            with conn.begin():
                if sqlite:
                    # The DBAPI connection is not in a transaction (SQLAlchemy's begin is a no-op
                    # for pysqlite): this one is its transaction, committed or rolled back by ours.
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                elif conn.dialect.name == "postgresql":
                    # A server's statement_timeout must not fail an instance waiting for another's.
                    conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                    lock = sa.text("SELECT pg_advisory_xact_lock(CAST(:key AS bigint))")
                    conn.execute(lock, {"key": MIGRATE_LOCK_KEY})
                migrations_table.create(conn, checkfirst=True)
                done = set(conn.execute(sa.select(migrations_table.c.name)).scalars())
                for name, fn in MIGRATIONS:
                    if name in done:
                        continue
                    fn(conn)
                    conn.execute(migrations_table.insert().values(name=name))
                    applied.append(name)
        except BaseException:
            if waited is not None:
                conn.invalidate()  # not back to the pool with the long busy timeout
            raise
        if waited is not None:
            _sqlite_wait(conn, waited)
    if applied:
        log.info("database migrated: %s", ", ".join(applied))
    return applied


def _sqlite_wait(conn: sa.Connection, ms: int) -> int:
    """Set the connection's busy timeout to `ms`; return the one it had."""
    before = int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one())
    conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(ms)}")
    conn.commit()  # SQLAlchemy's autobegun transaction around the pragmas (none in the driver)
    return before
