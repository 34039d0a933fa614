"""The in-process vector index: nearest first, partitions apart, expiry, LRU bound, and search
kept exact while rows move (checked against brute force over random operations)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sluicegate.cache.base import Neighbour
from sluicegate.cache.vectors import MemoryIndex

DIM = 16


class Clock:
    """A clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def keys(found: list[Neighbour]) -> list[str]:
    return [n.key for n in found]


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_nearest_come_first_with_their_cosine_and_signature(clock: Clock) -> None:
    index = MemoryIndex(DIM, clock=clock)
    rng = np.random.default_rng(1)
    query = unit(rng)
    far = unit(rng)
    near = query + 0.1 * far
    nearer = query + 0.01 * far
    for key, v in [("far", far), ("near", near), ("nearer", nearer), ("same", query)]:
        await index.add("p", key, (v / np.linalg.norm(v)).astype(np.float32), f"sig-{key}", ttl_s=60)
    found = await index.search("p", query, k=3)
    assert keys(found) == ["same", "nearer", "near"]
    assert found[0].score == pytest.approx(1.0, abs=1e-5) and found[0].signature == "sig-same"
    assert found[0].score >= found[1].score >= found[2].score
    assert keys(await index.search("p", query, k=10)) == ["same", "nearer", "near", "far"]
    assert await index.search("p", query, k=0) == []


async def test_a_search_never_crosses_partitions(clock: Clock) -> None:
    index = MemoryIndex(DIM, clock=clock)
    rng = np.random.default_rng(2)
    v = unit(rng)
    await index.add("alice", "k1", v, "s", ttl_s=60)
    await index.add("bob", "k2", unit(rng), "s", ttl_s=60)
    assert keys(await index.search("bob", v, k=4)) == ["k2"]
    assert keys(await index.search("alice", v, k=4)) == ["k1"]
    assert await index.search("carol", v) == []
    # The same key in two partitions is two vectors.
    await index.add("bob", "k1", v, "s", ttl_s=60)
    assert len(index) == 3 and keys(await index.search("bob", v, k=1)) == ["k1"]


async def test_expired_vectors_are_not_found_and_are_dropped(clock: Clock) -> None:
    index = MemoryIndex(DIM, clock=clock)
    rng = np.random.default_rng(3)
    v = unit(rng)
    await index.add("p", "short", v, "s", ttl_s=10)
    await index.add("p", "long", unit(rng), "s", ttl_s=100)
    assert keys(await index.search("p", v)) == ["short", "long"]
    clock.now += 10
    assert keys(await index.search("p", v)) == ["long"]
    assert len(index) == 1
    clock.now += 90
    assert await index.search("p", v) == []
    assert index.stats() == {"vectors": 0, "partitions": 0, "bytes": 0}


async def test_more_expired_than_one_purge_drops_are_still_never_returned(clock: Clock) -> None:
    index = MemoryIndex(DIM, clock=clock)
    rng = np.random.default_rng(4)
    v = unit(rng)
    for i in range(1000):
        await index.add("p", f"k{i}", v, "s", ttl_s=10)
    await index.add("p", "kept", unit(rng), "s", ttl_s=100)
    clock.now += 20
    assert keys(await index.search("p", v)) == ["kept"]
    while len(index) > 1:
        await index.search("p", v)
    assert keys(await index.search("p", v)) == ["kept"]


async def test_the_least_recently_added_or_returned_is_evicted_at_max_vectors(clock: Clock) -> None:
    index = MemoryIndex(DIM, max_vectors=3, clock=clock)
    rng = np.random.default_rng(5)
    vs = {name: unit(rng) for name in "abcd"}
    for name in "abc":
        await index.add("p", name, vs[name], "s", ttl_s=60)
    assert keys(await index.search("p", vs["a"], k=1)) == ["a"]  # a is now the most recent
    await index.add("q", "d", vs["d"], "s", ttl_s=60)  # evicts b, across partitions
    assert len(index) == 3
    assert sorted(keys(await index.search("p", vs["a"], k=10))) == ["a", "c"]
    # That search touched c then a (the best last): d is now the least recent.
    await index.add("p", "e", vs["d"], "s", ttl_s=60)
    assert await index.search("q", vs["d"]) == []
    await index.add("p", "a", vs["a"], "s2", ttl_s=60)  # replacing is using: c is the least recent
    await index.add("p", "f", vs["b"], "s", ttl_s=60)
    assert sorted(keys(await index.search("p", vs["a"], k=10))) == ["a", "e", "f"]
    assert index.stats()["vectors"] == 3


