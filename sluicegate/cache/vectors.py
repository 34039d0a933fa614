"""The in-process vector index of the semantic cache (`cache.semantic.index: memory`): exact
cosine search within one partition, bounded by a vector count, least recently used first out.

It needs NumPy (the `sluicegate[semantic]` extra), imported here at module level: this module is
imported only when the semantic cache is configured.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from sluicegate.cache.base import Neighbour

if TYPE_CHECKING:
    from sluicegate.cache.base import Vector

#: expired vectors dropped per call at most (the rest are skipped by search, dropped later)
PURGE_BATCH = 256


class _Slot:
    """One stored vector: where it sits (its partition's row), its signature, when it expires."""

    __slots__ = ("expires_at", "partition", "row", "signature")

    def __init__(self, partition: _Partition, row: int, signature: str, expires_at: float) -> None:
        self.partition = partition
        self.row = row
        self.signature = signature
        self.expires_at = expires_at


class _Partition:
    """The vectors of one partition: rows `0..size-1` of a matrix grown (and shrunk) by doubling.

    Row `i` of `matrix` belongs to `slots[i]` and `keys[i]`; a removed row is filled with the last
    one, so a search reads only live rows.
    """

    __slots__ = ("expires", "keys", "matrix", "name", "slots")

    def __init__(self, name: str, dim: int) -> None:
        self.name = name
        self.matrix = np.empty((1, dim), dtype=np.float32)
        self.expires = np.empty(1, dtype=np.float64)
        self.slots: list[_Slot] = []
        self.keys: list[str] = []

    def append(self, key: str, vector: Vector, signature: str, expires_at: float) -> _Slot:
        row = len(self.slots)
        if row == len(self.matrix):
            self._resize(2 * row)
        self.matrix[row] = vector
        self.expires[row] = expires_at
        slot = _Slot(self, row, signature, expires_at)
        self.slots.append(slot)
        self.keys.append(key)
        return slot

    def remove(self, row: int) -> None:
        last = len(self.slots) - 1
        if row != last:
            self.matrix[row] = self.matrix[last]
            self.expires[row] = self.expires[last]
            moved = self.slots[last]
            moved.row = row
            self.slots[row] = moved
            self.keys[row] = self.keys[last]
        self.slots.pop()
        self.keys.pop()
        # Shrink at a quarter full, not at half: a partition hovering at a boundary does not
        # copy its matrix on every add and remove.
        if len(self.matrix) >= 8 and len(self.slots) <= len(self.matrix) // 4:
            self._resize(len(self.matrix) // 2)

    def _resize(self, capacity: int) -> None:
        size = len(self.slots)
        matrix = np.empty((capacity, self.matrix.shape[1]), dtype=np.float32)
        matrix[:size] = self.matrix[:size]
        expires = np.empty(capacity, dtype=np.float64)
        expires[:size] = self.expires[:size]
        self.matrix, self.expires = matrix, expires


class MemoryIndex:
    """Vectors in this process, searched exactly, one partition at a time.

    A search is one matrix-vector product over its partition's rows (O(partition size)), then a
    partial sort for the top `k`; an add is O(1) amortised. At `max_vectors` the least recently
    added or returned vector is evicted; expired vectors are never returned, and are dropped as
    adds and searches come by.

    Memory: each vector costs `4 * dim + 8` bytes in its partition's matrices (1.5 KiB at 384),
    up to twice that while a matrix has room to grow, plus about 500 bytes of bookkeeping (its
    key, signature, LRU and expiry entries). The default 100_000 vectors of 384 dimensions take
    200 to 360 MB. `stats()` reports what the matrices hold.
    """

    kind = "memory"

    def __init__(self, dim: int, max_vectors: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if dim <= 0 or max_vectors <= 0:
            raise ValueError("dim and max_vectors must be positive")
        self.dim = dim
        self.max_vectors = max_vectors
        self._clock = clock
        self._partitions: dict[str, _Partition] = {}
        #: (partition, key) -> slot, least recently added or returned first
        self._lru: OrderedDict[tuple[str, str], _Slot] = OrderedDict()
        #: (expires_at, tie-breaker, slot): stale items (replaced or removed slots) are skipped
        self._expiry: list[tuple[float, int, _Slot]] = []
        self._pushed = 0

    def __len__(self) -> int:
        return len(self._lru)

    async def search(self, partition: str, vector: Vector, k: int = 4) -> list[Neighbour]:
        """Up to `k` unexpired vectors of `partition` nearest to `vector`, best first."""
        vector = self._check(vector)
        now = self._clock()
        self._purge(now)
        part = self._partitions.get(partition)
        if part is None or k <= 0:
            return []
        size = len(part.slots)
        scores = part.matrix[:size] @ vector
        if self._expiry and self._expiry[0][0] <= now:
            # More expired vectors than one purge drops: hide the ones left here.
            scores[part.expires[:size] <= now] = -np.inf
        if size > k:
            top = np.argpartition(scores, size - k)[size - k :]
            top = top[np.argsort(scores[top])[::-1]]
        else:
            top = np.argsort(scores)[::-1]
        found: list[Neighbour] = []
        for row in top.tolist():
            score = float(scores[row])
            if score == -np.inf:
                break
            found.append(Neighbour(key=part.keys[row], score=score, signature=part.slots[row].signature))
        # Returned counts as hit (the caller decides which is one; a vector near what is asked is
        # worth keeping), the best last so that it is the most recent.
        for neighbour in reversed(found):
            self._lru.move_to_end((partition, neighbour.key))
        return found

    async def add(self, partition: str, key: str, vector: Vector, signature: str, ttl_s: float) -> None:
        """Store a (unit) vector for the entry under `key`, for `ttl_s` seconds (replacing one)."""
        vector = self._check(vector)
        now = self._clock()
        self._purge(now)
        expires_at = now + ttl_s
        slot = self._lru.get((partition, key))
        if slot is not None:
            part = slot.partition
            part.matrix[slot.row] = vector
            part.expires[slot.row] = expires_at
            slot.signature = signature
            slot.expires_at = expires_at
            self._lru.move_to_end((partition, key))
        else:
            while len(self._lru) >= self.max_vectors:
                self._drop(self._lru.popitem(last=False)[1])
            if partition not in self._partitions:
                self._partitions[partition] = _Partition(partition, self.dim)
            slot = self._partitions[partition].append(key, vector, signature, expires_at)
            self._lru[(partition, key)] = slot
        self._pushed += 1
        heapq.heappush(self._expiry, (expires_at, self._pushed, slot))
        if len(self._expiry) > 2 * len(self._lru) + 64:
            # Replacements leave stale items behind: rebuild from the live slots.
            self._expiry = [(s.expires_at, self._pushed + i, s) for i, s in enumerate(self._lru.values(), 1)]
            self._pushed += len(self._expiry)
            heapq.heapify(self._expiry)

    async def delete(self, partition: str, key: str) -> None:
        """Forget the vector of `key` in `partition` (absent: nothing happens)."""
        slot = self._lru.pop((partition, key), None)
        if slot is not None:
            self._drop(slot)

    async def close(self) -> None:
        """Drop every vector."""
        self._partitions.clear()
        self._lru.clear()
        self._expiry.clear()

    def stats(self) -> dict[str, int]:
        """Vectors and partitions held, and the bytes their matrices take."""
        held = sum(p.matrix.nbytes + p.expires.nbytes for p in self._partitions.values())
        return {"vectors": len(self._lru), "partitions": len(self._partitions), "bytes": held}

    def _check(self, vector: Vector) -> Vector:
        if vector.shape != (self.dim,):
            raise ValueError(f"a vector of shape {vector.shape}, not ({self.dim},)")
        return vector if vector.dtype == np.float32 else vector.astype(np.float32)

    def _purge(self, now: float) -> None:
        heap = self._expiry
        for _ in range(PURGE_BATCH):
            if not heap or heap[0][0] > now:
                return
            expires_at, _, slot = heapq.heappop(heap)
            # A slot replaced since holds another time; a removed one has no row.
            if slot.row < 0 or slot.expires_at != expires_at:
                continue
            part = slot.partition
            del self._lru[(part.name, part.keys[slot.row])]
            self._drop(slot)

    def _drop(self, slot: _Slot) -> None:
        part = slot.partition
        part.remove(slot.row)
        slot.row = -1
        if not part.slots and self._partitions.get(part.name) is part:
            del self._partitions[part.name]
