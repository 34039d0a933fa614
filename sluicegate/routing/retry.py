"""Retries within bounds: a per-target retry budget and full-jitter backoff that honours Retry-After.

A route's plan (`routing.service.RoutePlan`) retries an attempt only if the policy's
`max_attempts`, the target's budget and the call's deadline all have room, and only before the
first byte went to the client.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

#: the budget's window is this many buckets, each window_s / BUDGET_BUCKETS long
BUDGET_BUCKETS = 10
#: past this many doublings the exponential term is above any sane cap (and 2.0**n would overflow)
_MAX_DOUBLINGS = 64


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one call retries: `max_attempts` counts the first attempt too (3: two retries at most)."""

    max_attempts: int = 3
    base_s: float = 0.25
    cap_s: float = 4.0
    budget_ratio: float = 0.2
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_s < 0 or self.cap_s < self.base_s:
            raise ValueError(f"need 0 <= base_s <= cap_s, got base_s={self.base_s} cap_s={self.cap_s}")
        if self.budget_ratio < 0:
            raise ValueError(f"budget_ratio must not be negative, got {self.budget_ratio}")
        if self.max_retry_after_s < 0:
            raise ValueError(f"max_retry_after_s must not be negative, got {self.max_retry_after_s}")

    def delay_s(self, attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float | None:
        """`backoff_s` with this policy's bounds."""
        return backoff_s(attempt, self.base_s, self.cap_s, rng, retry_after_s, self.max_retry_after_s)


def backoff_s(
    attempt: int,
    base_s: float,
    cap_s: float,
    rng: random.Random,
    retry_after_s: float | None = None,
    max_retry_after_s: float = 60.0,
) -> float | None:
    """Seconds to wait before a retry, or None when the caller should not retry at all.

    `attempt` is the number of retries already made for this call (0 before the first retry).
    The wait is drawn with full jitter, uniform in [0, min(cap_s, base_s * 2**attempt)], so that
    clients that failed together do not retry together.

    When the upstream sent Retry-After, the wait is never shorter than it, even above `cap_s`:
    the upstream said when it will take calls again. A Retry-After beyond `max_retry_after_s`
    returns None: waiting that long holds the client for nothing, so the caller should fall back
    to another target or fail now. A negative Retry-After counts as zero.
    """
    if attempt < 0:
        raise ValueError(f"attempt must not be negative, got {attempt}")
    if retry_after_s is not None and retry_after_s > max_retry_after_s:
        return None
    ceiling = cap_s if attempt >= _MAX_DOUBLINGS else min(cap_s, base_s * 2.0**attempt)
    delay = rng.uniform(0.0, ceiling)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s, 0.0)
    return delay


class RetryBudget:
    """Retries a target may receive: `ratio` of its recent first attempts, or a small floor.

    Retries allowed in the window are at most `ratio` * first attempts in the window, or
    `min_retries_per_s` * `window_s` when that is more: the floor that lets a quiet target retry
    at all (a single call's 429 with `Retry-After`). When a target fails every call, retries are
    capped at that share of the traffic instead of multiplying it by `max_attempts` (retry
    storms): over activity that fits in the ring's buckets, N first attempts bring at most
    N + max(N * ratio, floor) attempts, so N * (1 + ratio) once N * ratio reaches the floor; over
    longer spans the floor is granted again for each BUDGET_BUCKETS buckets the activity spans.

    The window is a ring of buckets: the current one and the BUDGET_BUCKETS - 1 before it.

    Usage:
        budget.request()                  # before every first attempt
        if failed and budget.try_retry(): # counts the retry when it returns True
            ...
    """

    def __init__(
        self,
        ratio: float = 0.2,
        min_retries_per_s: float = 0.1,
        window_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or min_retries_per_s < 0:
            raise ValueError("ratio and min_retries_per_s must not be negative")
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.ratio = ratio
        self.floor = min_retries_per_s * window_s
        self._clock = clock
        self._width = window_s / BUDGET_BUCKETS
        self._requests = [0] * BUDGET_BUCKETS
        self._retries = [0] * BUDGET_BUCKETS
        self._head: int | None = None  # absolute index of the newest bucket
        #: the newest bucket's ring slot and when it ends: a call within it needs no arithmetic
        self._slot = 0
        self._ends = -math.inf
        self._requests_in_window = 0
        self._retries_in_window = 0

    @property
    def requests(self) -> int:
        """First attempts in the window."""
        self._advance()
        return self._requests_in_window

    @property
    def retries(self) -> int:
        """Retries in the window."""
        self._advance()
        return self._retries_in_window

    def request(self, now: float | None = None) -> None:
        """Count a first attempt (`now`: the budget's clock, if just read)."""
        slot = self._advance(now)
        self._requests[slot] += 1
        self._requests_in_window += 1

    def try_retry(self) -> bool:
        """True, and the retry is counted, if the budget has room for one more; False otherwise."""
        slot = self._advance()
        # the retry must fit once counted, so the window never holds more than the bound
        if self._retries_in_window + 1 > max(self.ratio * self._requests_in_window, self.floor):
            return False
        self._retries[slot] += 1
        self._retries_in_window += 1
        return True

    def room(self) -> float:
        """How many more retries the window allows now (for metrics)."""
        self._advance()
        return max(0.0, max(self.ratio * self._requests_in_window, self.floor) - self._retries_in_window)

    def _advance(self, now: float | None = None) -> int:
        if now is None:
            now = self._clock()
        if now < self._ends:
            return self._slot
        index = int(now // self._width)
        if self._head is None:
            self._head = index
        elif index > self._head:
            # at most one full turn of the ring, however long the target sat idle
            for step in range(1, min(index - self._head, BUDGET_BUCKETS) + 1):
                slot = (self._head + step) % BUDGET_BUCKETS
                self._requests_in_window -= self._requests[slot]
                self._retries_in_window -= self._retries[slot]
                self._requests[slot] = self._retries[slot] = 0
            self._head = index
        # a clock that steps back (only a test's can) counts into the newest bucket
        self._slot = slot = self._head % BUDGET_BUCKETS
        if index == self._head:
            self._ends = (index + 1) * self._width
        return slot
