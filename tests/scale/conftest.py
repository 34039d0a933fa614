"""The scale tests' database: a fresh one per test on the module's PostgreSQL, and the
environment that points the instances and the CLI at that database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres_server import Postgres, fresh_database
from tests.scale.cluster import CHAIN_KEY, CHAIN_KEY_ENV, Database


@pytest.fixture
def database(postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    db = Database(fresh_database(postgres, "scale"))
    # `gateway_process` and the CLI runs below copy the test process's environment.
    monkeypatch.setenv("SLUICEGATE_DATABASE_URL", db.url)
    monkeypatch.setenv(CHAIN_KEY_ENV, CHAIN_KEY)
    yield db
    if db.made:
        db.engine.dispose()
