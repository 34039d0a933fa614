"""`CacheService`: the cache's long-lived parts, kept across config reloads.

A `CacheRuntime` is the backend, the key secret and the semantic parts of one set of cache
settings; a reload that changes none of them keeps it (entries survive), one that does builds a
new one and closes the old after the calls in flight are done with it. Entries are written in
background tasks, so a slow store never holds a call's last byte; the in-process backend, which
never waits, is written at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluicegate.cache.key import Keyed
from sluicegate.cache.memory import MemoryBackend

if TYPE_CHECKING:
    from sluicegate.cache.base import CacheBackend
    from sluicegate.cache.config import CacheConfig
    from sluicegate.cache.semantic import SemanticCache
    from sluicegate.vault import Vault

log = logging.getLogger("sluicegate.cache")

#: entry writes waiting at most; past it a new one is dropped (the answer is simply not cached)
MAX_PENDING_WRITES = 1000
#: the key file of a Redis backend configured without a key (one instance: share a vault secret)
DEFAULT_KEY_FILE = "cache.key"
#: the local model's dimension (its vectors' table keeps the plain name)
_DIM_LOCAL = 384
#: the pgvector table of the semantic cache's vectors
PGVECTOR_TABLE = "sluicegate_semantic_cache"


class CacheRuntime:
    """The backend, digest secret and semantic cache of one set of cache settings."""

    def __init__(self, backend: CacheBackend, secret: bytes, semantic: SemanticCache | None) -> None:
        self.backend = backend
        #: keys entries: its secret makes them unguessable to who reads a shared store's keys
        self.keyed = Keyed(secret)
        self.semantic = semantic

    async def close(self) -> None:
        await self.backend.close()
        if self.semantic is not None:
            await self.semantic.close()


class CacheService:
    """The cache runtime of the current config, and the writes in flight."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        #: embeds texts with a routed embeddings model: `await embed(model, texts)` (set by the gateway)
        self.embed: Any = None
        self._runtime: CacheRuntime | None = None
        self._settings: tuple[Any, ...] | None = None
        self._retired: list[CacheRuntime] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._warming: CacheRuntime | None = None
        #: keys of misses on their way upstream (this process): later identical misses wait on them
        self.inflight: dict[str, asyncio.Future[None]] = {}
        #: set once the semantic model of the current runtime loaded (or failed to); None: no model
        self.ready: asyncio.Event | None = None
        #: writes dropped because too many were waiting; writes that failed
        self.dropped_writes = 0
        self.failed_writes = 0

    @property
    def current(self) -> CacheRuntime | None:
        """The runtime of the current config (None before a config enables the cache)."""
        return self._runtime

    @property
    def pending(self) -> int:
        """Entry writes in flight."""
        return len(self._pending)

    def runtime(self, config: CacheConfig, vault: Vault) -> CacheRuntime:
        """The runtime for `config` (the current one when its settings did not change).

        Blocking (a vault read, a key file): called while a config's pipeline is built."""
        settings = (
            config.backend,
            config.memory_max_bytes if config.backend == "memory" else config.redis,
            config.semantic if _semantic_used(config) else None,
        )
        if self._runtime is not None and settings == self._settings:
            return self._runtime
        runtime = CacheRuntime(*self._backend(config, vault), self._semantic(config, vault))
        if self._runtime is not None:
            self._retired.append(self._runtime)
        self._runtime, self._settings = runtime, settings
        return runtime

    def _backend(self, config: CacheConfig, vault: Vault) -> tuple[CacheBackend, bytes]:
        if config.backend == "memory":
            return MemoryBackend(config.memory_max_bytes), os.urandom(32)
        from sluicegate.cache.redis import RedisBackend

        redis = config.redis
        url = vault.resolve(redis.url) if "://" in redis.url and not redis.url.startswith(_REDIS_SCHEMES) else redis.url
        key = self._secret(redis.key, vault)
        previous = [self._secret(ref, vault) for ref in redis.previous_keys]
        backend = RedisBackend(url, key, previous_keys=previous, prefix=redis.prefix, timeout_s=redis.timeout_s)
        # Instances that share the Redis share the key, so they derive the same key digests.
        return backend, hashlib.blake2b(key, person=b"sg-cache-keys").digest()

    def _secret(self, ref: str | None, vault: Vault) -> bytes:
        if ref is None:
            if self.data_dir is None:
                raise ValueError("cache.redis.key is not set and the gateway has no data folder for a key file")
            ref = _ensure_key_file(self.data_dir / DEFAULT_KEY_FILE)
        return vault.resolve(ref).encode()

    def _semantic(self, config: CacheConfig, vault: Vault) -> SemanticCache | None:
        if not _semantic_used(config):
            return None
        semantic = config.semantic
        from sluicegate.cache.semantic import SemanticCache

        embedder: Any
        if semantic.embedder == "local":
            from sluicegate.cache.embed import EmbedderUnavailable, LocalEmbedder

            try:
                embedder = LocalEmbedder(
                    batch_size=semantic.batch_size,
                    batch_wait_ms=semantic.batch_wait_ms,
                    timeout_ms=semantic.timeout_ms,
                    max_tokens=semantic.max_tokens,
                )
            except EmbedderUnavailable as exc:
                log.error("the semantic cache is off: %s", exc)
                return None
        else:
            from sluicegate.cache.routed import RoutedEmbedder

            embedder = RoutedEmbedder(semantic.embedder, lambda: self.embed, timeout_ms=semantic.timeout_ms)
        make_index: Any
        try:
            if semantic.index == "memory":
                from sluicegate.cache.vectors import MemoryIndex

                def make_index(dim: int) -> Any:
                    return MemoryIndex(dim, semantic.max_vectors)

            else:
                from sluicegate.cache.pgvector import PgVectorIndex

                assert semantic.pgvector_url is not None
                url = semantic.pgvector_url
                if not url.startswith(("postgresql://", "postgres://")):
                    url = vault.resolve(url)

                def make_index(dim: int) -> Any:
                    # A table per dimension: another model's vectors never meet this one's.
                    table = PGVECTOR_TABLE if dim == _DIM_LOCAL else f"{PGVECTOR_TABLE}_{dim}"
                    return PgVectorIndex(url, dim, table)

        except ImportError as exc:
            log.error("the semantic cache is off: %s (install 'sluicegate[semantic]')", exc)
            return None
        return SemanticCache(semantic, embedder, make_index)

    def status(self) -> dict[str, Any] | None:
        """What the cache holds and how its stores fare (None: no cache configured), for `/readyz`
        and the metrics: shown, never judged (a failing cache store makes misses, not failures)."""
        runtime = self._runtime
        if runtime is None:
            return None
        backend = runtime.backend
        out: dict[str, Any] = {"backend": backend.kind, "pending_writes": len(self._pending),
                               "dropped_writes": self.dropped_writes, "failed_writes": self.failed_writes,
                               "coalescing": len(self.inflight)}  # fmt: skip
        if isinstance(backend, MemoryBackend):
            out.update(entries=len(backend), bytes=backend.bytes, evictions=backend.evictions)
        else:
            stats = getattr(backend, "stats", None)
            if stats is not None:
                out.update(stats())
        semantic = runtime.semantic
        if semantic is not None:
            index = semantic.index
            index_stats = getattr(index, "stats", None)
            out["semantic"] = {
                "model": semantic.model_id,
                "ready": self.ready is not None and self.ready.is_set(),
                "index": index.kind if index is not None else None,
                "timeouts": semantic.timeouts,
                **(index_stats() if index_stats is not None else {}),
            }
        return out

    def warm(self) -> None:
        """Start loading the semantic cache's model of the current runtime, in the background:
        the gateway serves meanwhile (semantic lookups miss until it is loaded: `ready`)."""
        runtime = self._runtime
        if runtime is None or runtime.semantic is None or runtime is self._warming:
            return
        self._warming = runtime
        self.ready = asyncio.Event()
        self.write(runtime, self._warm(runtime.semantic.warm, self.ready))

    async def _warm(self, warm: Any, ready: asyncio.Event) -> None:
        try:
            await warm()
        except Exception as exc:
            log.error("the semantic cache did not start (%s); its lookups will miss", exc)
        finally:
            ready.set()

    # -- writes -------------------------------------------------------------------------------

    def write(self, runtime: CacheRuntime, work: Any) -> asyncio.Future[None] | None:
        """Run an entry write (a coroutine) in the background, bounded; its task (None: dropped)."""
        if len(self._pending) >= MAX_PENDING_WRITES:
            self.dropped_writes += 1
            work.close()
            return None
        task = asyncio.ensure_future(self._guarded(work))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _guarded(self, work: Any) -> None:
        try:
            await work
        except Exception:
            self.failed_writes += 1
            log.warning("a cache entry could not be written", exc_info=True)

    async def drain(self) -> None:
        """Wait for the writes in flight (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        for runtime in [*self._retired, *([self._runtime] if self._runtime else [])]:
            try:
                await runtime.close()
            except Exception:
                log.warning("closing a cache backend failed", exc_info=True)
        self._retired.clear()
        self._runtime = None
        self._settings = None


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _semantic_used(config: CacheConfig) -> bool:
    """Whether any policy asks for the semantic cache."""
    return bool(config.default.semantic) or any(rule.semantic for rule in config.rules)


def _ensure_key_file(path: Path) -> str:
    """A reference to a random key in `path`, made (mode 0600) when absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(os.urandom(32).hex() + "\n")
            log.warning(
                "cache encryption key created in %s; gateways sharing a Redis need one key (cache.redis.key)", path
            )
    return f"file://{path.resolve()}"
