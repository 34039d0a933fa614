"""Counters shared by every gateway instance in one Redis server (`limits.backend: redis`).

Each counter operation is one Lua script, atomic on the server (Redis >= 5: scripts replicate
their effects, so they may write after reading `TIME`). Every key carries the hash tag
`{<key_prefix>}`: a script touches one slot, as a cluster would require. The contract is
`sluicegate.limits.counters.Counters`; `MemoryCounters` is the reference this file follows.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from sluicegate.limits.counters import Charge, CountersUnavailable, Level, Reaped, Refused

#: connections per instance. A call waits its turn for one without a deadline of its own: waiting
#: is local load, not Redis being down, and every call on a connection is bounded by `timeout_s`,
#: so the queue drains (at once when Redis refuses connections, or this many per `timeout_s` when
#: it stops answering).
MAX_CONNECTIONS = 128
#: reservations `reap` settles per script run, buckets `buckets` reads per round trip: one step never
#: blocks Redis for long
BATCH = 500

_T = TypeVar("_T")
#: what Redis's glob (SCAN MATCH) treats as special
_GLOB_SPECIAL = re.compile(r"[*?\[\]\\]")

# Lua numbers are doubles: exact only below 2**53. Counter values are int64 strings in Redis
# (HINCRBY, fed strings), and the scripts add and compare them as two exact limbs,
# value = hi * 10**8 + lo, so sums and limits stay exact across the whole int64 range.
_LIB = """
local B = 100000000
local function parse(s)
  if not s then return 0, 0 end
  local neg = string.sub(s, 1, 1) == '-'
  if neg then s = string.sub(s, 2) end
  local n = #s
  local lo = tonumber(string.sub(s, math.max(1, n - 7)))
  local hi = 0
  if n > 8 then hi = tonumber(string.sub(s, 1, n - 8)) end
  if neg then return -hi, -lo end
  return hi, lo
end
local function norm(hi, lo)
  local carry = math.floor(lo / B)
  return hi + carry, lo - carry * B
end
local function positive(hi, lo)
  hi, lo = norm(hi, lo)
  return hi > 0 or (hi == 0 and lo > 0)
end
local function fmt(hi, lo)
  hi, lo = norm(hi, lo)
  local sign = ''
  if hi < 0 then
    sign = '-'
    hi, lo = norm(-hi, -lo)
  end
  if hi == 0 then return sign .. string.format('%d', lo) end
  return sign .. string.format('%d%08d', hi, lo)
end
local function negate(s)
  if s == '0' then return s end
  if string.sub(s, 1, 1) == '-' then return string.sub(s, 2) end
  return '-' .. s
end
local function level(keys, first, last)
  local uh, ul, rh, rl = 0, 0, 0, 0
  for i = first, last do
    local v = redis.call('HMGET', keys[i], 'u', 'r')
    local h, l = parse(v[1])
    uh, ul = uh + h, ul + l
    h, l = parse(v[2])
    rh, rl = rh + h, rl + l
  end
  return uh, ul, rh, rl
