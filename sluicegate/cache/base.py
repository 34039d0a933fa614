"""The interfaces every cache part implements: where entries live, where vectors live, and
what turns a text into a vector.

An entry is opaque bytes to a backend (`cache.entry` makes and reads them); its key is a hex
digest that already holds the entry's scope, so a backend never needs to know who asked. A
vector index is partitioned the same way: a partition is a digest of the scope and of
everything but the last user turn, so a search never crosses a scope or a context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vector = npt.NDArray[np.float32]


class CacheBackend(Protocol):
    """Where exact-cache entries live (in-process LRU, Redis ...)."""

    #: the backend's kind, for metrics and logs (`memory`, `redis`)
    kind: str

    async def get(self, key: str) -> bytes | None:
        """The entry stored under `key`, or None (absent, expired, unreadable)."""

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store `value` under `key` for `ttl_s` seconds (an entry too large is not stored)."""

    async def delete(self, key: str) -> None:
        """Forget `key` (absent: nothing happens)."""

    async def close(self) -> None:
        """Release connections; the backend is not used afterwards."""


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A stored vector near a query: the exact-cache key of its entry, its cosine similarity
    with the query, and the signature of the text it was made from (`cache.salient`)."""

    key: str
    score: float
    signature: str


class VectorIndex(Protocol):
    """Where semantic-cache vectors live (in-process, pgvector ...)."""

    kind: str

    async def search(self, partition: str, vector: Vector, k: int = 4) -> list[Neighbour]:
        """Up to `k` unexpired vectors of `partition` nearest to `vector`, best first."""

    async def add(self, partition: str, key: str, vector: Vector, signature: str, ttl_s: float) -> None:
        """Store a (unit) vector for the entry under `key`, for `ttl_s` seconds."""

    async def close(self) -> None:
        """Release connections; the index is not used afterwards."""


class Embedder(Protocol):
    """Turns a text into a unit vector (L2-normalised, float32)."""

    #: names the model: vectors of different models never share a partition
    model_id: str

    async def embed(self, text: str) -> Vector | None:
        """The text's vector, or None when it could not be made in time (the call is then a miss)."""

    async def close(self) -> None:
        """Stop worker threads or sessions."""
