"""`CacheState`: what the cache decided for one call, read by the relay (headers, the recording),
accounting, limits, the audit and the metrics."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluicegate.cache.base import Vector
    from sluicegate.cache.entry import Entry, Recorder
    from sluicegate.cache.policy import Policy
    from sluicegate.config.snapshot import Route

#: `x-cache` values
HIT, MISS, BYPASS = "hit", "miss", "bypass"


class CacheState:
    """The cache's part of one call."""

    __slots__ = (
        "age",
        "charged",
        "entry",
        "header",
        "key",
        "kind",
        "leader",
        "partition",
        "policy",
        "reason",
        "recorder",
        "saved_micro_usd",
        "signature",
        "similarity",
        "status",
        "target",
        "vector",
    )

    def __init__(self, policy: Policy, header: bytes) -> None:
        self.policy = policy
        #: the response header's name (`cache.status_header`)
        self.header = header
        #: hit | miss | bypass
        self.status = BYPASS
        #: exact | semantic (a hit's), None otherwise
        self.kind: str | None = None
        #: why a call bypassed the cache (`no-store`, `not_deterministic` ...)
        self.reason: str | None = None
        self.key: str | None = None
        self.entry: Entry | None = None
        self.age = 0
        self.similarity: float | None = None
        #: records the answer of a miss, for its entry
        self.recorder: Recorder | None = None
        #: the semantic partition, the last turn's vector and signature (to index a stored miss)
        self.partition: str | None = None
        self.vector: Vector | None = None
        self.signature: str | None = None
        #: what the answer would have cost from the upstream (a hit's), in micro-units
        self.saved_micro_usd: int | None = None
        #: a hit is charged to budgets (`charge: full`)
        self.charged = policy.charge == "full"
        #: set when this call is the first of identical misses in flight: resolved once its
        #: answer is stored (or will not be), so the others read it (`CacheService.inflight`)
        self.leader: asyncio.Future[None] | None = None
        #: the target the key names: an answer another target served (a fallback) is not stored
        self.target: Route | None = None

    @property
    def hit(self) -> bool:
        return self.status == HIT

    def audit_value(self) -> str:
        """The audit event's `cache` field: hit, semantic_hit, miss or bypass."""
        return "semantic_hit" if self.kind == "semantic" else self.status

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The answer's cache headers: the status; a hit's `age` (and similarity, semantic)."""
        headers = [(self.header, self.status.encode())]
        if self.status == HIT:
            headers.append((b"age", str(self.age).encode()))
            if self.similarity is not None:
                headers.append((b"x-cache-similarity", f"{self.similarity:.4f}".encode()))
        return headers
