"""Counters for budgets and rate limits: atomic all-or-nothing reservations, idempotent settlement.

Every limit of a call is a `Charge` on one counter bucket. `reserve` checks every charge and, only
if all have room, holds each amount (a worst case: the estimate) under the call's request id.
`settle` replaces what a request holds with what it actually used, once: a second settle, or a
settle after the reaper took the reservation, changes nothing. A reservation that is never
settled (its instance crashed) is settled at its estimate by `reap` once its lease or its TTL
runs out, and reported so the audit trail records it.

Two backends keep this contract: `MemoryCounters` (one process, the default) and
`sluicegate.limits.redis.RedisCounters` (every instance sharing one Redis server). The contract
tests in `tests/limits/test_counters.py` run against both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class Charge(NamedTuple):
    """What one call takes from one counter (a tuple: one is made per limit of every call)."""

    #: the bucket the amount is held in, and settled into
    key: str
    #: every bucket summed for the check: `(key,)` for a fixed or calendar window, the live
    #: buckets of a rolling window (the current one, `key`, among them)
    window: tuple[str, ...]
    #: the most the buckets of `window` may hold together (used + reserved)
    limit: int
    #: held now: the worst case of this call
    amount: int
    #: how long `key` must live from now (to the end of its window, and a margin)
    ttl_s: float
    #: when refused while reservations of other calls hold the room, the caller may wait for them
    #: (budgets); False: refuse at once (rate limits)
    wait: bool = False


class Level(NamedTuple):
    """A counter's state over its window: settled spend, and what calls in flight hold."""

    used: int
    reserved: int


@dataclass(frozen=True, slots=True)
class Refused:
    """`reserve` found no room in `charges[index]` (the first one without room); nothing was held."""

    index: int
    level: Level
    #: the settled use alone leaves room: calls in flight may free what they hold
    may_wait: bool


@dataclass(frozen=True, slots=True)
class Reaped:
    """A reservation the reaper settled at its estimate (its call's instance never settled it)."""

    request_id: str
    keys: tuple[str, ...]
    amounts: tuple[int, ...]
    #: what the gateway stored with the reservation (who, which model), to audit it
    meta: str


class CountersUnavailable(Exception):
    """The counter store cannot be reached or did not answer in time."""


