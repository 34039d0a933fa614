"""The audit writer: events queued from the request path, group-committed by one thread.

`submit` is a non-blocking queue put (no lock, no I/O). `commit` is the same plus a future the
writer resolves once the event is durable, for `audit.durability: before_response`. The writer
thread takes what is queued (up to `batch_size`, waiting `flush_interval_s` to fill a batch),
bounds every value to its column (`audit.rows`) and writes the batch in one transaction with one
driver-level `executemany` of plain tuples, so it holds the interpreter lock as little as it can.

When a write fails, the error decides:
- the store is unavailable (connection, lock, disk, missing table, or it refuses a plain row
  too): the batch goes to the spill file (fsynced) and the writer is unhealthy (`/readyz` 503;
  `on_failure: refuse` refuses calls). Every `retry_s` it tries the store again; once a write
  succeeds it replays the spill file, skipping events the store holds already, and removes it;
- the store refused the batch but takes a plain row (probed in a transaction rolled back): some
  rows hold a value it refuses (out of range, a constraint, a trigger). The batch is bisected,
  the rows that fail go to the poison file (logged, counted) and the others are written. No
  batch is retried forever, so no value can stop the audit.
If the spill file cannot be written either, the events stay in memory and both are retried
(log critical, `/readyz` 503). Past `max_queue_events` queued, further events go straight to the
spill file from a second thread, so memory stays bounded even while a store write hangs. `close`
drains everything, to the store or the spill file, and says in one line what waits for a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sluicegate.audit.chain import CHAIN_FIELDS, AnchorFile, Chain, insert_sql
from sluicegate.audit.events import FIELDS, AuditEvent
from sluicegate.audit.rows import REQUEST_ID, Row, row_as_dict, row_from_dict, row_of
from sluicegate.audit.spill import POISON_NAME, SPILL_NAME, JsonLinesFile, SpillFile
from sluicegate.store.db import audit_events

log = logging.getLogger("sluicegate.audit")

_STOP = object()
#: a queued event, and the future of a caller waiting for it to be durable
Item = tuple[Row, "asyncio.Future[bool] | None"]
#: events per replayed transaction (and per dedup query)
REPLAY_CHUNK = 500
#: the same alarm is logged at most this often
ALARM_INTERVAL_S = 10.0


class Sinks(Protocol):
    """Where stored events are copied besides the database (`audit.sinks.AuditSinks`)."""

    def offer(self, records: list[dict[str, Any]]) -> None:
        """Queue stored events (never blocks, never raises)."""

    def anchor(self, record: dict[str, Any]) -> None:
        """Queue a chain anchor."""


class AuditNotDurable(Exception):
    """An event could be written neither to the store nor to the spill file in time."""


def _insert_sql(engine: Engine) -> str:
    """The INSERT for one event, in the driver's own parameter style."""
    marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    columns = ", ".join(FIELDS)
    return f"INSERT INTO {audit_events.name} ({columns}) VALUES ({', '.join([marker] * len(FIELDS))})"


def unavailable(exc: BaseException) -> bool:
    """Whether a failed write means the store cannot be reached or written at all.

    Connection, lock, disk and missing-table failures (`OperationalError`, `InterfaceError`, a
    dropped connection, a pool timeout, an OS error) are the store's. Anything else (a value out
    of range, a constraint, a trigger, a driver refusing a value) may be one row's: the writer
    then asks the store to take a plain row (`_store_takes_rows`) before it blames the batch.
    """
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
    return isinstance(exc, sa.exc.DisconnectionError | sa.exc.TimeoutError | OSError)


#: a plain row, written in a transaction that is rolled back, to tell a refused row from a refusing store
_CANARY_ROW = row_of(
    AuditEvent(request_id="audit-store-probe", ts=0.0, endpoint="probe", status=0, decision="probe", outcome="probe")
)


