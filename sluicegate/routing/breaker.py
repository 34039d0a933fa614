"""A circuit breaker per upstream target: it stops sending calls to a target that keeps failing,
then lets a few probe calls through to learn when it has recovered.

The route stage asks `allow()` before each attempt and reports every allowed attempt back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]
CLOSED: BreakerState = "closed"
OPEN: BreakerState = "open"
HALF_OPEN: BreakerState = "half_open"

#: the closed state's window is this many buckets, each window_s / WINDOW_BUCKETS long
WINDOW_BUCKETS = 10


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a breaker opens and how it recovers.

    It opens when its window (the last `window_s` seconds) holds at least `min_calls` calls and
    at least `failure_rate` of them failed. It stays open `open_s`, then lets `half_open_probes`
    calls through at once. Each probe failure in a row doubles the next open time, up to
    `max_open_s` (None: 8 * `open_s`).
    """

    failure_rate: float = 0.5
    min_calls: int = 10
    window_s: float = 30.0
    open_s: float = 30.0
    half_open_probes: int = 1
    max_open_s: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ValueError(f"failure_rate must be in (0, 1], got {self.failure_rate}")
        if self.min_calls < 1:
            raise ValueError(f"min_calls must be at least 1, got {self.min_calls}")
        if self.window_s <= 0 or self.open_s <= 0:
            raise ValueError("window_s and open_s must be positive")
        if self.half_open_probes < 1:
            raise ValueError(f"half_open_probes must be at least 1, got {self.half_open_probes}")
        if self.max_open_s is not None and self.max_open_s < self.open_s:
            raise ValueError(f"max_open_s ({self.max_open_s}) must not be below open_s ({self.open_s})")

    @property
    def open_cap_s(self) -> float:
        """The longest a breaker stays open after probe failures in a row."""
        return 8 * self.open_s if self.max_open_s is None else self.max_open_s