async def test_adding_under_an_existing_key_replaces_its_vector_and_signature(clock: Clock) -> None:
    index = MemoryIndex(DIM, clock=clock)
    rng = np.random.default_rng(6)
    old, new = unit(rng), unit(rng)
    await index.add("p", "k", old, "old", ttl_s=10)
    await index.add("p", "k", new, "new", ttl_s=100)
    assert len(index) == 1
    found = await index.search("p", new)
    assert keys(found) == ["k"] and found[0].signature == "new"
    assert found[0].score == pytest.approx(1.0, abs=1e-5)
    clock.now += 50  # the first TTL is gone, the second holds
    assert keys(await index.search("p", new)) == ["k"]


async def test_a_vector_of_the_wrong_shape_is_refused(clock: Clock) -> None:
    index = MemoryIndex(DIM, clock=clock)
    with pytest.raises(ValueError, match="shape"):
        await index.add("p", "k", np.zeros(DIM + 1, dtype=np.float32), "s", ttl_s=1)
    with pytest.raises(ValueError, match="shape"):
        await index.search("p", np.zeros((1, DIM), dtype=np.float32))


async def test_random_operations_match_brute_force(clock: Clock) -> None:
    """Adds, replacements, deletions, expiry and eviction move rows around; every search must
    still equal an exact search over what should be there."""
    rnd = random.Random(7)
    rng = np.random.default_rng(7)
    index = MemoryIndex(DIM, max_vectors=60, clock=clock)
    # (partition, key) -> (vector, signature, expires_at), in least recently used order
    model: dict[tuple[str, str], tuple[np.ndarray, str, float]] = {}
    partitions = ["p0", "p1", "p2"]

    def touch(pk: tuple[str, str]) -> None:
        model[pk] = model.pop(pk)

    for step in range(800):
        op = rnd.random()
        part = rnd.choice(partitions)
        if op < 0.5:
            pk = (part, f"k{rnd.randrange(80)}")
            v, sig, ttl = unit(rng), f"s{step}", rnd.uniform(1, 50)
            await index.add(pk[0], pk[1], v, sig, ttl_s=ttl)
            for old in [old for old, (_, _, exp) in model.items() if exp <= clock.now]:
                del model[old]
            if pk not in model and len(model) >= 60:
                del model[next(iter(model))]
            model.pop(pk, None)
            model[pk] = (v, sig, clock.now + ttl)
        elif op < 0.6:
            pk = (part, f"k{rnd.randrange(80)}")
            await index.delete(*pk)
            model.pop(pk, None)
        elif op < 0.7:
            clock.now += rnd.uniform(0, 5)
        else:
            query, k = unit(rng), rnd.randint(1, 6)
            alive = [(pk, v, sig) for pk, (v, sig, exp) in model.items() if pk[0] == part and exp > clock.now]
            expected = sorted(alive, key=lambda item: -float(item[1] @ query))[:k]
            found = await index.search(part, query, k=k)
            assert [(part, n.key) for n in found] == [pk for pk, _, _ in expected], step
            for n, (_, v, sig) in zip(found, expected, strict=True):
                assert n.score == pytest.approx(float(v @ query), abs=1e-5) and n.signature == sig
            for pk, _, _ in reversed(expected):
                touch(pk)
        assert len(index) <= 60
    assert index.stats()["partitions"] <= len(partitions)


async def test_stats_count_vectors_partitions_and_matrix_bytes(clock: Clock) -> None:
    index = MemoryIndex(DIM, clock=clock)
    rng = np.random.default_rng(8)
    for i in range(5):
        await index.add("a", f"k{i}", unit(rng), "s", ttl_s=60)
    await index.add("b", "k", unit(rng), "s", ttl_s=60)
    stats = index.stats()
    assert stats["vectors"] == 6 and stats["partitions"] == 2
    # capacity 8 for "a" and 1 for "b": a float32 row of DIM plus a float64 expiry each
    assert stats["bytes"] == (8 + 1) * (DIM * 4 + 8)
    for i in range(5):
        await index.delete("a", f"k{i}")
    assert index.stats() == {"vectors": 1, "partitions": 1, "bytes": DIM * 4 + 8}
    await index.close()
    assert len(index) == 0