class Counters(Protocol):
    """Where budget and rate-limit counters live."""

    def clock(self) -> float:
        """Now, in epoch seconds, by the clock every user of these counters shares."""
        ...

    async def reserve(
        self, request_id: str, charges: Sequence[Charge], ttl_s: float, meta: str = ""
    ) -> list[Level] | Refused:
        """Hold every charge's amount, or none: the levels after holding, or the first refusal.

        `ttl_s`: after this time the reaper settles the reservation at its amounts. A request id
        that already holds a reservation is refused with ValueError."""
        ...

    async def settle(
        self, request_id: str, actual: Sequence[int], windows: Sequence[tuple[str, ...]]
    ) -> list[Level] | None:
        """Replace what `request_id` holds with `actual` (one value per charge, in order): the
        levels of `windows` (the charges' windows) just after, in the same operation; None when
        it holds nothing (settled or reaped before), and nothing changes."""
        ...

    async def levels(self, windows: Sequence[tuple[str, ...]]) -> list[Level]:
        """The level of each window (a tuple of bucket keys)."""
        ...

    async def adjust(self, key: str, delta: int, ttl_s: float) -> None:
        """Add `delta` to a bucket's settled use (reconciliation with the ledger)."""
        ...

    async def buckets(self, prefix: str) -> dict[str, Level]:
        """Every live bucket whose key starts with `prefix`, and its level."""
        ...

    async def renew(self, request_ids: Sequence[str]) -> None:
        """Extend the lease of reservations this instance still holds (shared backends)."""
        ...

    async def reap(self) -> list[Reaped]:
        """Settle at their estimate the reservations whose lease or TTL ran out; drop dead buckets."""
        ...

    async def wait_settled(self, timeout_s: float) -> None:
        """Return when some reservation may have been settled, or after `timeout_s`."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


#: builds a Level without the Python-level `__new__` of a NamedTuple (the request path makes many)
_level = tuple.__new__


@dataclass(slots=True)
class _Held:
    keys: tuple[str, ...]
    amounts: tuple[int, ...]
    expires: float
    meta: str
    #: the buckets themselves, when the caller holds them (`hold`)
    refs: Sequence[list[int]] | None = None


class MemoryCounters:
    """Counters in this process: exact for one process (each operation runs without awaiting)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        #: bucket -> [used, reserved]
        self._buckets: dict[str, list[int]] = {}
        #: bucket -> when it may be dropped
        self._expires: dict[str, float] = {}
        self._held: dict[str, _Held] = {}
        self._settled: asyncio.Event | None = None
        #: changes whenever buckets are dropped: what callers keep of them (`bucket`) is then stale
        self.generation = 0

    def clock(self) -> float:
        return self._clock()

    async def reserve(
        self, request_id: str, charges: Sequence[Charge], ttl_s: float, meta: str = ""
    ) -> list[Level] | Refused:
        return self.reserve_now(request_id, charges, ttl_s, meta)

    def reserve_now(
        self, request_id: str, charges: Sequence[Charge], ttl_s: float, meta: str = ""
    ) -> list[Level] | Refused:
        """`reserve`, without a coroutine: nothing in it waits (the stage's fast path)."""
        if request_id in self._held:
            raise ValueError(f"request {request_id} already holds a reservation")
        buckets = self._buckets
        levels: list[Level] = []
        for i, charge in enumerate(charges):
            key, window, limit, amount = charge[0], charge[1], charge[2], charge[3]
            if len(window) == 1:
                bucket = buckets.get(key)
                used, reserved = (bucket[0], bucket[1]) if bucket is not None else (0, 0)
            else:
                used = reserved = 0
                for key in window:
                    bucket = buckets.get(key)
                    if bucket is not None:
                        used += bucket[0]
                        reserved += bucket[1]
            if used + reserved + amount > limit:
                return Refused(i, Level(used, reserved), used + amount <= limit)
            levels.append(_level(Level, (used, reserved + amount)))
        now = self._clock()
        for charge in charges:
            bucket = buckets.get(charge.key)
            if bucket is None:
                # A bucket lives `ttl_s` from its first charge: to its window's end and a margin.
                bucket = buckets[charge.key] = [0, 0]
                self._expires[charge.key] = now + charge.ttl_s
            bucket[1] += charge.amount
        self._held[request_id] = _Held(
            tuple([c.key for c in charges]), tuple([c.amount for c in charges]), now + ttl_s, meta
        )
        return levels

    async def settle(
        self, request_id: str, actual: Sequence[int], windows: Sequence[tuple[str, ...]]
    ) -> list[Level] | None:
        return self.settle_now(request_id, actual, windows)

    def settle_now(
        self, request_id: str, actual: Sequence[int], windows: Sequence[tuple[str, ...]]
    ) -> list[Level] | None:
        """`settle`, without a coroutine."""
        held = self._held.pop(request_id, None)
        if held is None:
            return None
        self._release(held, actual)
        return [self._level(window) for window in windows]

    def bucket(self, key: str, ttl_s: float) -> list[int]:
        """A bucket's `[used, reserved]`, created when new: a caller that keeps it (the limits
        stage, for the current window) reserves and settles on it without a lookup (`hold`)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [0, 0]
            self._expires[key] = self._clock() + ttl_s
        return bucket

    def has(self, key: str) -> bool:
        """Whether a bucket is counted under `key`."""
        return key in self._buckets

    def is_live(self, key: str, bucket: list[int]) -> bool:
        """Whether `bucket` is still the one counted under `key` (not dropped by the reaper)."""
        return self._buckets.get(key) is bucket

    def hold(
        self, request_id: str, keys: tuple[str, ...], amounts: tuple[int, ...], refs: Sequence[list[int]], ttl_s: float
    ) -> None:
        """Record a reservation the caller made on `refs` (buckets from `bucket`) itself, after
        checking them: settled by `settle_held`, or by the reaper like any other."""
        if request_id in self._held:
            raise ValueError(f"request {request_id} already holds a reservation")
        self._held[request_id] = _Held(keys, amounts, self._clock() + ttl_s, "", refs)

    def settle_held(self, request_id: str, actual: Sequence[int]) -> Sequence[list[int]] | None:
        """Settle a reservation made with `hold`: its buckets after, or None when it holds nothing."""
        held = self._held.pop(request_id, None)
        if held is None:
            return None
        refs = held.refs
        if refs is None:
            self._release(held, actual)
            return [self.bucket(key, 0.0) for key in held.keys]
        for bucket, amount, spent in zip(refs, held.amounts, actual, strict=True):
            bucket[1] -= amount
            bucket[0] += spent
        if self._settled is not None:
            self._settled.set()
            self._settled = None
        return refs

    def _release(self, held: _Held, actual: Sequence[int]) -> None:
        buckets = self._buckets
        for key, amount, spent in zip(held.keys, held.amounts, actual, strict=True):
            bucket = buckets.get(key)
            if bucket is None:  # dropped at the end of its window: recreate it for the record
                bucket = buckets[key] = [0, amount]
            bucket[1] -= amount
            bucket[0] += spent
        if self._settled is not None:
            self._settled.set()
            self._settled = None

    def _level(self, window: tuple[str, ...]) -> Level:
        used = reserved = 0
        for key in window:
            bucket = self._buckets.get(key)
            if bucket is not None:
                used += bucket[0]
                reserved += bucket[1]
        return Level(used, reserved)

    async def levels(self, windows: Sequence[tuple[str, ...]]) -> list[Level]:
        return [self._level(window) for window in windows]

    async def adjust(self, key: str, delta: int, ttl_s: float) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [0, 0]
        bucket[0] += delta
        until = self._clock() + ttl_s
        if self._expires.get(key, 0.0) < until:
            self._expires[key] = until

    async def buckets(self, prefix: str) -> dict[str, Level]:
        return {k: Level(v[0], v[1]) for k, v in self._buckets.items() if k.startswith(prefix)}

    async def renew(self, request_ids: Sequence[str]) -> None:
        return None  # a process holds its own reservations for as long as it lives

    async def reap(self) -> list[Reaped]:
        now = self._clock()
        reaped: list[Reaped] = []
        for request_id, held in list(self._held.items()):
            if held.expires <= now:
                del self._held[request_id]
                self._release(held, held.amounts)
                reaped.append(Reaped(request_id, held.keys, held.amounts, held.meta))
        live = {key for held in self._held.values() for key in held.keys}
        for key, until in list(self._expires.items()):
            if until <= now and key not in live:
                del self._expires[key]
                self._buckets.pop(key, None)
                self.generation += 1
        return reaped

    async def wait_settled(self, timeout_s: float) -> None:
        if self._settled is None:
            self._settled = asyncio.Event()
        try:
            await asyncio.wait_for(self._settled.wait(), timeout_s)
        except TimeoutError:
            pass

    async def close(self) -> None:
        return None

    @property
    def holding(self) -> int:
        """Reservations held now."""
        return len(self._held)
