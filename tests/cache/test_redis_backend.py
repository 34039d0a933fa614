"""The Redis exact-cache backend against a real redis-server: encryption, sharing and outages.

Each test uses a fresh key prefix on the session's server; the outage tests stop, pause and
restart a server of their own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from sluicegate.cache.redis import RedisBackend
from tests.redis_server import RedisServer

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
PLAIN = b'{"answer": "the secret plan is in the drawer"}'
#: what a stored value adds to its entry: version, key id, nonce, tag
OVERHEAD = 1 + 4 + 12 + 16

MakeBackend = Callable[..., RedisBackend]


def entry_key() -> str:
    return uuid.uuid4().hex * 2


@pytest.fixture
async def make_backend(redis_server: RedisServer) -> AsyncIterator[MakeBackend]:
    """Make backends sharing one fresh prefix on the session's server (as gateway instances do)."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    made: list[RedisBackend] = []

    def make(key: bytes = KEY, url: str = redis_server.url, **kwargs: Any) -> RedisBackend:
        backend = RedisBackend(url, key, **{"prefix": prefix, "timeout_s": 2.0, **kwargs})
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client: what anyone with access to Redis reads."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.resume()
        server.stop()


async def read_raw(raw: redis.asyncio.Redis, name: str) -> bytes:
    value = await raw.get(name)
    assert isinstance(value, bytes)
    return value


async def test_round_trip_delete_and_stats(make_backend: MakeBackend) -> None:
    backend = make_backend()
    key = entry_key()
    assert await backend.get(key) is None
    await backend.set(key, PLAIN, ttl_s=60)
    assert await backend.get(key) == PLAIN
    await backend.set(key, b"", ttl_s=60)
    assert await backend.get(key) == b""
    await backend.delete(key)
    await backend.delete(key)
    assert await backend.get(key) is None
    assert backend.kind == "redis"
    assert backend.stats() == {
        "hits": 2,
        "misses": 2,
        "sets": 2,
        "errors": 0,
        "undecryptable": 0,
        "skipped": 0,
        "too_large": 0,
        "open": False,
    }


async def test_entries_expire_after_their_ttl(make_backend: MakeBackend, raw: redis.asyncio.Redis) -> None:
    backend = make_backend()
    short, long, instant = entry_key(), entry_key(), entry_key()
    await backend.set(short, PLAIN, ttl_s=0.1)
    await backend.set(long, PLAIN, ttl_s=60)
    await backend.set(instant, PLAIN, ttl_s=0)
    assert await backend.get(short) == PLAIN
    assert 59_000 < await raw.pttl(backend.prefix + long) <= 60_000
    await asyncio.sleep(0.3)
    assert await backend.get(short) is None
    assert await backend.get(instant) is None
    assert await backend.get(long) == PLAIN


async def test_redis_holds_only_ciphertext(make_backend: MakeBackend, raw: redis.asyncio.Redis) -> None:
    backend = make_backend()
    key = entry_key()
    plain = b"my card number is 4111 1111 1111 1111 " * 50
    await backend.set(key, plain, ttl_s=60)
    await backend.set(key + "x", plain, ttl_s=60)
    stored = await read_raw(raw, backend.prefix + key)
    assert len(stored) == len(plain) + OVERHEAD
    assert stored[0] == 1
    for fragment in (b"4111", b"card", plain[:16]):
        assert fragment not in stored
    # the same entry twice is two different values (a fresh nonce each)
    assert stored[5:] != (await read_raw(raw, backend.prefix + key + "x"))[5:]


async def test_a_value_moved_to_another_key_is_a_miss(make_backend: MakeBackend, raw: redis.asyncio.Redis) -> None:
    backend = make_backend()
    theirs, mine = entry_key(), entry_key()
    await backend.set(theirs, PLAIN, ttl_s=60)
    await raw.set(backend.prefix + mine, await read_raw(raw, backend.prefix + theirs))
    assert await backend.get(mine) is None
    assert backend.stats()["undecryptable"] == 1
    assert await backend.get(theirs) == PLAIN


def _flip(at: int) -> Callable[[bytes], bytes]:
    return lambda value: value[:at] + bytes([value[at] ^ 1]) + value[at + 1 :]


@pytest.mark.parametrize(
    "tamper",
    [
        _flip(0),
        _flip(2),
        _flip(5 + 3),
        _flip(17 + 3),
        _flip(-1),
        lambda value: value[:-1],
        lambda value: value[:20],
        lambda value: b"",
        lambda value: value + b"\x00",
    ],
    ids=["version", "key-id", "nonce", "ciphertext", "tag", "truncated", "shorter-than-overhead", "empty", "extended"],
)
async def test_a_tampered_value_is_a_miss(
    make_backend: MakeBackend, raw: redis.asyncio.Redis, tamper: Callable[[bytes], bytes]
) -> None:
    backend = make_backend()
    key = entry_key()
    await backend.set(key, PLAIN, ttl_s=60)
    await raw.set(backend.prefix + key, tamper(await read_raw(raw, backend.prefix + key)))
    assert await backend.get(key) is None
    assert backend.stats()["undecryptable"] == 1


