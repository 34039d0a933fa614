"""What every audit sink shares: its bounded queue, its thread, its counters and its patience.

`put` is called from the audit writer's thread: it takes the queue's lock only to append (the
sink's thread holds it only to take a batch, never while it delivers), so a sink whose delivery
hangs never slows the writer; a full queue applies the sink's `on_full` policy and counts the
drop. The thread takes batches and hands them to `deliver`, which a kind implements: it returns
once the batch is delivered or given up (and counted either way). `stop` asks the thread to
deliver what waits until a deadline, then to give up the rest, counted and logged.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    from sluicegate.audit.sink_config import AuditSinkConfig
    from sluicegate.vault import Vault

log = logging.getLogger("sluicegate.audit.sinks")

#: one stored event (field -> value, `chain_seq` and `chain_hash` included) or one chain anchor
Record = dict[str, Any]
#: the same warning (a full queue, a failing delivery) is logged at most this often per sink
LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What sinks are built with besides their config."""

    vault: Vault
    #: relative file paths are under it
    data_dir: Path


class Throttle:
    """Says when a repeated warning may be logged again, and how many were held back meanwhile."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._next = 0.0
        self.held = 0

    def due(self) -> bool:
        """True at most once per interval; otherwise counts one more held back."""
        now = time.monotonic()
        if now < self._next:
            self.held += 1
            return False
        self._next = now + self.interval_s
        return True

    def take_held(self) -> int:
        """How many were held back since the last time it was due (and reset)."""
        held, self.held = self.held, 0
        return held


class Sink:
    """One sink: a bounded queue of records and the thread that delivers them.

    A kind sets `type`, `batch_size` and `linger_s`, and implements `deliver` (which prepares
    what it needs on first use) and `shut` (run on the thread after the last batch)."""

    type: ClassVar[str]

    def __init__(self, config: AuditSinkConfig, name: str, context: SinkContext) -> None:
        self.config = config
        self.name = name
        self.context = context
        #: records per `deliver` at most, and how long a batch may wait to fill once it holds one
        self.batch_size = 1000
        self.linger_s = 0.0
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[Record] = collections.deque()
        self._taken = 0
        self._closing = False
        self._deadline = math.inf
        self._thread = threading.Thread(target=self._run, name=f"sluicegate-sink-{name}", daemon=True)
        # Written under `_cond`: several threads count (the writer drops, the sink delivers).
        self.delivered = 0
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None
        self._full_log = Throttle()
        self._fail_log = Throttle()
        self._drop_log = Throttle()

    @property
    def target(self) -> str:
        """Where the sink delivers, as logs and status may show it (no credential)."""
        return ""

    # -- the writer's thread ----------------------------------------------------------------------

    def put(self, records: list[Record]) -> None:
        """Queue records without waiting; past `queue_size`, apply `on_full` (counted, logged)."""
        size = self.config.queue_size
        with self._cond:
            room = size - len(self._queue)
            if len(records) <= room:
                self._queue.extend(records)
                dropped = 0
            elif self.config.on_full == "drop_newest":
                if room > 0:
                    self._queue.extend(records[:room])
                dropped = len(records) - max(room, 0)
            else:
                self._queue.extend(records[-size:])
                dropped = len(self._queue) - size
                for _ in range(dropped):
                    self._queue.popleft()
                dropped += max(0, len(records) - size)
            self._cond.notify()
            if not dropped:
                return
            self.dropped += dropped
            due = self._full_log.due()
        if due:
            log.warning(
                "audit sink %s: queue full (%d events), %s: %d dropped so far",
                self.name,
                size,
                "newest events dropped" if self.config.on_full == "drop_newest" else "oldest events dropped",
                self.dropped,
            )

    # -- control (any thread) ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the sink's thread."""
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Deliver what waits until `deadline` (a `time.monotonic()` value), then give up the rest."""
        with self._cond:
            self._closing = True
            self._deadline = min(self._deadline, deadline)
            self._cond.notify()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to finish; True when it did (or never started)."""
        if self._thread.ident is None:
            return True
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def pending(self) -> int:
        """Records queued or being delivered."""
        return len(self._queue) + self._taken + self.held()

    def held(self) -> int:
        """Records a kind holds past `deliver` (a library's own queue); none by default."""
        return 0

    def status(self) -> dict[str, Any]:
        """Counters for `/readyz` (no credential: the target is shown without one)."""
        return {
            "type": self.type,
            "name": self.name,
            "target": self.target,
            "queued": self.pending(),
            "delivered": self.delivered,
            "dropped": self.dropped,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    # -- the sink's thread ------------------------------------------------------------------------

    def deliver(self, batch: list[Record]) -> None:
        """Deliver one batch, or give it up; count either way (blocking, on the sink's thread)."""
        raise NotImplementedError

    def shut(self) -> None:
        """Release what delivering took (on the sink's thread, after the last batch)."""

    def _run(self) -> None:
        try:
            while (batch := self._take()) is not None:
                try:
                    self.deliver(batch)
                except Exception as exc:  # a kind's bug must not stop the sink: the batch is counted
                    self.given_up(len(batch), f"{type(exc).__name__} while delivering")
                    log.exception("audit sink %s: delivery failed unexpectedly", self.name)
                finally:
                    with self._cond:
                        self._taken = 0
        finally:
            try:
                self.shut()
            finally:
                self._report_at_stop()

    def _take(self) -> list[Record] | None:
        """The next batch (up to `batch_size`, within `linger_s` of its first record); None once
        stopped with nothing left, or past the deadline (what waits is then given up)."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            if self._closing and time.monotonic() >= self._deadline:
                return None
            if self.linger_s > 0 and not self._closing:
                until = time.monotonic() + self.linger_s
                while len(self._queue) < self.batch_size and not self._closing:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            count = min(self.batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(count)]
            self._taken = count
            return batch

    def _report_at_stop(self) -> None:
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self.dropped += left
        if left:
            log.error("audit sink %s stopped before delivering %d events (%s)", self.name, left, self.last_error)

    # -- helpers for `deliver` --------------------------------------------------------------------

    def counted(self, delivered: int) -> None:
        """Count records delivered."""
        with self._cond:
            self.delivered += delivered

    def failed(self, error: str) -> None:
        """Count one failed delivery attempt (logged at most every `LOG_INTERVAL_S`)."""
        with self._cond:
            self.failures += 1
            self.last_error = error
            due = self._fail_log.due()
        if due:
            held = self._fail_log.take_held()
            more = f" ({held} more failures since the last report)" if held else ""
            log.warning("audit sink %s (%s): delivery failed: %s%s", self.name, self.target, error, more)

    def given_up(self, count: int, why: str) -> None:
        """Count records that will not be delivered (logged at most every `LOG_INTERVAL_S`)."""
        with self._cond:
            self.dropped += count
            due = self._drop_log.due()
        if due:
            log.error(
                "audit sink %s (%s): %d events dropped (%s); %d dropped so far",
                self.name,
                self.target,
                count,
                why,
                self.dropped,
            )

    def wait_for(self, done: Callable[[], bool]) -> bool:
        """Wait until `done()` (checked under the queue's lock, at each `wake`); False when the
        sink was stopped and its deadline has passed first."""
        with self._cond:
            while not done():
                if self._closing and time.monotonic() >= self._deadline:
                    return False
                self._cond.wait(min(1.0, max(0.0, self._deadline - time.monotonic())))
            return True

    def wake(self) -> None:
        """Wake the sink's thread (another thread changed what `wait_for` waits on)."""
        with self._cond:
            self._cond.notify_all()

    def pause(self, delay_s: float) -> bool:
        """Wait before a retry; False when the sink was stopped and its deadline has passed.

        Once stopped, the wait ends at the deadline at the latest."""
        with self._cond:
            end = time.monotonic() + delay_s
            while True:
                now = time.monotonic()
                if self._closing and now >= self._deadline:
                    return False
                left = min(end, self._deadline) - now
                if left <= 0:
                    return True
                # Woken by every `put` and by `stop`: each wake-up looks at the deadline again.
                self._cond.wait(left)

    @property
    def stopping(self) -> bool:
        """Whether the sink was asked to stop."""
        return self._closing


def backoff_s(attempt: int, first_s: float, max_s: float) -> float:
    """The wait before retry `attempt` (1, 2 ...): doubling from `first_s`, capped at `max_s`, with
    the upper half jittered so that instances that failed together do not retry together."""
    delay = min(max_s, first_s * 2.0 ** min(attempt - 1, 32))
    return delay / 2 + random.uniform(0, delay / 2)


def dump_json(record: Record) -> bytes:
    """A record as compact JSON (one line: JSON strings escape line breaks); a value JSON cannot
    hold (bytes, a decimal) is written as text."""
    return orjson.dumps(record, default=_as_text)


def _as_text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def origin(url: str) -> str:
    """`scheme://host:port` of a URL: no user, password, path or query (which may hold a token)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    host = parts.hostname or ""
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}{port}"
