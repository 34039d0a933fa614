"""The audit writer: events queued from the request path, group-committed by one thread.

`submit` is a non-blocking queue put. The writer thread takes what is queued (up to
`batch_size`) and writes it in one transaction. A failed write keeps the batch and retries; it
logs loudly and marks the writer unhealthy (`/readyz` says so; `on_failure: refuse` makes the
gateway refuse calls). `close` drains everything before returning: nothing queued is lost on a
clean shutdown (SIGTERM).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from sluicegate.audit.events import AuditEvent
from sluicegate.store.db import audit_events

log = logging.getLogger("sluicegate.audit")

_STOP = object()


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
        self._insert = audit_events.insert()
        self.healthy = True
        self.last_error: str | None = None
        self.written = 0
        self.failures = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, event: AuditEvent) -> None:
        """Queue one event (never blocks, never does I/O)."""
        with self._lock:
            self._pending += 1
        self._queue.put(event)

    @property
    def pending(self) -> int:
        """Events queued or being written."""
        return self._pending

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until every submitted event is written (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the thread."""
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("audit writer did not drain within %.0fs: %d events not written", timeout, self._pending)

    def _run(self) -> None:
        stopping = False
        while True:
            item = self._queue.get()
            if item is _STOP:
                stopping = True
                batch: list[AuditEvent] = []
            else:
                batch = [item]  # type: ignore[list-item]
            deadline = time.monotonic() + self.flush_interval_s
            while len(batch) < self.batch_size:
                try:
                    wait = 0 if stopping else max(0.0, deadline - time.monotonic())
                    item = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
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
        rows = [event.as_row() for event in batch]
        attempts = 0
        while True:
            try:
                with self.engine.begin() as conn:
                    conn.execute(self._insert, rows)
            except Exception as exc:  # any store failure: keep the batch, say so, retry
                attempts += 1
                self.failures += 1
                self.healthy = False
                self.last_error = type(exc).__name__
                log.error(
                    "AUDIT STORE WRITE FAILED (%s); %d events held in memory, retrying in %.1fs",
                    type(exc).__name__,
                    len(batch) + self._queue.qsize(),
                    self.retry_s,
                )
                if stopping and attempts >= 3:
                    log.critical("audit store unavailable at shutdown: %d events lost", len(batch))
                    self._done(len(batch))
                    return
                time.sleep(self.retry_s)
                continue
            if not self.healthy:
                log.warning("audit store writes recovered after %d failed attempts", attempts)
            self.healthy = True
            self.last_error = None
            self.written += len(rows)
            self._done(len(rows))
            if self._on_written is not None:
                self._on_written(len(rows))
            return

    def _done(self, n: int) -> None:
        with self._idle:
            self._pending -= n
            if not self._pending:
                self._idle.notify_all()
