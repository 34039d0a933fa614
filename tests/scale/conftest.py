"""The scale tests' servers: one PostgreSQL per test module (a database per test) and the
environment that points the instances and the CLI at that database."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.audit.test_writer_postgres import Postgres
from tests.scale.cluster import CHAIN_KEY, CHAIN_KEY_ENV, Database

# -- PostgreSQL, one server for the module, a database per test ----------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    # Not under pytest's temporary folder: the `postgres` user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="sluicegate-pg-"))
    try:
        server = Postgres(root)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database(postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    name = f"scale_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    db = Database(postgres.url.rsplit("/", 1)[0] + f"/{name}")
    # `gateway_process` and the CLI runs below copy the test process's environment.
    monkeypatch.setenv("SLUICEGATE_DATABASE_URL", db.url)
    monkeypatch.setenv(CHAIN_KEY_ENV, CHAIN_KEY)
    yield db
    if db.made:
        db.engine.dispose()
