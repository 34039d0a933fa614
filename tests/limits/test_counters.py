"""The counters contract, run against both backends: memory, and Redis (a real redis-server).

Redis tests use a fresh key prefix each, so they share one server without flushing it; the
Redis-only tests at the end cover what one process cannot show: leases across instances,
outages and the server's clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio

from sluicegate.limits.counters import Charge, Counters, CountersUnavailable, Level, MemoryCounters, Refused
from sluicegate.limits.redis import RedisCounters
from tests.redis_server import RedisServer

MakeRedis = Callable[..., RedisCounters]
#: not the default 0.5 s: a thousand concurrent calls on a busy test machine (with -n) are slow,
#: and these tests are about exactness; the outage tests set their own
TIMEOUT_S = 5.0


def fresh_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_redis(redis_server: RedisServer) -> AsyncIterator[MakeRedis]:
    """Make RedisCounters instances sharing one fresh key prefix (as gateway instances do)."""
    prefix = fresh_prefix()
    made: list[RedisCounters] = []

    def make(**kwargs: float) -> RedisCounters:
        counters = RedisCounters(redis_server.url, key_prefix=prefix, **{"timeout_s": TIMEOUT_S, **kwargs})
        made.append(counters)
        return counters

    yield make
    for counters in made:
        await counters.close()


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[Counters]:
    if request.param == "memory":
        yield MemoryCounters()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    counters = RedisCounters(server.url, key_prefix=fresh_prefix(), timeout_s=TIMEOUT_S)
    yield counters
    await counters.close()


def charge(key: str, limit: int, amount: int, window: tuple[str, ...] = (), ttl_s: float = 60) -> Charge:
    return Charge(key, window or (key,), limit, amount, ttl_s)


async def level(counters: Counters, *keys: str) -> Level:
    return (await counters.levels([keys]))[0]


async def test_all_or_nothing(counters: Counters) -> None:
    refused = await counters.reserve("r1", [charge("a", 10, 5), charge("b", 3, 5)], ttl_s=60)
    assert refused == Refused(1, Level(0, 0), may_wait=False)
    assert await counters.levels([("a",), ("b",)]) == [Level(0, 0), Level(0, 0)]
    # nothing held under r1: it may reserve again
    assert await counters.reserve("r1", [charge("a", 10, 5), charge("b", 5, 5)], ttl_s=60) == [
        Level(0, 5),
        Level(0, 5),
    ]


async def test_refusal_fields(counters: Counters) -> None:
    await counters.reserve("r1", [charge("a", 10, 6)], ttl_s=60)
    await counters.settle("r1", [4], [("a",)])
    assert await counters.reserve("r2", [charge("a", 10, 5)], ttl_s=60) == [Level(4, 5)]
    # 4 used + 5 held + 3 > 10, but 4 + 3 <= 10: r2's settlement may leave room
    assert await counters.reserve("r3", [charge("b", 10, 1), charge("a", 10, 3)], ttl_s=60) == Refused(
        1, Level(4, 5), may_wait=True
    )
    # 4 used + 7 > 10 whatever r2 does
    assert await counters.reserve("r4", [charge("a", 10, 7)], ttl_s=60) == Refused(0, Level(4, 5), may_wait=False)
    assert await level(counters, "b") == Level(0, 0)


async def test_settle_is_idempotent_and_returns_window_levels(counters: Counters) -> None:
    await counters.adjust("old", 2, ttl_s=60)
    await counters.reserve("r1", [charge("a", 100, 10), charge("new", 100, 7, window=("old", "new"))], ttl_s=60)
    await counters.reserve("r2", [charge("a", 100, 5)], ttl_s=60)
    windows = [("a",), ("old", "new")]
    assert await counters.settle("r1", [3, 4], windows) == [Level(3, 5), Level(6, 0)]
    assert await counters.settle("r1", [50, 50], windows) is None
    assert await counters.levels(windows) == [Level(3, 5), Level(6, 0)]
    assert await counters.settle("never-held", [1], [("a",)]) is None
    assert await counters.levels([]) == []


async def test_a_rolling_window_sums_its_buckets(counters: Counters) -> None:
    await counters.adjust("m1", 5, ttl_s=60)
    await counters.adjust("m2", 3, ttl_s=60)
    window = ("m1", "m2", "m3")
    assert await counters.reserve("r1", [charge("m3", 10, 2, window)], ttl_s=60) == [Level(8, 2)]
    assert await counters.reserve("r2", [charge("m3", 10, 1, window)], ttl_s=60) == Refused(0, Level(8, 2), True)
    # once m1 leaves the window, its use no longer counts
    assert await counters.reserve("r3", [charge("m3", 10, 5, ("m2", "m3"))], ttl_s=60) == [Level(3, 7)]
    assert await counters.levels([("m1",), ("m3",)]) == [Level(5, 0), Level(0, 7)]


async def test_reap_settles_at_the_estimate_after_the_ttl(counters: Counters) -> None:
    await counters.reserve("short", [charge("a", 100, 10), charge("b", 100, 4)], ttl_s=0.3, meta='{"who": "alice"}')
    await counters.reserve("long", [charge("a", 100, 1)], ttl_s=60)
    assert await counters.reap() == []
    await asyncio.sleep(0.4)
    [reaped] = await counters.reap()
    assert (reaped.request_id, reaped.keys, reaped.amounts, reaped.meta) == (
        "short",
        ("a", "b"),
        (10, 4),
        '{"who": "alice"}',
    )
    assert await counters.levels([("a",), ("b",)]) == [Level(10, 1), Level(4, 0)]
    assert await counters.settle("short", [1, 1], [("a",)]) is None
    assert await counters.reap() == []


async def test_reap_takes_every_expired_reservation(counters: Counters) -> None:
    # more than one Redis reap batch
    await asyncio.gather(*(counters.reserve(f"r{i}", [charge("a", 10**6, 2)], ttl_s=0.2) for i in range(1100)))
    await asyncio.sleep(0.3)
    reaped = await counters.reap()
    assert sorted(r.request_id for r in reaped) == sorted(f"r{i}" for i in range(1100))
    assert await level(counters, "a") == Level(2200, 0)


async def test_a_request_id_holds_one_reservation(counters: Counters) -> None:
    await counters.reserve("r1", [charge("a", 100, 10)], ttl_s=60)
    with pytest.raises(ValueError, match="r1"):
        await counters.reserve("r1", [charge("a", 100, 10)], ttl_s=60)
    assert await level(counters, "a") == Level(0, 10)


async def test_adjust_changes_settled_use(counters: Counters) -> None:
    await counters.adjust("a", 5, ttl_s=60)
    await counters.adjust("a", -2, ttl_s=60)
    assert await level(counters, "a") == Level(3, 0)


async def test_buckets_lists_live_buckets_by_prefix(counters: Counters) -> None:
    await counters.adjust("spend:a*[1]", 5, ttl_s=60)
    await counters.reserve("r1", [charge("spend:a*[1]", 100, 3), charge("spend:b", 100, 2)], ttl_s=60)
    await counters.adjust("spend:ab", 1, ttl_s=60)
    await counters.adjust("rate:a", 1, ttl_s=60)
    assert await counters.buckets("spend:a*[") == {"spend:a*[1]": Level(5, 3)}
    assert await counters.buckets("spend:") == {
        "spend:a*[1]": Level(5, 3),
        "spend:ab": Level(1, 0),
        "spend:b": Level(0, 2),
    }
    assert await counters.buckets("none:") == {}


async def test_amounts_stay_exact_past_two_to_the_53(counters: Counters) -> None:
    big = 2**62
    await counters.adjust("x", big - 1, ttl_s=60)
    await counters.adjust("y", big, ttl_s=60)
    window = ("x", "y", "z")
    limit = 2 * big + 2
    assert await counters.reserve("r1", [charge("z", limit, 2, window)], ttl_s=60) == [Level(2 * big - 1, 2)]
    assert await counters.reserve("r2", [charge("z", limit, 2, window)], ttl_s=60) == Refused(
        0, Level(2 * big - 1, 2), may_wait=True
    )
    assert await counters.reserve("r3", [charge("z", limit, 1, window)], ttl_s=60) == [Level(2 * big - 1, 3)]
    assert await counters.settle("r1", [0], [window]) == [Level(2 * big - 1, 1)]
    await counters.adjust("x", -big - 7, ttl_s=60)
    assert await level(counters, "x") == Level(-8, 0)


async def test_wait_settled_returns_on_a_settle_or_after_its_timeout(
    counters: Counters, request: pytest.FixtureRequest
) -> None:
    await counters.wait_settled(0.05)
    await counters.reserve("r1", [charge("a", 100, 10)], ttl_s=60)
    # on Redis, the settle comes from another instance
    other = counters
    if isinstance(counters, RedisCounters):
        url = request.getfixturevalue("redis_server").url
        other = RedisCounters(url, key_prefix=counters.key_prefix, timeout_s=TIMEOUT_S)
    try:
        waiter = asyncio.create_task(counters.wait_settled(30))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await other.settle("r1", [1], [])
        await asyncio.wait_for(waiter, 5)
    finally:
        await other.close()


async def test_concurrent_reservations_hold_exactly_the_limit(counters: Counters) -> None:
    results = await asyncio.gather(*(counters.reserve(f"r{i}", [charge("a", 100, 1)], ttl_s=60) for i in range(500)))
    held = [f"r{i}" for i, result in enumerate(results) if not isinstance(result, Refused)]
    assert len(held) == 100
    assert await level(counters, "a") == Level(0, 100)
    await asyncio.gather(*(counters.settle(request_id, [1], []) for request_id in held))
    assert await level(counters, "a") == Level(100, 0)


# Redis only: what instances sharing one server see.


async def test_two_instances_hold_exactly_the_limit_together(make_redis: MakeRedis) -> None:
    first, second = make_redis(), make_redis()

    async def one(i: int) -> tuple[RedisCounters, str] | None:
        counters = first if i % 2 else second
        result = await counters.reserve(f"r{i}", [charge("a", 100, 1)], ttl_s=60)
        return None if isinstance(result, Refused) else (counters, f"r{i}")

    held = [h for h in await asyncio.gather(*(one(i) for i in range(500))) if h is not None]
    assert len(held) == 100
    assert await level(first, "a") == Level(0, 100)
    await asyncio.gather(*(counters.settle(request_id, [1], []) for counters, request_id in held))
    assert await level(second, "a") == Level(100, 0)


async def test_an_instance_that_stops_renewing_loses_its_reservations(make_redis: MakeRedis) -> None:
    crashed, alive, reaper = make_redis(lease_s=1), make_redis(lease_s=1), make_redis()
    await crashed.reserve("lost", [charge("a", 100, 10)], ttl_s=60, meta="lost-meta")
    await alive.reserve("kept", [charge("a", 100, 5)], ttl_s=60)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        await alive.renew(["kept", "unknown"])
        assert [r.request_id for r in await reaper.reap()] in ([], ["lost"])
        await asyncio.sleep(0.2)
    assert await level(reaper, "a") == Level(10, 5)
    assert await alive.settle("kept", [2], [("a",)]) == [Level(12, 0)]
    assert await crashed.settle("lost", [1], [("a",)]) is None


async def test_the_reaper_reports_what_it_settled(make_redis: MakeRedis) -> None:
    crashed, reaper = make_redis(lease_s=0.2), make_redis()
    await crashed.reserve("lost", [charge("a", 100, 10), charge("b", 100, 3)], ttl_s=60, meta="who=alice")
    await asyncio.sleep(0.3)
    [reaped] = await reaper.reap()
    assert (reaped.request_id, reaped.keys, reaped.amounts, reaped.meta) == ("lost", ("a", "b"), (10, 3), "who=alice")


async def test_keys_share_one_hash_tag_and_expire(make_redis: MakeRedis, redis_server: RedisServer) -> None:
    counters = make_redis()
    await counters.reserve("r1", [charge("a", 100, 10, ttl_s=30)], ttl_s=60)
    await counters.settle("r1", [3], [])
    await counters.reserve("r2", [charge("a", 100, 10, ttl_s=30)], ttl_s=60)
    prefix = "{" + counters.key_prefix + "}"
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        keys = sorted(await client.keys(prefix + "*"))
        assert keys == [f"{prefix}:{name}" for name in ("b:a", "leases", "r:r2", "seeded", "settles")]
        assert 0 < await client.pttl(f"{prefix}:b:a") <= 30_000
    finally:
        await client.aclose()


async def test_an_emptied_store_is_loaded_once_before_anything_is_held(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    """Two instances find the store empty at once: one claims the load, the other waits for its
    mark, and no reservation is made in an unloaded store; a bucket that exists is kept."""
    loads: list[str] = []

    def loader(name: str, spent: int) -> Callable[[RedisCounters], Awaitable[None]]:
        async def load(counters: RedisCounters) -> None:
            if not await counters.claim_seeding(10):
                for _ in range(500):
                    if await counters.is_seeded():
                        return
                    await asyncio.sleep(0.01)
                raise AssertionError("the other instance never loaded the store")
            loads.append(name)
            await asyncio.sleep(0.1)  # reading the ledger takes a while
            await counters.seed([("a", spent, 60), ("kept", 5, 60)])

        return load

    first, second = make_redis(), make_redis()
    first.on_empty, second.on_empty = loader("first", 95), loader("second", 95)
    results = await asyncio.gather(
        *(c.reserve(f"r{i}", [charge("a", 100, 1)], ttl_s=60) for i, c in enumerate([first, second] * 5))
    )
    assert len(loads) == 1
    assert sum(not isinstance(r, Refused) for r in results) == 5  # 95 loaded: room for 5
    # Emptied (a restart without persistence): loaded again; a bucket made meanwhile is not overwritten.
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await client.flushdb()
        await first.adjust("kept", 7, 60)
        await first.reap()  # housekeeping finds the store empty and loads it
        assert len(loads) == 2
        assert await level(second, "a") == Level(95, 0)
        assert await level(second, "kept") == Level(7, 0)
        # A claim given up (its load failed) is free for another instance at once.
        assert await first.claim_seeding(10)
        assert not await second.claim_seeding(10)
        await first.drop_claim()
        assert await second.claim_seeding(10)
    finally:
        await client.aclose()


async def test_clock_is_the_servers(make_redis: MakeRedis) -> None:
    counters = make_redis()
    await counters.reap()
    # the server runs on this machine: its clock is ours, give or take the round trip
    assert abs(counters.clock() - time.time()) < 1


async def test_an_outage_raises_counters_unavailable_then_recovers(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    counters = make_redis(timeout_s=0.3)
    assert await counters.reserve("r1", [charge("a", 100, 10)], ttl_s=60) == [Level(0, 10)]
    redis_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(CountersUnavailable) as raised:
            await counters.reserve("r2", [charge("a", 100, 10)], ttl_s=60)
        assert time.monotonic() - started < 5
        assert redis_server.url not in str(raised.value)
        with pytest.raises(CountersUnavailable):
            await counters.reap()
    finally:
        redis_server.start()
    # the server kept nothing (no persistence): the counters start over
    assert await counters.reserve("r2", [charge("a", 100, 10)], ttl_s=60) == [Level(0, 10)]


async def test_a_server_that_does_not_answer_times_out(make_redis: MakeRedis, redis_server: RedisServer) -> None:
    counters = make_redis(timeout_s=0.3)
    await counters.adjust("a", 1, ttl_s=60)
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(CountersUnavailable, match="Timeout"):
            await counters.levels([("a",)])
        assert time.monotonic() - started < 5
    finally:
        redis_server.resume()
    assert await level(counters, "a") == Level(1, 0)