class AuditWriter:
    """Batches audit events into the database off the request path; spills what it cannot write."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.05,
        retry_s: float = 1.0,
        max_queue_events: int = 100_000,
        spill_dir: Path | None = None,
        on_written: Callable[[int], None] | None = None,
        chain: Chain | None = None,
        anchors: AnchorFile | None = None,
        anchor_interval_s: float = 60.0,
        sinks: Sinks | None = None,
        instance: str | None = None,
    ) -> None:
        self.engine = engine
        #: stamped on every event this writer is given that names no instance
        self.instance = instance
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_s = retry_s
        self.max_queue_events = max_queue_events
        #: where events wait for the store (None: in memory only)
        self.spill = SpillFile(spill_dir / SPILL_NAME) if spill_dir is not None else None
        self.poison = JsonLinesFile(spill_dir / POISON_NAME) if spill_dir is not None else None
        self._on_written = on_written
        #: told (events, seconds) after each batch committed to the store, in the writer's thread
        self.on_commit: Callable[[int, float], None] | None = None
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sluicegate-audit", daemon=True)
        self._overflow: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._overflow_thread: threading.Thread | None = None
        #: the hash chain every stored event joins (None: events are stored unchained)
        self.chain = chain
        self.anchors = anchors
        self.anchor_interval_s = anchor_interval_s
        self._anchored: tuple[int, str] | None = None
        self._next_anchor = time.monotonic() + anchor_interval_s
        #: where stored events are copied (files, webhooks, OTLP): never blocks the writer
        self.sinks = sinks
        self._sql = insert_sql(engine.dialect) if chain is not None else _insert_sql(engine)
        self._canary = (*_CANARY_ROW, None, None) if chain is not None else _CANARY_ROW
        self.healthy = True
        self.last_error: str | None = None
        self.spill_error: str | None = None
        self.failures = 0
        # Each counter has one writing thread (event loop, writer, overflow): no lock needed.
        self._submitted = 0
        self.written = 0
        self.spilled = 0
        self._overflow_spilled = 0
        self.poisoned = 0
        self._poisoned_fresh = 0
        self.replayed = 0
        self.lost = 0
        #: events neither the store nor the spill file took; retried every `retry_s`
        self._held: list[Item] = []
        self._next_try = 0.0
        self._next_spill_check = 0.0
        #: spill files may hold events to replay (set by any thread that spills)
        self._replay_due = False
        self._alarms: dict[str, float] = {}

    def configure(self, batch_size: int, flush_interval_s: float, retry_s: float, max_queue_events: int) -> None:
        """Adopt reloaded settings (the queue and everything in flight are kept)."""
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_s = retry_s
        self.max_queue_events = max_queue_events

    # -- the request path (event loop) ------------------------------------------------------------

    def submit(self, event: AuditEvent) -> None:
        """Queue one event (never blocks, never does I/O)."""
        if event.instance is None:
            event.instance = self.instance
        self._submitted += 1
        if self.spill is not None and self._queue.qsize() >= self.max_queue_events:
            self._to_overflow(event)
        else:
            self._queue.put(event)

    def commit(self, event: AuditEvent) -> asyncio.Future[bool]:
        """Queue one event; the future says True once it is in the store or a local file, False
        when it could be written to neither (it then stays queued and is retried)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if event.instance is None:
            event.instance = self.instance
        self._submitted += 1
        item = (event, future)
        if self.spill is not None and self._queue.qsize() >= self.max_queue_events:
            self._to_overflow(item)
        else:
            self._queue.put(item)
        return future

    @property
    def accepting(self) -> bool:
        """Whether the store takes events and the queue has room (strict mode refuses calls otherwise)."""
        return self.healthy and self._queue.qsize() < self.max_queue_events

    @property
    def queued(self) -> int:
        """Events waiting in the queue (not yet taken by the writer thread)."""
        return self._queue.qsize()

    @property
    def pending(self) -> int:
        """Events queued or being written (spilled and set-aside ones are no longer pending)."""
        settled = self.written + self.spilled + self._overflow_spilled + self._poisoned_fresh + self.lost
        return self._submitted - settled

    def status(self) -> dict[str, Any]:
        """What `/readyz` shows of the audit trail."""
        return {
            "pending": self.pending,
            "queued": self.queued,
            "written": self.written,
            "spilled": self.spilled + self._overflow_spilled,
            "replayed": self.replayed,
            "poisoned": self.poisoned,
            "lost": self.lost,
            "store_error": self.last_error,
            "spill_error": self.spill_error,
            "spill_file": str(self.spill.path) if self.spill is not None else None,
            "poison_file": str(self.poison.path) if self.poison is not None else None,
            "chain_head": self.chain.head[0] if self.chain is not None else None,
        }

    # -- blocking calls (startup, shutdown, tests, worker threads) -----------------------------

    def start(self) -> None:
        """Replay what an earlier run spilled (if the store answers), then start the writer thread."""
        if self.spill is not None:
            self._check_spill_dir()
            if self.spill.exists():
                self._replay()
        self._thread.start()

    def spill_now(self, event: AuditEvent) -> bool:
        """Write one event to the spill file at once (a commit that timed out); True when on disk.

        The event stays queued too; the replay skips it if the store has it by then.
        """
        if self.spill is None:
            return False
        try:
            self.spill.append([row_as_dict(row_of(event))])
        except OSError as exc:
            self._spill_failed(exc, 1)
            return False
        self._replay_due = True
        return True

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until every submitted event is written or spilled (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self.pending > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued (to the store, else the spill file), then stop the threads."""
        overflow = self._overflow_thread
        if overflow is not None and overflow.is_alive():
            self._overflow.put(_STOP)
            overflow.join(timeout)
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            # A store write hangs: what is still queued goes to the spill file from here.
            left: list[Item] = []
            with contextlib.suppress(queue.Empty):
                while True:
                    raw = self._queue.get_nowait()
                    if raw is not _STOP:
                        left.append(_item(raw))
            if left and self.spill is not None:
                try:
                    self.spill.append([row_as_dict(row) for row, _ in left])
                except OSError as exc:
                    self._spill_failed(exc, len(left))
                else:
                    self.spilled += len(left)
            log.error(
                "audit writer did not finish within %.0fs (the store hangs); %d events moved to %s, %d not written",
                timeout,
                len(left) if self.spill is not None else 0,
                self.spill.path if self.spill is not None else "-",
                self.pending,
            )

    # -- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        tries_at_stop = 0
        while True:
            items, stopping = self._take(stopping)
            if self._held and (stopping or time.monotonic() >= self._next_try):
                items, self._held = [*self._held, *items], []
            if items:
                self._write_fresh(items)
            if self._replay_due and (self.healthy or time.monotonic() >= self._next_try):
                self._replay()
            if self.chain is not None and (stopping or time.monotonic() >= self._next_anchor):
                self._anchor()
            if self.spill_error is not None and time.monotonic() >= self._next_spill_check:
                self._next_spill_check = time.monotonic() + self.retry_s
                self._check_spill_dir()
            if stopping and self._queue.empty():
                if self._held and tries_at_stop < 3:
                    tries_at_stop += 1
                    time.sleep(self.retry_s)
                    continue
                self._report_at_close()
                return

    def _take(self, stopping: bool) -> tuple[list[Item], bool]:
        """The next batch: what is queued, up to `batch_size`, within `flush_interval_s` of the first."""
        wait: float | None = None
        if self.chain is not None and self.chain.head != self._anchored:
            # The head moved since the last anchor: wake to anchor it even if no event comes.
            wait = max(0.0, self._next_anchor - time.monotonic()) + 0.001
        if self._held or (self._replay_due and not self.healthy):
            wait = max(0.0, self._next_try - time.monotonic()) + 0.001
        elif self.spill is not None:
            # Another thread (the overflow) may spill while this one waits here, and set
            # `_replay_due`: look again every `retry_s`, or its events wait for the next call.
            wait = self.retry_s if wait is None else min(wait, self.retry_s)
        try:
            first = self._queue.get_nowait() if stopping else self._queue.get(timeout=wait)
        except queue.Empty:
            return [], stopping
        batch: list[Item] = []
        if first is _STOP:
            stopping = True
        else:
            batch.append((row_of(first), None) if type(first) is AuditEvent else _item(first))
        # A caller waits on a commit: write what is queued now, without waiting to fill the batch
        # (group commit: what arrives during this write goes in the next one).
        waiting = first is not _STOP and type(first) is not AuditEvent
        deadline = time.monotonic() + self.flush_interval_s
        while len(batch) < self.batch_size:
            try:
                left = 0.0 if stopping or waiting else deadline - time.monotonic()
                raw = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if raw is _STOP:
                stopping = True
                continue
            if type(raw) is AuditEvent:
                batch.append((row_of(raw), None))
            else:
                waiting = True
                batch.append(_item(raw))
        return batch, stopping

    def _write_fresh(self, items: list[Item]) -> None:
        if self.healthy or time.monotonic() >= self._next_try:
            items = self._write(items, fresh=True)
            if not items:
                return
        self._spill_or_hold(items)

    def _write(self, items: list[Item], *, fresh: bool) -> list[Item]:
        """Store `items`, setting aside rows the store refuses; return those not written because
        the store is unavailable (none when all went in or aside)."""
        parts = [items]
        store_takes_rows = False
        while parts:
            part = parts.pop()
            try:
                self._insert([row for row, _ in part], dedupe=not fresh)
            except Exception as exc:
                if not store_takes_rows and (unavailable(exc) or not self._store_takes_rows()):
                    self._store_failed(exc)
                    return [item for p in [part, *reversed(parts)] for item in p]
                # The store takes a plain row but not this batch: some of its rows are refused.
                store_takes_rows = True
                if len(part) == 1:
                    self._set_aside(part[0], exc, fresh)
                else:
                    # Bisect: each half in its own transaction (PostgreSQL aborts the whole one).
                    mid = len(part) // 2
                    parts += [part[mid:], part[:mid]]
                continue
            self._stored(part, fresh)
        return []

    def _insert(self, rows: list[Row], *, dedupe: bool) -> None:
        chain = self.chain
        started = time.perf_counter()
        try:
            stored = self._insert_rows(rows, dedupe)
        except BaseException:
            if chain is not None:
                chain.rolled_back()
            raise
        if self.on_commit is not None:
            self.on_commit(len(stored), time.perf_counter() - started)
        if chain is not None:
            chain.committed()
        sinks = self.sinks
        if sinks and stored:  # an empty set of sinks is false: no dict per row
            columns = (*FIELDS, *CHAIN_FIELDS) if chain is not None else FIELDS
            sinks.offer([dict(zip(columns, row, strict=True)) for row in stored])

    def _insert_rows(self, rows: list[Row], dedupe: bool) -> list[Row]:
        """Write `rows` in one transaction (chained when the chain is on); return what was written."""
        with self.engine.begin() as conn:
            if dedupe:
                # A replay may hold events the store has already (a write that failed after its commit,
                # a commit that timed out): request ids are unique, skip those present.
                ids = list({row[REQUEST_ID] for row in rows})
                query = sa.select(audit_events.c.request_id).where(audit_events.c.request_id.in_(ids))
                seen = set(conn.execute(query).scalars())
                fresh_rows = []
                for row in rows:
                    if row[REQUEST_ID] not in seen:
                        seen.add(row[REQUEST_ID])
                        fresh_rows.append(row)
                rows = fresh_rows
            if rows:
                if self.chain is not None:
                    rows = self.chain.extend(conn, rows)
                conn.exec_driver_sql(self._sql, rows)
        return rows

    def _store_takes_rows(self) -> bool:
        """Whether the store takes a plain row (written, then rolled back)."""
        try:
            with self.engine.connect() as conn:
                transaction = conn.begin()
                try:
                    conn.exec_driver_sql(self._sql, [self._canary])
                finally:
                    transaction.rollback()
        except Exception:
            return False
        return True

    def _stored(self, items: list[Item], fresh: bool) -> None:
        if fresh:
            self.written += len(items)
            _settle(items, True)
            if self._on_written is not None:
                self._on_written(len(items))
        else:
            self.replayed += len(items)
        if not self.healthy:
            log.warning("audit store writes recovered after %d failed attempts", self.failures)
            self._alarms.pop("store", None)
            self.healthy = True
            self.last_error = None
            self._replay_due = self.spill is not None

    def _store_failed(self, exc: Exception) -> None:
        self.failures += 1
        self.healthy = False
        self.last_error = type(exc).__name__
        self._next_try = time.monotonic() + self.retry_s
        if not self._alarm("store"):
            return
        where = f"the spill file {self.spill.path}" if self.spill is not None else "memory"
        log.error(
            "AUDIT STORE WRITE FAILED (%s); events go to %s until it recovers; next try in %.1fs",
            type(exc).__name__,
            where,
            self.retry_s,
        )

    def _spill_or_hold(self, items: list[Item]) -> None:
        if self.spill is not None:
            try:
                self.spill.append([row_as_dict(row) for row, _ in items])
            except OSError as exc:
                self._spill_failed(exc, len(items))
            else:
                self.spilled += len(items)
                if self.spill_error is not None:
                    self.spill_error = None
                    self._alarms.pop("spill", None)
                self._replay_due = True
                _settle(items, True)
                return
        self._held.extend(items)
        _settle(items, False)

    def _spill_failed(self, exc: OSError, count: int) -> None:
        self.spill_error = f"{type(exc).__name__}: {exc.strerror or exc}"
        if self._alarm("spill"):
            log.critical(
                "AUDIT SPILL FILE CANNOT BE WRITTEN (%s): %d events held in memory until the store or disk recovers",
                self.spill_error,
                count + len(self._held),
            )

    def _set_aside(self, item: Item, exc: Exception, fresh: bool) -> None:
        """A row the store refuses: to the poison file, never retried."""
        row = item[0]
        self.poisoned += 1
        if fresh:
            self._poisoned_fresh += 1
        record = {"error": type(exc).__name__, "event": row_as_dict(row)}
        kept = False
        if self.poison is not None:
            try:
                self.poison.append([record])
                kept = True
            except OSError as err:
                self._spill_failed(err, 0)
        log.error(
            "audit event %s set aside: the store refused one of its values (%s); %s",
            row[REQUEST_ID],
            type(exc).__name__,
            f"kept in {self.poison.path}" if kept and self.poison is not None else "it follows",
        )
        if not kept:
            log.critical("audit event set aside and not kept on disk: %s", orjson.dumps(record).decode())
        if fresh:
            _settle([item], kept)

    def _replay(self) -> None:
        """Write the spill files to the store (skipping events it holds), removing each once done."""
        spill = self.spill
        self._replay_due = False  # set again by any spill that happens meanwhile
        if spill is None:
            return
        try:
            # While the store fails, a replay is its probe: it retries the files already set aside
            # rather than setting the live one aside again, so an outage leaves two files, not one per try.
            paths = spill.waiting()
            if self.healthy or not paths:
                paths = spill.set_aside()
        except OSError as exc:
            log.error("audit spill file cannot be moved aside for a replay (%s)", exc.strerror or exc)
            self._replay_due = True
            return
        done = 0
        for path in paths:
            with SpillFile.claim(path) as mine:
                if not mine:
                    continue  # another process replays it
                try:
                    records, broken = SpillFile.read(path)
                except OSError as exc:
                    log.error("audit spill file %s cannot be read (%s)", path, exc.strerror or exc)
                    continue
                for line in broken:
                    # A line cut by a crash mid-write: never acknowledged, kept for an operator.
                    self._keep_unreadable(line)
                rows = [row_from_dict(record) for record in records]
                for start in range(0, len(rows), REPLAY_CHUNK):
                    chunk: list[Item] = [(row, None) for row in rows[start : start + REPLAY_CHUNK]]
                    if self._write(chunk, fresh=False):
                        self._replay_due = True  # the store failed again: the file stays for next time
                        if done:
                            log.warning("replayed %d audit events from %s before the store failed", done, path)
                        return
                    done += len(chunk)
                SpillFile.remove(path)
        if done:
            log.warning("replayed %d audit events from the spill file %s into the store", done, spill.path)

    def _anchor(self) -> None:
        """Write the chain's head to the anchor file and the sinks, when it moved since the last."""
        chain = self.chain
        assert chain is not None
        self._next_anchor = time.monotonic() + self.anchor_interval_s
        if chain.head == self._anchored or chain.head[0] == 0:
            return
        anchor = chain.anchor()
        if self.anchors is not None:
            try:
                self.anchors.append(anchor)
            except OSError as exc:
                if self._alarm("anchor"):
                    log.error("audit anchor file %s cannot be written (%s)", self.anchors.path, exc.strerror or exc)
                return
        if self.sinks is not None:
            self.sinks.anchor(anchor)
        self._anchored = chain.head
        log.info("audit anchor: position %d, hash %s", anchor["seq"], anchor["hash"])

    def _keep_unreadable(self, line: bytes) -> None:
        record = {"error": "unreadable spill line", "line": line.decode("utf-8", "replace")}
        self.poisoned += 1
        try:
            if self.poison is not None:
                self.poison.append([record])
        except OSError as exc:
            self._spill_failed(exc, 0)

    def _check_spill_dir(self) -> None:
        """Whether the spill folder takes a write (at start, and while a spill error is shown)."""
        assert self.spill is not None
        try:
            self.spill.check()
        except OSError as exc:
            self._spill_failed(exc, 0)
        else:
            self.spill_error = None

    def _report_at_close(self) -> None:
        if self._held:
            self.lost += len(self._held)
            log.critical(
                "audit store and spill file unavailable at shutdown: %d events lost (%s)",
                len(self._held),
                self.spill_error or self.last_error,
            )
            self._held = []
        waiting = self.spill.count() if self.spill is not None else 0
        if waiting and self.spill is not None:
            log.warning(
                "AUDIT EVENTS SPILLED: %d events could not be written to the store (%s); they are in %s "
                "and are written to the store at the next start",
                waiting,
                self.last_error or "it was unavailable",
                self.spill.path.with_name(f"{self.spill.path.stem}*.jsonl"),
            )

    def _alarm(self, name: str) -> bool:
        now = time.monotonic()
        if now - self._alarms.get(name, -ALARM_INTERVAL_S) < ALARM_INTERVAL_S:
            return False
        self._alarms[name] = now
        return True

    # -- the overflow thread: past `max_queue_events`, events go to the spill file ---------------

    def _to_overflow(self, raw: object) -> None:
        if self._overflow_thread is None:
            self._overflow_thread = threading.Thread(target=self._run_overflow, name="sluicegate-audit-spill")
            self._overflow_thread.daemon = True
            self._overflow_thread.start()
            log.warning(
                "audit queue full (%d events): further events go to the spill file %s",
                self.max_queue_events,
                self.spill.path if self.spill is not None else "-",
            )
        self._overflow.put(raw)

    def _run_overflow(self) -> None:
        spill = self.spill
        assert spill is not None
        while True:
            raws = [self._overflow.get()]
            with contextlib.suppress(queue.Empty):
                while len(raws) < self.batch_size:
                    raws.append(self._overflow.get_nowait())
            stop = _STOP in raws
            items = [_item(raw) for raw in raws if raw is not _STOP]
            if items:
                try:
                    spill.append([row_as_dict(row) for row, _ in items])
                except OSError as exc:
                    self._spill_failed(exc, len(items))
                    for raw in raws:
                        if raw is not _STOP:
                            self._queue.put(raw)  # the writer holds and retries them
                else:
                    self._overflow_spilled += len(items)
                    self._replay_due = True
                    _settle(items, True)
            if stop:
                return


def _item(raw: object) -> Item:
    if isinstance(raw, AuditEvent):
        return row_of(raw), None
    event, future = cast("tuple[AuditEvent, asyncio.Future[bool]]", raw)
    return row_of(event), future


def _settle(items: Sequence[Item], durable: bool) -> None:
    """Tell the callers waiting on these events (on their event loops) whether they are durable."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]] = {}
    for _, future in items:
        if future is not None:
            by_loop.setdefault(future.get_loop(), []).append(future)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, futures, durable)


def _resolve(futures: list[asyncio.Future[bool]], durable: bool) -> None:
    for future in futures:
        if not future.done():
            future.set_result(durable)