async def test_instances_with_the_same_key_share_entries(make_backend: MakeBackend) -> None:
    first, second, stranger = make_backend(), make_backend(), make_backend(OTHER_KEY)
    key = entry_key()
    await first.set(key, PLAIN, ttl_s=60)
    assert await second.get(key) == PLAIN
    assert await stranger.get(key) is None
    assert stranger.stats()["undecryptable"] == 1


async def test_values_under_a_previous_key_still_read(make_backend: MakeBackend) -> None:
    old = make_backend(KEY)
    rotated = make_backend(OTHER_KEY, previous_keys=[KEY, OTHER_KEY])
    before, after = entry_key(), entry_key()
    await old.set(before, b"written before", ttl_s=60)
    await rotated.set(after, b"written after", ttl_s=60)
    assert await rotated.get(before) == b"written before"
    assert await rotated.get(after) == b"written after"
    # an instance not yet given the new key cannot read what the rotated ones write
    assert await old.get(after) is None
    assert await make_backend(OTHER_KEY).get(after) == b"written after"


async def test_any_secret_length_of_at_least_16_bytes(make_backend: MakeBackend) -> None:
    key = entry_key()
    await make_backend(b"s" * 16).set(key, PLAIN, ttl_s=60)
    assert await make_backend(b"s" * 16).get(key) == PLAIN
    long_secret = os.urandom(200)
    await make_backend(long_secret).set(key, PLAIN, ttl_s=60)
    assert await make_backend(long_secret).get(key) == PLAIN
    with pytest.raises(ValueError, match="at least 16 bytes") as raised:
        make_backend(b"short")
    assert "short" not in str(raised.value)


async def test_an_entry_too_large_is_not_stored(make_backend: MakeBackend) -> None:
    backend = make_backend(max_entry_bytes=1000)
    key = entry_key()
    await backend.set(key, b"x" * 1001, ttl_s=60)
    assert await backend.get(key) is None
    await backend.set(key, b"x" * 1000, ttl_s=60)
    assert await backend.get(key) == b"x" * 1000
    assert backend.stats()["too_large"] == 1


def _with_password(url: str) -> str:
    # the server has no password: the `default` user accepts any, so the URL may carry one
    return url.replace("redis://", "redis://default:hunter2@")


async def _gets(backend: RedisBackend, n: int) -> float:
    started = time.monotonic()
    for _ in range(n):
        assert await backend.get(entry_key()) is None
    return time.monotonic() - started


async def test_a_stopped_server_costs_nothing_then_is_used_again(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    backend = RedisBackend(_with_password(own_server.url), KEY, backoff_s=0.3)
    try:
        key = entry_key()
        await backend.set(key, PLAIN, ttl_s=60)
        assert await backend.get(key) == PLAIN
        own_server.stop()
        with caplog.at_level(logging.WARNING, logger="sluicegate.cache"):
            assert await _gets(backend, 10) < 0.5
            await backend.set(key, PLAIN, ttl_s=60)
            await backend.delete(key)
        stats = backend.stats()
        assert stats["errors"] == 1
        assert stats["skipped"] == 11
        assert stats["open"]
        warnings = [record.getMessage() for record in caplog.records]
        assert len(warnings) == 1
        assert "ConnectionError" in warnings[0]
        assert f"127.0.0.1:{own_server.port}" in warnings[0]
        assert "hunter2" not in caplog.text
        assert PLAIN.decode() not in caplog.text

        own_server.start()
        await asyncio.sleep(0.35)
        await backend.set(key, PLAIN, ttl_s=60)
        assert await backend.get(key) == PLAIN
        assert not backend.stats()["open"]
    finally:
        await backend.close()


async def test_a_server_that_does_not_answer_is_waited_for_once(own_server: RedisServer) -> None:
    backend = RedisBackend(own_server.url, KEY, timeout_s=0.05, backoff_s=0.3)
    try:
        key = entry_key()
        await backend.set(key, PLAIN, ttl_s=60)
        own_server.pause()
        # one call waits `timeout_s`; the circuit spares the others
        assert await _gets(backend, 10) < 0.5
        await backend.set(key, b"other", ttl_s=60)
        assert backend.stats()["errors"] == 1
        assert backend.stats()["skipped"] == 10
        await asyncio.sleep(0.35)
        # the backoff is over: one call probes (and waits), the others skip meanwhile
        probe = asyncio.create_task(backend.get(key))
        await asyncio.sleep(0)
        assert await backend.get(key) is None
        assert await probe is None
        assert backend.stats()["errors"] == 2
        own_server.resume()
        await asyncio.sleep(0.35)
        assert await backend.get(key) == PLAIN
    finally:
        await backend.close()
