"""An embedder that asks an embeddings model the gateway routes to (`cache.semantic.embedder:
<model name>`): the gateway's own call to its provider, with its credential, bounded by the
semantic cache's timeout. No consumer policy applies to it (it is the gateway's, not a caller's)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluicegate.cache.base import Vector

log = logging.getLogger("sluicegate.cache")

#: `await embed(model, text)` -> the vector, as floats
EmbedFn = Callable[[str, str], Awaitable[list[float]]]
#: failures are logged at most this often
_WARN_EVERY_S = 30.0


class RoutedEmbedder:
    """Embeds through a routed embeddings model."""

    def __init__(self, model: str, embed: Callable[[], EmbedFn | None], timeout_ms: float) -> None:
        self.model = model
        self.model_id = "routed:" + model
        self._embed = embed
        self.timeout_s = timeout_ms / 1000.0
        self._warned = 0.0

    async def embed(self, text: str) -> Vector | None:
        import numpy as np

        fn = self._embed()
        if fn is None or not text:
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                values = await fn(self.model, text)
        except Exception as exc:
            now = time.monotonic()
            if now - self._warned >= _WARN_EVERY_S:
                self._warned = now
                log.warning("the semantic cache's embeddings model '%s' failed (%s)", self.model, type(exc).__name__)
            return None
        vector = np.asarray(values, dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        if vector.ndim != 1 or not vector.size or not norm:
            return None
        result: Vector = vector / norm
        return result

    async def close(self) -> None:
        return None
