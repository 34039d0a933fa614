"""The audit writer: events queued from the request path, group-committed by one thread.

`submit` is a non-blocking queue put: no lock, no I/O. The writer thread takes what is queued
(up to `batch_size`) and writes it in one transaction with one driver-level `executemany` of
plain tuples, so it holds the interpreter lock as little as possible. A failed write keeps the
batch and retries; it logs loudly and marks the writer unhealthy (`/readyz` says so;
`on_failure: refuse` makes the gateway refuse calls). `close` drains everything before
returning: nothing queued is lost on a clean shutdown (SIGTERM).
"""

from __future__ import annotations

import logging
import operator
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from sluicegate.audit.events import FIELDS, AuditEvent
from sluicegate.store.db import audit_events

log = logging.getLogger("sluicegate.audit")

_STOP = object()
_as_tuple: Callable[[AuditEvent], tuple[Any, ...]] = operator.attrgetter(*FIELDS)


def _insert_sql(engine: Engine) -> str:
    """The INSERT for one event, in the driver's own parameter style."""
    marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    columns = ", ".join(FIELDS)
    return f"INSERT INTO {audit_events.name} ({columns}) VALUES ({', '.join([marker] * len(FIELDS))})"


class AuditWriter:
    """Batches audit events into the database off the request path."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.05,
        retry_s: float = 1.0,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_s = retry_s
        self._on_written = on_written
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sluicegate-audit", daemon=True)
        self._sql = _insert_sql(engine)
        self.healthy = True
        self.last_error: str | None = None
        self.failures = 0
        # Each counter has one writer (the event loop, the writer thread): no lock needed.
        self._submitted = 0
        self.written = 0
        self._dropped = 0

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, event: AuditEvent) -> None:
        """Queue one event (never blocks, never does I/O)."""
        self._submitted += 1
        self._queue.put(event)

    @property
    def pending(self) -> int:
        """Events queued or being written."""
        return self._submitted - self.written - self._dropped

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until every submitted event is written (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self.pending > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the thread."""
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("audit writer did not drain within %.0fs: %d events not written", timeout, self.pending)

    def _run(self) -> None:
        stopping = False
        while True:
            item = self._queue.get()
            batch: list[AuditEvent] = []
            if item is _STOP:
                stopping = True
            else:
                batch.append(item)  # type: ignore[arg-type]
            deadline = time.monotonic() + self.flush_interval_s
            while len(batch) < self.batch_size:
                try:
                    wait = 0.0 if stopping else deadline - time.monotonic()
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    continue
                batch.append(item)  # type: ignore[arg-type]
            if batch:
                self._write(batch, stopping)
            if stopping and self._queue.empty():
                return

    def _write(self, batch: list[AuditEvent], stopping: bool) -> None:
        rows = [_as_tuple(event) for event in batch]
        attempts = 0
        while True:
            try:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(self._sql, rows)
            except Exception as exc:  # any store failure: keep the batch, say so, retry
                attempts += 1
                self.failures += 1
                self.healthy = False
                self.last_error = type(exc).__name__
                log.error(
                    "AUDIT STORE WRITE FAILED (%s); %d events held in memory, retrying in %.1fs",
                    type(exc).__name__,
                    self.pending,
                    self.retry_s,
                )
                if stopping and attempts >= 3:
                    log.critical("audit store unavailable at shutdown: %d events lost", len(rows))
                    self._dropped += len(rows)
                    return
                time.sleep(self.retry_s)
                continue
            if not self.healthy:
                log.warning("audit store writes recovered after %d failed attempts", attempts)
            self.healthy = True
            self.last_error = None
            self.written += len(rows)
            if self._on_written is not None:
                self._on_written(len(rows))
            return
