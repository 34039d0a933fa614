"""The gateway's database: tables, ordered migrations, and engine creation.

SQLite (WAL) by default, in the data folder; any SQLAlchemy URL works (PostgreSQL for many
instances). Migrations are named functions applied in order and recorded in `_migrations`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

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


def migrate(engine: Engine) -> list[str]:
    """Apply the migrations not yet recorded; return their names."""
    applied: list[str] = []
    with engine.begin() as conn:
        migrations_table.create(conn, checkfirst=True)
        done = set(conn.execute(sa.select(migrations_table.c.name)).scalars())
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            fn(conn)
            conn.execute(migrations_table.insert().values(name=name))
            applied.append(name)
    return applied
