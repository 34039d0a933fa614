"""The shared vector index against a real PostgreSQL with pgvector: search, partitions, expiry,
two instances on one table, concurrent starts, privileges, and an outage that only makes misses.

The server is the build the `pgserver` package ships (PostgreSQL with pgvector), started for the
module on a loopback port; the tests are skipped where that package is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from sluicegate.cache.pgvector import PgVectorIndex, PgVectorUnavailable
from tests.postgres_server import Postgres, running_postgres

# Found, not imported: importing `pgserver` warns (platformdirs), and the suite makes warnings errors.
_SPEC = importlib.util.find_spec("pgserver")
if _SPEC is None or _SPEC.origin is None:
    pytest.skip("the pgserver package (PostgreSQL with pgvector) is not installed", allow_module_level=True)
BINDIR = Path(_SPEC.origin).parent / "pginstall" / "bin"
DIM = 8


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with running_postgres("sluicegate-pgvector-", BINDIR) as server:
        yield server


def url(postgres: Postgres, db: str = "postgres", user: str = "postgres") -> str:
    return f"postgresql://{user}@127.0.0.1:{postgres.port}/{db}"


def admin(postgres: Postgres, db: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url(postgres, db), autocommit=True)


@pytest.fixture
def table() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def index(postgres: Postgres, table: str) -> AsyncIterator[PgVectorIndex]:
    idx = PgVectorIndex(url(postgres), DIM, table=table)
    await idx.start()
    yield idx
    await idx.close()


def unit(*values: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


async def test_nearest_come_first_with_cosine_and_signature(index: PgVectorIndex) -> None:
    await index.add("p", "far", unit(0, 1), "s-far", ttl_s=60)
    await index.add("p", "near", unit(1, 0.2), "s-near", ttl_s=60)
    await index.add("p", "same", unit(1, 0), "s-same", ttl_s=60)
    found = await index.search("p", unit(1, 0), k=2)
    assert [(n.key, n.signature) for n in found] == [("same", "s-same"), ("near", "s-near")]
    assert found[0].score == pytest.approx(1.0, abs=1e-6)
    assert found[1].score == pytest.approx(float(unit(1, 0.2) @ unit(1, 0)), abs=1e-6)
    assert [n.key for n in await index.search("p", unit(1, 0), k=10)] == ["same", "near", "far"]
    # The same key again replaces its vector and signature.
    await index.add("p", "far", unit(1, 0), "s-new", ttl_s=60)
    found = await index.search("p", unit(1, 0), k=3)
    assert {n.key for n in found[:2]} == {"same", "far"} and ("far", "s-new") in [(n.key, n.signature) for n in found]
    await index.delete("p", "far")
    assert [n.key for n in await index.search("p", unit(1, 0), k=10)] == ["same", "near"]


async def test_a_search_never_crosses_partitions(index: PgVectorIndex) -> None:
    # Many partitions, each small: the partition filter must not starve the nearest-first scan.
    for p in range(50):
        for i in range(10):
            await index.add(f"p{p}", f"k{i}", unit(1, i / 10, p / 50), "s", ttl_s=60)
    for p in (0, 17, 49):
        found = await index.search(f"p{p}", unit(1, 0, p / 50), k=4)
        assert [n.key for n in found] == ["k0", "k1", "k2", "k3"]
    assert await index.search("elsewhere", unit(1), k=4) == []


async def test_expired_rows_are_not_found_and_purge_deletes_them(postgres: Postgres, index: PgVectorIndex) -> None:
    await index.add("p", "short", unit(1), "s", ttl_s=0.2)
    await index.add("p", "long", unit(1, 0.1), "s", ttl_s=60)
    assert [n.key for n in await index.search("p", unit(1))] == ["short", "long"]
    await asyncio.sleep(0.3)
    assert [n.key for n in await index.search("p", unit(1))] == ["long"]
    assert await index.purge() == 1
    with admin(postgres) as conn:
        assert conn.execute(f"SELECT key FROM {index.table}").fetchall() == [("long",)]
    assert await index.purge() == 0


async def test_two_instances_share_one_table(postgres: Postgres, index: PgVectorIndex, table: str) -> None:
    other = PgVectorIndex(url(postgres), DIM, table=table)
    await other.start()
    try:
        await index.add("p", "from-a", unit(1), "a", ttl_s=60)
        await other.add("p", "from-b", unit(0, 1), "b", ttl_s=60)
        assert [n.key for n in await other.search("p", unit(1), k=1)] == ["from-a"]
        assert [n.key for n in await index.search("p", unit(0, 1), k=1)] == ["from-b"]
        with admin(postgres) as conn:
            rows = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (table,)).fetchall()
        indexes = {str(r[0]) for r in rows}
        assert any("USING hnsw (embedding vector_cosine_ops)" in d for d in indexes), indexes
    finally:
        await other.close()


async def test_instances_starting_at_once_on_a_fresh_database(postgres: Postgres, table: str) -> None:
    db = f"d_{uuid.uuid4().hex[:12]}"
    with admin(postgres) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    indexes = [PgVectorIndex(url(postgres, db), DIM, table=table) for _ in range(4)]
    try:
        await asyncio.gather(*(i.start() for i in indexes))
        await indexes[0].add("p", "k", unit(1), "s", ttl_s=60)
        for i in indexes:
            assert [n.key for n in await i.search("p", unit(1))] == ["k"]
    finally:
        for i in indexes:
            await i.close()


async def test_a_user_who_may_not_create_the_extension(postgres: Postgres, table: str) -> None:
    db, user = f"d_{uuid.uuid4().hex[:12]}", f"u_{uuid.uuid4().hex[:12]}"
    with admin(postgres) as conn:
        conn.execute(f"CREATE USER {user}")
        conn.execute(f"CREATE DATABASE {db} OWNER postgres")
    with admin(postgres, db) as conn:
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {user}")
    index = PgVectorIndex(url(postgres, db, user), DIM, table=table)
    with pytest.raises(PgVectorUnavailable, match="CREATE EXTENSION vector"):
        await index.start()
    with admin(postgres, db) as conn:
        conn.execute("CREATE EXTENSION vector")
    await index.start()  # the extension is there: the user need not create it
    await index.add("p", "k", unit(1), "s", ttl_s=60)
    assert [n.key for n in await index.search("p", unit(1))] == ["k"]
    await index.close()


async def test_a_table_of_another_dimension_is_refused(postgres: Postgres, index: PgVectorIndex, table: str) -> None:
    other = PgVectorIndex(url(postgres), DIM * 2, table=table)
    with pytest.raises(PgVectorUnavailable, match=rf"vector\({DIM}\), not vector\({DIM * 2}\)"):
        await other.start()
    await other.close()
    with pytest.raises(ValueError, match="table"):
        PgVectorIndex(url(postgres), DIM, table="x; DROP TABLE y")


async def test_calls_before_start_miss_and_start_it(postgres: Postgres, table: str) -> None:
    index = PgVectorIndex(url(postgres), DIM, table=table)
    try:
        assert await index.search("p", unit(1)) == []
        deadline = time.monotonic() + 10
        while not [n.key for n in await index.search("p", unit(1))]:
            await index.add("p", "k", unit(1), "s", ttl_s=60)
            assert time.monotonic() < deadline, "the index did not start in the background"
            await asyncio.sleep(0.02)
    finally:
        await index.close()


async def test_an_outage_makes_quick_misses_and_the_index_recovers(postgres: Postgres, index: PgVectorIndex) -> None:
    await index.add("p", "k", unit(1), "s", ttl_s=600)
    assert [n.key for n in await index.search("p", unit(1))] == ["k"]
    postgres.stop()
    try:
        # Stale connections, then refused ones: every call misses within its deadline.
        for _ in range(10):
            started = time.monotonic()
            assert await index.search("p", unit(1)) == []
            await index.add("p", "k2", unit(0, 1), "s", ttl_s=600)
            assert time.monotonic() - started < index.search_timeout_s + index.write_timeout_s + 0.5
        assert index.errors > 0
    finally:
        postgres.start()
    deadline = time.monotonic() + 10
    while [n.key for n in await index.search("p", unit(1))] != ["k"]:
        assert time.monotonic() < deadline, "the index did not recover"
        await asyncio.sleep(0.05)
    await index.add("p", "k2", unit(0, 1), "s", ttl_s=600)
    assert [n.key for n in await index.search("p", unit(0, 1), k=1)] == ["k2"]


async def test_a_partition_filtered_after_the_hnsw_scan_still_gets_its_k_nearest(
    postgres: Postgres, index: PgVectorIndex
) -> None:
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((4200, DIM)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    with admin(postgres) as conn:
        # Built once after the copy: faster than an HNSW insert per row.
        conn.execute(f"DROP INDEX {index.table}_hnsw")
        with conn.cursor() as cur, cur.copy(f"COPY {index.table} FROM STDIN") as copy:
            for i, v in enumerate(rows):
                part = "mid" if i < 200 else "big"  # mid: under 5% of the rows
                copy.write_row((part, f"k{i}", "[" + ",".join(map(str, v.tolist())) + "]", "s", time.time() + 600))
        conn.execute(f"CREATE INDEX {index.table}_hnsw ON {index.table} USING hnsw (embedding vector_cosine_ops)")
        conn.execute(f"ANALYZE {index.table}")
        plan = conn.execute(
            f"EXPLAIN SELECT key FROM {index.table} WHERE partition = 'mid' ORDER BY embedding <=> %s::vector LIMIT 4",
            ("[" + ",".join(["1"] * DIM) + "]",),
        ).fetchall()
    assert "hnsw" in str(plan), plan  # the case this test is about: the planner chose the ANN scan
    for q in rows[200:220]:
        expected = np.argsort(-(rows[:200] @ q))[:4]
        found = await index.search("mid", q, k=4)
        assert [n.key for n in found] == [f"k{i}" for i in expected]


async def test_a_slow_database_makes_a_miss_not_a_slow_call(postgres: Postgres, index: PgVectorIndex) -> None:
    await index.add("p", "k", unit(1), "s", ttl_s=600)
    with admin(postgres) as conn, conn.transaction():
        conn.execute(f"LOCK TABLE {index.table} IN ACCESS EXCLUSIVE MODE")  # every query now waits
        started = time.monotonic()
        assert await index.search("p", unit(1)) == []
        assert time.monotonic() - started < 1.0  # the statement timeout (0.1 s), not the lock
    assert [n.key for n in await index.search("p", unit(1))] == ["k"]
    assert index.stats()["connections"] >= 1