class _Window:
    """Calls and failures over the last `window_s`, in a ring of buckets: O(1) to record and to read.

    It holds the current bucket and the WINDOW_BUCKETS - 1 before it, so a call is forgotten between
    window_s - width and window_s after it was recorded.
    """

    __slots__ = ("_calls", "_ends", "_failures", "_head", "_slot", "_width", "calls", "failures")

    def __init__(self, window_s: float) -> None:
        self._width = window_s / WINDOW_BUCKETS
        self._calls = [0] * WINDOW_BUCKETS
        self._failures = [0] * WINDOW_BUCKETS
        self._head: int | None = None  # absolute index of the newest bucket
        #: the newest bucket's ring slot and when it ends: a call within it needs no arithmetic
        self._slot = 0
        self._ends = -math.inf
        self.calls = 0
        self.failures = 0

    def advance(self, now: float) -> int:
        """Expire the buckets that `now` has left behind; returns the ring slot of `now`."""
        if now < self._ends:
            return self._slot
        index = int(now // self._width)
        if self._head is None:
            self._head = index
        elif index > self._head:
            # at most one full turn of the ring, however long the breaker sat idle
            for step in range(1, min(index - self._head, WINDOW_BUCKETS) + 1):
                slot = (self._head + step) % WINDOW_BUCKETS
                self.calls -= self._calls[slot]
                self.failures -= self._failures[slot]
                self._calls[slot] = self._failures[slot] = 0
            self._head = index
        # a clock that steps back (only a test's can) counts into the newest bucket
        self._slot = slot = self._head % WINDOW_BUCKETS
        if index == self._head:
            self._ends = (index + 1) * self._width
        return slot

    def add(self, now: float, failed: bool) -> None:
        slot = self.advance(now)
        self._calls[slot] += 1
        self.calls += 1
        if failed:
            self._failures[slot] += 1
            self.failures += 1

    def clear(self) -> None:
        self._calls = [0] * WINDOW_BUCKETS
        self._failures = [0] * WINDOW_BUCKETS
        self._head = None
        self._ends = -math.inf
        self.calls = self.failures = 0


class CircuitBreaker:
    """Closed, open or half-open, from the successes and failures reported for one target.

    What counts as a failure is the caller's decision: a connection error, a timeout, a 429 or a
    5xx usually do; a 4xx caused by the client's own request does not, since it says nothing of
    the target's health. The breaker only sees the booleans passed to `record`.

    States:
    - closed: every call is allowed; outcomes are counted in a sliding window, and the breaker
      opens once the window holds `min_calls` calls with a failure share of `failure_rate`.
    - open: no call is allowed until the open time has passed; then it is half-open.
    - half_open: at most `half_open_probes` calls are out at once. Each allowed probe must be
      reported with `record(success)`, or given back with `release()` if it was never sent. A
      probe success closes the breaker with an empty window; a probe failure opens it again for
      twice the previous open time, up to `settings.open_cap_s`.

    Reports that arrive while open, or while half-open with no probe out, come from calls allowed
    before the breaker opened (LLM calls are long); they are ignored, as they say nothing of the
    probes. The state moves from open to half-open when it is next read, by any method.

    `on_change(old, new)` is called after each transition, with the breaker already in its new
    state; it must not raise. `transitions` counts them.

    Usage:
        breaker = CircuitBreaker(BreakerSettings(min_calls=20))
        if breaker.allow():
            ok = await attempt()          # the caller decides what "ok" means
            breaker.record(ok)
    """

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._on_change = on_change
        self._window = _Window(self.settings.window_s)
        self._state: BreakerState = CLOSED
        self._opened_at = 0.0
        self._open_for_s = self.settings.open_s
        self._reopens = 0  # probe failures in a row since the breaker last closed
        self._probes_out = 0
        self.transitions = 0

    @property
    def state(self) -> BreakerState:
        """The current state, once the open time is taken into account."""
        self._refresh(self._clock())
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the target now; in half-open, True takes a probe slot."""
        self._refresh(self._clock())
        if self._state == CLOSED:
            return True
        if self._state == HALF_OPEN and self._probes_out < self.settings.half_open_probes:
            self._probes_out += 1
            return True
        return False

    def record(self, success: bool, now: float | None = None) -> None:
        """Report the outcome of an allowed call (`now`: the breaker's clock, if just read)."""
        if now is None:
            now = self._clock()
        if self._state == OPEN:
            self._refresh(now)
        if self._state == CLOSED:
            self._window.add(now, failed=not success)
            window = self._window
            if window.calls >= self.settings.min_calls and window.failures >= self.settings.failure_rate * window.calls:
                self._open(now, self.settings.open_s)
        elif self._state == HALF_OPEN and self._probes_out > 0:
            self._probes_out -= 1
            if success:
                self._close()
            else:
                self._reopens += 1
                self._open(now, min(self.settings.open_s * 2.0**self._reopens, self.settings.open_cap_s))

    def release(self) -> None:
        """Give back a call that `allow()` let through but that was never attempted."""
        self._refresh(self._clock())
        if self._state == HALF_OPEN and self._probes_out > 0:
            self._probes_out -= 1

    def snapshot(self) -> dict[str, str | int | float | None]:
        """The breaker as plain values, for `/readyz` details and metrics."""
        now = self._clock()
        self._refresh(now)
        self._window.advance(now)
        is_open = self._state == OPEN
        return {
            "state": self._state,
            "failures": self._window.failures,
            "calls": self._window.calls,
            "open_age_s": now - self._opened_at if self._state != CLOSED else None,
            "next_probe_in_s": max(0.0, self._opened_at + self._open_for_s - now) if is_open else None,
            "open_for_s": self._open_for_s if self._state != CLOSED else None,
            "probes_out": self._probes_out,
            "transitions": self.transitions,
        }

    def _refresh(self, now: float) -> None:
        if self._state == OPEN and now - self._opened_at >= self._open_for_s:
            self._probes_out = 0
            self._move(HALF_OPEN)

    def _open(self, now: float, open_for_s: float) -> None:
        self._opened_at = now
        self._open_for_s = open_for_s
        self._probes_out = 0
        self._window.clear()
        self._move(OPEN)

    def _close(self) -> None:
        self._reopens = 0
        self._probes_out = 0
        self._open_for_s = self.settings.open_s
        self._window.clear()
        self._move(CLOSED)

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        self.transitions += 1
        if self._on_change is not None:
            self._on_change(old, new)
