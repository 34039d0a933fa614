"""The in-process cache backend: entries in this process's memory, bounded by bytes, least
recently used evicted first, each expiring at its TTL. The default; one instance only."""

from __future__ import annotations

import time
from collections import OrderedDict

#: what an entry costs beyond its value: its key, the tuple and the dict slot (an estimate)
ENTRY_OVERHEAD = 200


class MemoryBackend:
    """A `CacheBackend` in a dict: no I/O, nothing awaited."""

    kind = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[1]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        size = len(value) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self.bytes += size
        entries = self._entries
        while self.bytes > self.max_bytes:
            oldest = next(iter(entries))
            self._drop(oldest)
            self.evictions += 1

    async def delete(self, key: str) -> None:
        if key in self._entries:
            self._drop(key)

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.bytes -= len(value) + ENTRY_OVERHEAD