end
local function levels(keys, first, sizes, at)
  local out = {}
  local k = first
  for w = 1, tonumber(sizes[at]) do
    local n = tonumber(sizes[at + w])
    local uh, ul, rh, rl = level(keys, k, k + n - 1)
    out[#out + 1] = fmt(uh, ul)
    out[#out + 1] = fmt(rh, rl)
    k = k + n
  end
  return out
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function extend(key, ttl_ms)
  if redis.call('PTTL', key) < ttl_ms then redis.call('PEXPIRE', key, ttl_ms) end
end
-- a reservation's record: n, k1..kn (charge keys), a1..an (amounts), d (deadline ms), m (meta)
local function held(record)
  local n = redis.call('HGET', record, 'n')
  if not n then return nil end
  n = tonumber(n)
  local fields = {'m'}
  for i = 1, n do fields[#fields + 1] = 'k' .. i end
  for i = 1, n do fields[#fields + 1] = 'a' .. i end
  local v = redis.call('HMGET', record, unpack(fields))
  local keys, amounts = {}, {}
  for i = 1, n do
    keys[i] = v[1 + i]
    amounts[i] = v[1 + n + i]
  end
  return n, keys, amounts, v[1]
end
-- a bucket that expired while held (its window ended) is recreated for the record, briefly
local function release(prefix, keys, amounts, spent, life_ms)
  for i = 1, #keys do
    local bucket = prefix .. keys[i]
    if redis.call('EXISTS', bucket) == 1 then
      redis.call('HINCRBY', bucket, 'r', negate(amounts[i]))
      redis.call('HINCRBY', bucket, 'u', spent[i])
    else
      redis.call('HINCRBY', bucket, 'u', spent[i])
      redis.call('HSET', bucket, 'r', '0')
      redis.call('PEXPIRE', bucket, life_ms)
    end
  end
end
"""

# KEYS: record, leases, the seeded mark, then per charge its bucket and its window's buckets.
# ARGV: request id, ttl ms, lease ms, meta, n, then per charge: limit, amount, ttl ms, window size, key.
# Reply: {0} the request id holds a reservation; {1, index, used, reserved, may_wait}; {2, used, reserved, ...};
# {3} the counters were never loaded from the ledger (a new or emptied Redis): nothing is held.
_RESERVE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return {3} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local n = tonumber(ARGV[5])
local out = {2}
local k, a = 4, 6
local buckets = {}
for i = 1, n do
  local lh, ll = parse(ARGV[a])
  local mh, ml = parse(ARGV[a + 1])
  local size = tonumber(ARGV[a + 3])
  local uh, ul, rh, rl = level(KEYS, k + 1, k + size)
  if positive(uh + rh + mh - lh, ul + rl + ml - ll) then
    local may_wait = 0
    if not positive(uh + mh - lh, ul + ml - ll) then may_wait = 1 end
    return {1, i - 1, fmt(uh, ul), fmt(rh, rl), may_wait}
  end
  out[#out + 1] = fmt(uh, ul)
  out[#out + 1] = fmt(rh + mh, rl + ml)
  buckets[i] = {KEYS[k], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 4]}
  k, a = k + 1 + size, a + 5
end
local now = now_ms()
local deadline = now + tonumber(ARGV[2])
local record = {'n', n, 'd', deadline, 'm', ARGV[4]}
for i, b in ipairs(buckets) do
  redis.call('HINCRBY', b[1], 'r', b[2])
  extend(b[1], b[3])
  record[#record + 1] = 'k' .. i
  record[#record + 1] = b[4]
  record[#record + 1] = 'a' .. i
  record[#record + 1] = b[2]
end
redis.call('HSET', KEYS[1], unpack(record))
redis.call('ZADD', KEYS[2], math.min(now + tonumber(ARGV[3]), deadline), ARGV[1])
return out
"""

# KEYS: record, leases, settle count, then the windows' buckets.
# ARGV: request id, bucket prefix, life ms, n, actual x n, window count, window sizes.
# Reply: {0} nothing held; {1} wrong number of values; {2, used, reserved, ...} per window.
_SETTLE = """
local n, keys, amounts = held(KEYS[1])
if not n then return {0} end
local given = tonumber(ARGV[4])
if given ~= n then return {1} end
local spent = {}
for i = 1, n do spent[i] = ARGV[4 + i] end
release(ARGV[2], keys, amounts, spent, tonumber(ARGV[3]))
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
local out = levels(KEYS, 4, ARGV, 5 + n)
table.insert(out, 1, 2)
return out
"""

# KEYS: leases, then each request's record. ARGV: lease ms, then the request ids.
_RENEW = """
local renewed = now_ms() + tonumber(ARGV[1])
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    local deadline = tonumber(redis.call('HGET', KEYS[i], 'd') or renewed)
    redis.call('ZADD', KEYS[1], 'XX', math.min(renewed, deadline), ARGV[i])
  end
end
return 0
"""

# KEYS: leases, settle count. ARGV: record prefix, bucket prefix, life ms, batch.
# Reply: {requests looked at, {request id, meta, key1, amount1, ...}, ...}.
_REAP = """
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {#ids}
for _, id in ipairs(ids) do
  local record = ARGV[1] .. id
  local n, keys, amounts, meta = held(record)
  redis.call('ZREM', KEYS[1], id)
  if n then
    release(ARGV[2], keys, amounts, amounts, tonumber(ARGV[3]))
    redis.call('DEL', record)
    local entry = {id, meta}
    for i = 1, n do
      entry[#entry + 1] = keys[i]
      entry[#entry + 1] = amounts[i]
    end
    out[#out + 1] = entry
  end
end
if #out > 1 then redis.call('INCR', KEYS[2]) end
return out
"""

# KEYS: the windows' buckets. ARGV: window count, window sizes. Reply: used, reserved per window.
_LEVELS = "return levels(KEYS, 1, ARGV, 1)"

# KEYS: the seeded mark, the rebuild claim, then buckets. ARGV: per bucket its settled use and ttl ms.
# Buckets that exist are left as they are; the mark is set. Reply: the buckets loaded.
_SEED = """
local loaded = 0
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local j = (i - 3) * 2 + 1
    redis.call('HSET', KEYS[i], 'u', ARGV[j], 'r', '0')
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[j + 1]))
    loaded = loaded + 1
  end
end
redis.call('SET', KEYS[1], now_ms())
redis.call('DEL', KEYS[2])
return loaded
"""

# KEYS: bucket. ARGV: delta, ttl ms.
_ADJUST = """
redis.call('HINCRBY', KEYS[1], 'u', ARGV[1])
extend(KEYS[1], tonumber(ARGV[2]))
return 0
"""


def _ms(seconds: float) -> int:
    # PEXPIRE with 0 would delete the key at once
    return max(1, math.ceil(seconds * 1000))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _levels(values: Sequence[bytes]) -> list[Level]:
    return [Level(int(values[i]), int(values[i + 1])) for i in range(0, len(values), 2)]


class RedisCounters:
    """Counters in one Redis server, exact across every instance that shares it.

    Reservations and TTLs run on the server's clock (`TIME`), so instances with skewed clocks
    agree; `clock()` gives that clock to the gateway for its window boundaries. Every Redis
    failure, including an answer slower than `timeout_s`, raises `CountersUnavailable`, whose
    message never holds the URL (it may hold a password); the next call reconnects.

    Counter values are exact across the int64 range (the scripts add them as two limbs, see
    `_LIB`); a bucket itself cannot pass 2**63 - 1 (HINCRBY refuses, as `CountersUnavailable`).

    A Redis that holds no `seeded` mark (new, restarted without its data, flushed) has lost what
    was spent: no reservation is made in it until its budget counters are loaded from the ledger.
    `on_empty` does that (the limits service: one instance claims the rebuild, the others wait for
    its mark); without it, the mark is set on an empty store.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "sluicegate",
        timeout_s: float = 0.5,
        lease_s: float = 15.0,
        on_empty: Callable[[RedisCounters], Awaitable[None]] | None = None,
    ) -> None:
        self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=None,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # no retries: a timed-out script may have run, and a second run would not be the same
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = Redis(connection_pool=self._pool)
        self.key_prefix = key_prefix
        tag = "{" + key_prefix + "}"
        self._buckets = f"{tag}:b:"
        self._records = f"{tag}:r:"
        self._leases = f"{tag}:leases"
        #: incremented by every settle and reap, polled by `wait_settled`
        self._settles = f"{tag}:settles"
        #: set once the counters hold the ledger's spend; the claim of the instance loading it
        self._seeded = f"{tag}:seeded"
        self._seeding = f"{tag}:seeding"
        self.on_empty = on_empty
        self._rebuilding: asyncio.Future[None] | None = None
        self._lease_ms = _ms(lease_s)
        #: server clock - local clock, in seconds; None until measured
        self._offset: float | None = None
        lib = self._redis.register_script
        self._reserve = lib(_LIB + _RESERVE)
        self._settle = lib(_LIB + _SETTLE)
        self._renew = lib(_LIB + _RENEW)
        self._reap = lib(_LIB + _REAP)
        self._levels = lib(_LIB + _LEVELS)
        self._adjust = lib(_LIB + _ADJUST)
        self._seed = lib(_LIB + _SEED)

    def clock(self) -> float:
        """The Redis server's time in epoch seconds (the local clock until first measured)."""
        return time.time() + (self._offset or 0.0)

    async def sync_clock(self) -> None:
        """Measure the server clock's offset now (done on first use and by every `reap`)."""
        await self._call(self._measure_clock)

    async def _measure_clock(self) -> None:
        before = time.time()
        seconds, micros = await self._redis.time()
        after = time.time()
        self._offset = seconds + micros / 1e6 - (before + after) / 2

    async def _call(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run a Redis operation, measuring the clock first on first use; Redis failures are
        raised as `CountersUnavailable`."""
        try:
            if self._offset is None and operation != self._measure_clock:
                await self._measure_clock()
            return await operation()
        except ResponseError as exc:
            raise CountersUnavailable(f"Redis refused a counter operation: {exc}") from None
        except (RedisError, OSError) as exc:
            raise CountersUnavailable(f"Redis counters unavailable ({type(exc).__name__})") from None

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        return await self._call(lambda: script(keys=keys, args=args))

    def _window_keys(self, windows: Sequence[tuple[str, ...]]) -> tuple[list[str], list[str | int]]:
        keys = [self._buckets + key for window in windows for key in window]
        sizes: list[str | int] = [len(windows), *(len(window) for window in windows)]
        return keys, sizes

    async def reserve(
        self, request_id: str, charges: Sequence[Charge], ttl_s: float, meta: str = ""
    ) -> list[Level] | Refused:
        keys = [self._records + request_id, self._leases, self._seeded]
        args: list[str | int] = [request_id, _ms(ttl_s), self._lease_ms, meta, len(charges)]
        for charge in charges:
            keys.append(self._buckets + charge.key)
            keys.extend(self._buckets + key for key in charge.window)
            args += [str(charge.limit), str(charge.amount), _ms(charge.ttl_s), len(charge.window), charge.key]
        reply = await self._run(self._reserve, keys, args)
        if reply[0] == 3:
            await self.rebuild()
            reply = await self._run(self._reserve, keys, args)
            if reply[0] == 3:
                raise CountersUnavailable("the counters in Redis are being loaded from the ledger")
        if reply[0] == 0:
            raise ValueError(f"request {request_id} already holds a reservation")
        if reply[0] == 1:
            return Refused(int(reply[1]), Level(int(reply[2]), int(reply[3])), bool(reply[4]))
        return _levels(reply[1:])

    async def settle(
        self, request_id: str, actual: Sequence[int], windows: Sequence[tuple[str, ...]]
    ) -> list[Level] | None:
        window_keys, sizes = self._window_keys(windows)
        keys = [self._records + request_id, self._leases, self._settles, *window_keys]
        args: list[str | int] = [
            request_id,
            self._buckets,
            self._lease_ms,
            len(actual),
            *(str(int(a)) for a in actual),
            *sizes,
        ]
        reply = await self._run(self._settle, keys, args)
        if reply[0] == 0:
            return None
        if reply[0] == 1:
            raise ValueError(f"request {request_id} holds a different number of charges than {len(actual)}")
        return _levels(reply[1:])

    async def levels(self, windows: Sequence[tuple[str, ...]]) -> list[Level]:
        if not windows:
            return []
        keys, sizes = self._window_keys(windows)
        return _levels(await self._run(self._levels, keys, sizes))

    async def adjust(self, key: str, delta: int, ttl_s: float) -> None:
        await self._run(self._adjust, [self._buckets + key], [str(delta), _ms(ttl_s)])

    # -- a Redis that lost its counters ----------------------------------------------------------

    async def is_seeded(self) -> bool:
        """Whether the counters were loaded from the ledger since this Redis last started empty."""
        return bool(await self._call(lambda: self._redis.exists(self._seeded)))

    async def claim_seeding(self, hold_s: float) -> bool:
        """Claim the loading of the counters for `hold_s` (one instance loads; False: another does)."""
        claimed = await self._call(lambda: self._redis.set(self._seeding, "1", nx=True, px=_ms(hold_s)))
        return bool(claimed)

    async def drop_claim(self) -> None:
        """Give the claim up (the load failed), so another instance may take it at once."""
        await self._call(lambda: self._redis.delete(self._seeding))

    async def seed(self, buckets: Sequence[tuple[str, int, float]]) -> int:
        """Load `(key, settled use, ttl_s)` into the buckets that do not exist, mark the store as
        seeded and drop the claim, in one step; the buckets loaded."""
        keys = [self._seeded, self._seeding, *(self._buckets + key for key, _, _ in buckets)]
        args: list[str | int] = [value for _, used, ttl_s in buckets for value in (str(used), _ms(ttl_s))]
        return int(await self._run(self._seed, keys, args))

    async def rebuild(self) -> None:
        """Have the counters loaded (once per instance at a time: concurrent callers share it)."""
        if self._rebuilding is None:
            load = self.on_empty(self) if self.on_empty is not None else self._seed_empty()
            self._rebuilding = asyncio.ensure_future(load)
            self._rebuilding.add_done_callback(self._rebuilt)
        await asyncio.shield(self._rebuilding)

    async def _seed_empty(self) -> None:
        await self.seed([])

    def _rebuilt(self, future: asyncio.Future[None]) -> None:
        self._rebuilding = None
        if not future.cancelled():
            future.exception()  # retrieved here; each waiter got it too

    async def buckets(self, prefix: str) -> dict[str, Level]:
        """Every live bucket whose key starts with `prefix`, and its level.

        A SCAN, then one read per bucket: each level is exact, but the set is not one snapshot
        (a bucket may expire or appear meanwhile; one that expired is left out)."""
        pattern = self._buckets + _GLOB_SPECIAL.sub(r"\\\g<0>", prefix) + "*"

        async def scan() -> list[bytes]:
            return [key async for key in self._redis.scan_iter(match=pattern, count=1000)]

        keys = sorted(set(await self._call(scan)))
        found: dict[str, Level] = {}
        for start in range(0, len(keys), BATCH):
            batch = keys[start : start + BATCH]
            pipe = self._redis.pipeline(transaction=False)
            for key in batch:
                pipe.hmget(key, "u", "r")
            for key, (used, reserved) in zip(batch, await self._call(pipe.execute), strict=True):
                if used is not None or reserved is not None:
                    found[_text(key)[len(self._buckets) :]] = Level(int(used or 0), int(reserved or 0))
        return found

    async def renew(self, request_ids: Sequence[str]) -> None:
        if request_ids:
            keys = [self._leases, *(self._records + request_id for request_id in request_ids)]
            await self._run(self._renew, keys, [self._lease_ms, *request_ids])

    async def reap(self) -> list[Reaped]:
        """Settle the reservations whose lease or TTL ran out (on any instance); refresh `clock()`.

        Buckets need no reaping: Redis expires them itself. A Redis found empty is rebuilt first."""
        await self._call(self._measure_clock)
        if not await self.is_seeded():
            await self.rebuild()
        reaped: list[Reaped] = []
        while True:
            keys = [self._leases, self._settles]
            args: list[str | int] = [self._records, self._buckets, self._lease_ms, BATCH]
            reply = await self._run(self._reap, keys, args)
            for entry in reply[1:]:
                request_id, meta, *pairs = (_text(value) for value in entry)
                charge_keys = tuple(pairs[0::2])
                amounts = tuple(int(amount) for amount in pairs[1::2])
                reaped.append(Reaped(request_id, charge_keys, amounts, meta))
            if reply[0] < BATCH:
                return reaped

    async def wait_settled(self, timeout_s: float) -> None:
        """Return once any instance settled or reaped a reservation, or after `timeout_s`.

        Polling, not pub/sub: every settle increments one counter, and this polls it every 5 ms,
        doubling to 50 ms. A waiter costs one GET per poll and needs no connection of its own
        (pub/sub would hold a subscriber connection per instance and fan every settle out to all
        of them); it learns of a settle at most 50 ms late."""
        deadline = time.monotonic() + timeout_s
        start = await self._call(lambda: self._redis.get(self._settles))
        step = 0.005
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(step, left))
            if await self._call(lambda: self._redis.get(self._settles)) != start:
                return
            step = min(step * 2, 0.05)

    async def close(self) -> None:
        await self._pool.disconnect()
