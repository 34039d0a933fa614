"""The semantic cache: a call whose last user turn means the same as a stored one (and whose
context is equal: same partition) is answered with that one's entry.

A stored turn is a hit when its vector's cosine similarity with the call's reaches the threshold
*and* the two turns have the same signature (`cache.salient`: numbers, names, negations,
quoted text ... must be equal). The embedding runs off the event loop, batched, with a timeout;
a call whose vector is not ready in time is a miss, never a slow call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sluicegate.cache.salient import signature

if TYPE_CHECKING:
    from sluicegate.cache.base import Embedder, Neighbour, Vector, VectorIndex
    from sluicegate.cache.config import SemanticConfig

#: makes the vector index for vectors of a dimension (known from the model's first vector)
IndexFactory = Callable[[int], "VectorIndex"]

log = logging.getLogger("sluicegate.cache")

#: nearest stored turns compared per lookup
NEIGHBOURS = 4


class SemanticCache:
    """An embedder and a vector index, with the threshold that makes a hit."""

    def __init__(self, config: SemanticConfig, embedder: Embedder, make_index: IndexFactory) -> None:
        self.config = config
        self.embedder = embedder
        self.make_index = make_index
        #: the index, made for the dimension of the model's first vector (a routed model's is
        #: known only then); a vector of another dimension is never compared
        self.index: VectorIndex | None = None
        self.dim = 0
        dim = getattr(embedder, "dim", None)
        if isinstance(dim, int) and dim > 0:
            self.index, self.dim = make_index(dim), dim
        self.threshold = config.threshold
        #: lookups that had no vector in time
        self.timeouts = 0

    async def warm(self) -> None:
        """Load the model and open the index (when its dimension is known) ahead of the first call."""
        warm = getattr(self.embedder, "warm", None)
        if warm is not None:
            await warm()
        start = getattr(self.index, "start", None)
        if start is not None:
            await start()

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    async def lookup(self, partition: str, text: str) -> tuple[Vector | None, str, Neighbour | None]:
        """The turn's vector and signature, and the stored turn it matches (None: no hit)."""
        sig = signature(text)
        vector = await self.embedder.embed(text)
        if vector is None:
            self.timeouts += 1
            return None, sig, None
        index = self._index(vector)
        if index is None:
            return None, sig, None
        for near in await index.search(partition, vector, NEIGHBOURS):
            if near.score < self.threshold:
                break
            if near.signature == sig:
                return vector, sig, near
        return vector, sig, None

    async def add(self, partition: str, key: str, vector: Vector, sig: str, ttl_s: float) -> None:
        index = self._index(vector)
        if index is not None:
            await index.add(partition, key, vector, sig, ttl_s)

    def _index(self, vector: Vector) -> VectorIndex | None:
        dim = int(vector.shape[0])
        if self.index is None:
            self.index, self.dim = self.make_index(dim), dim
        elif dim != self.dim:
            log.warning("the semantic cache's model gave a vector of %d dimensions, not %d: a miss", dim, self.dim)
            return None
        return self.index

    async def close(self) -> None:
        await self.embedder.close()
        if self.index is not None:
            await self.index.close()
