"""The shared vector index of the semantic cache (`cache.semantic.index: pgvector`): one
PostgreSQL table with the pgvector extension that every gateway instance reads and writes.

Best effort by design: a database that is down or slow makes a miss, never an error or a slow
call. Each query is bounded by a statement timeout and a client-side deadline, failures are
logged at most every 30 s, and expired rows are deleted in the background once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg import AsyncConnection, pq

from sluicegate.cache.base import Neighbour

if TYPE_CHECKING:
    from sluicegate.cache.base import Vector

log = logging.getLogger("sluicegate.cache")

#: a failure is logged at most this often
WARN_EVERY_S = 30.0
#: after a failed connection attempt (or start), none is tried for this long: calls miss at once
RETRY_S = 1.0
#: expired rows are deleted this often, in batches of PURGE_BATCH
PURGE_EVERY_S = 60.0
PURGE_BATCH = 1000
#: the client waits this much past a statement timeout (the round trip) before it gives up
GRACE_S = 0.05
#: the server's clock, in epoch seconds: every instance compares expiry times by one clock
NOW = "extract(epoch from now())::float8"
TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
FAILURES = (psycopg.Error, OSError, TimeoutError)


class PgVectorUnavailable(RuntimeError):
    """The table cannot be set up: no pgvector, no right to create it, or another dimension."""


class PgVectorIndex:
    """Vectors in a PostgreSQL table shared by every gateway instance (pgvector, cosine).

    `start()` creates the extension (when allowed), the table and its indexes, under an advisory
    lock so that instances starting together do not race; a search or add before `start()`
    starts it in the background and misses meanwhile. Searches use an HNSW index (pgvector 0.5+).

    Usage:

        index = PgVectorIndex("postgresql://gateway@db/sluicegate", dim=384)
        await index.start()
        await index.add(partition, key, vector, signature, ttl_s=3600)
        nearest = await index.search(partition, vector, k=4)
    """

    kind = "pgvector"

    def __init__(
        self,
        url: str,
        dim: int,
        table: str = "sluicegate_semantic_cache",
        pool_size: int = 4,
        *,
        search_timeout_s: float = 0.1,
        write_timeout_s: float = 1.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if not TABLE_NAME.match(table):
            raise ValueError(f"table {table!r}: lowercase letters, digits and _ only, at most 48")
        if dim <= 0 or pool_size <= 0:
            raise ValueError("dim and pool_size must be positive")
        # The store's SQLAlchemy URLs name a driver (`postgresql+psycopg://`); libpq does not.
        self._conninfo = re.sub(r"^postgres(?:ql)?\+\w+://", "postgresql://", url)
        self.dim = dim
        self.table = table
        self.search_timeout_s = search_timeout_s
        self.write_timeout_s = write_timeout_s
        self._nearest = (
            f"SELECT key, 1 - (embedding <=> %(v)s) AS score, signature FROM {table} "
            f"WHERE partition = %(p)s AND expires_at > {NOW} ORDER BY embedding <=> %(v)s LIMIT %(k)s"
        )
        # OFFSET 0 keeps the subquery apart, so the order cannot come from the HNSW index.
        self._nearest_exact = (
            f"SELECT key, 1 - (embedding <=> %(v)s) AS score, signature FROM (SELECT key, embedding, signature "
            f"FROM {table} WHERE partition = %(p)s AND expires_at > {NOW} OFFSET 0) AS part "
            "ORDER BY embedding <=> %(v)s LIMIT %(k)s"
        )
        self._pool = _Pool(self._conninfo, pool_size, connect_timeout_s, self._setup, self._failed)
        # Adds leave a connection to searches.
        self._adding = asyncio.Semaphore(max(1, pool_size - 1))
        self._started = False
        self._closed = False
        self._starting: asyncio.Task[None] | None = None
        self._start_retry_at = 0.0
        self._purging: asyncio.Task[None] | None = None
        self._iterative_scan = False
        self._last_warning = -WARN_EVERY_S
        #: failed queries and connection attempts, for `stats()`
        self.errors = 0

    # -- setup ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create what the index needs (idempotent) and start the purge loop.

        Raises `PgVectorUnavailable` when the database cannot hold the index, and psycopg's
        errors when it cannot be reached.
        """
        if self._started:
            return
        conn = await asyncio.wait_for(AsyncConnection.connect(self._conninfo, autocommit=True), 30)
        async with conn:
            version = await self._create(conn)
        # pgvector 0.8 scans an HNSW index on until enough rows pass the partition filter;
        # before, a partition filtered after the scan may leave fewer than `k` (then a miss).
        self._iterative_scan = version >= (0, 8)
        self._started = True
        if self._purging is None:
            self._purging = asyncio.create_task(self._purge_loop())

    async def _create(self, conn: AsyncConnection[Any]) -> tuple[int, ...]:
        t = self.table
        async with conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 0")
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sluicegate:{t}",))
            version = await self._extension(conn)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {t} (partition text NOT NULL, key text NOT NULL, "
                f"embedding vector({self.dim}) NOT NULL, signature text NOT NULL, "
                "expires_at double precision NOT NULL, PRIMARY KEY (partition, key))"
            )
            cur = await conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attname = 'embedding'",
                (t,),
            )
            row = await cur.fetchone()
            if row is None or row[0] != f"vector({self.dim})":
                raise PgVectorUnavailable(
                    f"table {t} holds {row[0] if row else 'no embedding'}, not vector({self.dim}): "
                    "another embedding model uses it; name another table"
                )
            # The primary key serves `WHERE partition = ...`; this one serves the purge.
            await conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_expires ON {t} (expires_at)")
            if version >= (0, 5):
                await conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {t}_hnsw ON {t} USING hnsw (embedding vector_cosine_ops)"
                )
            else:
                log.warning("pgvector %s has no HNSW: semantic cache searches scan their partition", version)
        return version

    async def _extension(self, conn: AsyncConnection[Any]) -> tuple[int, ...]:
        query = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        row = await (await conn.execute(query)).fetchone()
        if row is None:
            try:
                async with conn.transaction():  # a savepoint: the outer transaction goes on
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.errors.InsufficientPrivilege:
                raise PgVectorUnavailable(
                    "the pgvector extension is not in this database and this user may not create it: "
                    "run `CREATE EXTENSION vector` there as its owner or a superuser"
                ) from None
            except psycopg.Error as exc:
                raise PgVectorUnavailable(f"the pgvector extension cannot be created: {exc}") from None
            row = await (await conn.execute(query)).fetchone()
            assert row is not None
        return tuple(int(part) for part in re.findall(r"\d+", str(row[0]))[:3])

    async def _setup(self, conn: AsyncConnection[Any]) -> None:
        await register_vector_async(conn)
        await conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(_ms(self.search_timeout_s)),))
        if self._iterative_scan:
            await conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', false)")

    def _ready(self) -> bool:
        """Whether the table is there; if not, start in the background (one attempt at a time)."""
        if self._started:
            return True
        if self._closed:
            return False
        if self._starting is None and time.monotonic() >= self._start_retry_at:
            self._starting = asyncio.create_task(self._start_in_background())
        return False

    async def _start_in_background(self) -> None:
        try:
            await self.start()
        except PgVectorUnavailable as exc:
            self._start_retry_at = time.monotonic() + WARN_EVERY_S
            self._warn("the semantic cache's pgvector index cannot be set up: %s", exc, force=True)
        except FAILURES as exc:
            self._start_retry_at = time.monotonic() + RETRY_S
            self._failed(exc)
        finally:
            self._starting = None

    # -- the index ----------------------------------------------------------------------------

    async def search(self, partition: str, vector: Vector, k: int = 4) -> list[Neighbour]:
        """Up to `k` unexpired vectors of `partition` nearest to `vector`, best first ([] on failure)."""
        if k <= 0 or not self._ready():
            return []
        params = {"v": vector, "p": partition, "k": k}
        try:
            async with asyncio.timeout(self.search_timeout_s + GRACE_S), self._pool.connection() as conn:
                rows = await (await conn.execute(self._nearest, params)).fetchall()
                if len(rows) < k and not self._iterative_scan:
                    # The planner may have scanned the HNSW index and filtered the partition after:
                    # a partition that is a small share of the table then yields fewer than `k`.
                    # Fewer than `k` is also what a partition that small holds, so this costs
                    # little: it reads the partition's rows only.
                    rows = await (await conn.execute(self._nearest_exact, params)).fetchall()
        except FAILURES as exc:
            self._failed(exc)
            return []
        found = [Neighbour(key=key, score=float(score), signature=sig) for key, score, sig in rows]
        if self._iterative_scan:  # relaxed order: nearly sorted
            found.sort(key=lambda n: -n.score)
        return found

    async def add(self, partition: str, key: str, vector: Vector, signature: str, ttl_s: float) -> None:
        """Store a (unit) vector for the entry under `key`, for `ttl_s` seconds (nothing on failure)."""
        if vector.shape != (self.dim,):
            raise ValueError(f"a vector of shape {vector.shape}, not ({self.dim},)")
        if not self._ready():
            return
        t = self.table
        upsert = (
            f"INSERT INTO {t} (partition, key, embedding, signature, expires_at) VALUES (%s, %s, %s, %s, {NOW} + %s) "
            "ON CONFLICT (partition, key) DO UPDATE SET embedding = EXCLUDED.embedding, "
            "signature = EXCLUDED.signature, expires_at = EXCLUDED.expires_at"
        )
        try:
            async with asyncio.timeout(self.write_timeout_s + GRACE_S), self._adding:
                async with self._pool.connection() as conn, conn.transaction():
                    await conn.execute(f"SET LOCAL statement_timeout = {_ms(self.write_timeout_s)}")
                    await conn.execute(upsert, (partition, key, vector, signature, ttl_s))
        except FAILURES as exc:
            self._failed(exc)

    async def delete(self, partition: str, key: str) -> None:
        """Forget the vector of `key` in `partition` (absent, or on failure: nothing happens)."""
        if not self._ready():
            return
        try:
            async with asyncio.timeout(self.write_timeout_s + GRACE_S), self._pool.connection() as conn:
                await conn.execute(f"DELETE FROM {self.table} WHERE partition = %s AND key = %s", (partition, key))
        except FAILURES as exc:
            self._failed(exc)

    async def purge(self, max_batches: int = 100) -> int:
        """Delete expired rows, a batch at a time; how many were deleted (0 on failure)."""
        if not self._ready():
            return 0
        t = self.table
        # SKIP LOCKED: instances purging at once share the work instead of waiting on each other.
        delete = (
            f"DELETE FROM {t} WHERE (partition, key) IN (SELECT partition, key FROM {t} "
            f"WHERE expires_at <= {NOW} LIMIT {PURGE_BATCH} FOR UPDATE SKIP LOCKED)"
        )
        deleted = 0
        try:
            for _ in range(max_batches):
                async with asyncio.timeout(self.write_timeout_s + GRACE_S), self._adding:
                    async with self._pool.connection() as conn, conn.transaction():
                        await conn.execute(f"SET LOCAL statement_timeout = {_ms(self.write_timeout_s)}")
                        count = (await conn.execute(delete)).rowcount
                deleted += count
                if count < PURGE_BATCH:
                    break
        except FAILURES as exc:
            self._failed(exc)
        return deleted

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(PURGE_EVERY_S)
            await self.purge()

    async def close(self) -> None:
        """Stop the purge loop and close the connections."""
        for task in (self._purging, self._starting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._purging = self._starting = None
        self._started, self._closed = False, True
        await self._pool.close()

    def stats(self) -> dict[str, int]:
        """Open connections and failures so far."""
        return {"connections": self._pool.open, "errors": self.errors}

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._warn("the semantic cache's pgvector index failed (a miss): %s", exc)

    def _warn(self, message: str, exc: BaseException, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            # The first line of the driver's message: host and port at most, never the password.
            text = str(exc).strip().splitlines()
            log.warning(message, f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)


class _Pool:
    """A few connections made in the background, lent one at a time.

    A connection is made off the caller's deadline, so a slow connect still serves the next
    call; after a failed attempt none is made for `RETRY_S` and callers fail at once. A
    connection that comes back busy (its query cut short) or broken is closed, not lent again.
    """

    def __init__(
        self,
        conninfo: str,
        size: int,
        connect_timeout_s: float,
        setup: Callable[[AsyncConnection[Any]], Awaitable[None]],
        failed: Callable[[BaseException], None],
    ) -> None:
        self._conninfo = conninfo
        self._size = size
        self._connect_timeout_s = connect_timeout_s
        self._setup = setup
        self._failed = failed
        #: connections to lend, and None to wake the waiters when none is coming
        self._idle: asyncio.Queue[AsyncConnection[Any] | None] = asyncio.Queue()
        self._waiting = 0
        self._connecting: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._retry_at = 0.0
        self._closed = False
        #: connections idle, lent or being made
        self.open = 0

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        conn = await self._take()
        try:
            yield conn
        finally:
            self._give(conn)

    async def _take(self) -> AsyncConnection[Any]:
        if self._closed:
            raise psycopg.OperationalError("the pool is closed")
        while not self._idle.empty():
            if (idle := self._idle.get_nowait()) is not None:
                return idle
        if self.open < self._size:
            if time.monotonic() < self._retry_at:
                if self.open == 0:
                    raise psycopg.OperationalError("the database was unreachable a moment ago")
            else:
                self.open += 1
                task = asyncio.create_task(self._connect())
                self._connecting.add(task)
                task.add_done_callback(self._connecting.discard)
        self._waiting += 1
        try:
            while (conn := await self._idle.get()) is None:
                if self.open == 0:  # woken by a failed connect: no connection is coming
                    raise psycopg.OperationalError("the database is unreachable")
            return conn
        finally:
            self._waiting -= 1

    def _give(self, conn: AsyncConnection[Any]) -> None:
        if not self._closed and not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            self._idle.put_nowait(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: AsyncConnection[Any]) -> None:
        self.open -= 1
        task = asyncio.create_task(conn.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                conn = await AsyncConnection.connect(self._conninfo, autocommit=True)
                try:
                    await self._setup(conn)
                except BaseException:
                    await conn.close()
                    raise
        except FAILURES as exc:
            self.open -= 1
            self._retry_at = time.monotonic() + RETRY_S
            self._failed(exc)
            if self.open == 0:
                for _ in range(self._waiting):
                    self._idle.put_nowait(None)
            return
        except asyncio.CancelledError:
            self.open -= 1
            raise
        if self._closed:
            self._discard(conn)
        else:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        self._closed = True
        while not self._idle.empty():
            if (conn := self._idle.get_nowait()) is not None:
                self._discard(conn)
        for task in self._connecting:
            task.cancel()
        await asyncio.gather(*self._connecting, *self._closing, return_exceptions=True)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
