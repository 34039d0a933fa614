"""Secret references resolved at send time, with a short cache: the one entry point is `Vault`.

Config never holds a provider key, only a reference (`env://`, `file://`, `secret://`, `aws-sm://`,
`vault://`); the value is read when a request needs it and kept in memory for `cache_ttl_s`, so a
rotated key is picked up without a restart. One module per backend; this one routes and caches.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from sluicegate.config.model import VaultConfig
from sluicegate.errors import ServiceUnavailable
from sluicegate.vault.refs import SECRET_SCHEMES

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: schemes read on the event loop: an environment lookup or a small local file
_LOCAL_SCHEMES = frozenset({"env", "file"})
#: the cache holds one entry per configured reference; this only bounds a pathological config
_MAX_CACHED = 10_000


class SecretUnavailable(ServiceUnavailable):
    """A referenced secret cannot be read; the call fails closed."""

    code = "credential_unavailable"


class Backend(Protocol):
    """Reads the references of one scheme (blocking; remote ones run on a worker thread)."""

    def read(self, ref: str) -> str:
        """The value `ref` points at; raises `SecretUnavailable` naming the ref, never a value."""
        ...


class Vault:
    """Resolves secret references; values live only in this object's cache and outbound requests.

    Usage: `secret = await vault.aresolve("aws-sm://prod/openai#api_key")`. Concurrent misses for
    one reference share one read; a failure is not cached, so the next call tries again.
    """

    def __init__(self, config: VaultConfig | None = None, *, engine: Engine | None = None) -> None:
        self.engine = engine
        self._cache: dict[str, tuple[float, str]] = {}
        self._inflight: dict[str, asyncio.Task[str]] = {}
        self._backends: dict[str, Backend] = {}
        #: bumped when cached values are dropped, so a read begun before does not store stale data
        self._generation = 0
        self.config = VaultConfig()
        self.ttl_s = self.config.cache_ttl_s
        self.configure(config or self.config)

    def configure(self, config: VaultConfig) -> None:
        """Adopt a (reloaded) config: new TTL and remote backends; cached values are dropped."""
        if config.aws != self.config.aws or config.hashicorp != self.config.hashicorp:
            # Backends hold clients built from their config block; rebuilt lazily on next use.
            self._backends.pop("aws-sm", None)
            self._backends.pop("vault", None)
        self.config = config
        self.ttl_s = config.cache_ttl_s
        self.clear()

    def clear(self) -> None:
        """Forget every cached value (next use reads again)."""
        self._generation += 1
        self._cache.clear()

    def cached(self, ref: str) -> str | None:
        """The cached value of a reference, or None: the hot path's check, without a coroutine."""
        hit = self._cache.get(ref)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    async def aresolve(self, ref: str) -> str:
        """The secret a reference points at, without blocking the event loop.

        Raises `SecretUnavailable` (naming the reference, never a value).
        """
        hit = self._cache.get(ref)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        scheme = ref.partition("://")[0]
        if scheme in _LOCAL_SCHEMES:
            return self.resolve(ref)
        task = self._inflight.get(ref)
        if task is None:
            # One read per reference however many calls miss at once; the read runs as its own
            # task so a cancelled caller does not cancel it for the others.
            task = self._inflight[ref] = asyncio.create_task(self._fetch(ref))
            task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _fetch(self, ref: str) -> str:
        generation = self._generation
        try:
            value = await asyncio.to_thread(self._read, ref)
            if generation == self._generation:
                self._store(ref, value)
            return value
        finally:
            self._inflight.pop(ref, None)

    def resolve(self, ref: str) -> str:
        """The secret a reference points at, blocking: for the CLI, startup and worker threads."""
        hit = self._cache.get(ref)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        value = self._read(ref)
        self._store(ref, value)
        return value

    def _store(self, ref: str, value: str) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[ref] = (time.monotonic() + self.ttl_s, value)

    def _read(self, ref: str) -> str:
        scheme, sep, rest = ref.partition("://")
        if not sep or not rest:
            raise SecretUnavailable("a secret reference must look like scheme://name")
        return self._backend(scheme).read(ref)

    def _backend(self, scheme: str) -> Backend:
        backend = self._backends.get(scheme)
        if backend is None:
            try:
                backend = self._build(scheme)
            except ImportError:
                extra = "aws" if scheme == "aws-sm" else "hashicorp"
                raise SecretUnavailable(f"{scheme}:// references need `pip install sluicegate[{extra}]`") from None
            self._backends[scheme] = backend
        return backend

    def _build(self, scheme: str) -> Backend:
        # Imported on first use: a gateway without AWS or Vault references never loads their SDKs.
        if scheme == "env":
            from sluicegate.vault.env import EnvBackend

            return EnvBackend()
        if scheme == "file":
            from sluicegate.vault.file import FileBackend

            return FileBackend()
        if scheme == "secret":
            from sluicegate.vault.encrypted import EncryptedBackend

            if self.engine is None:
                raise SecretUnavailable("secret:// references need the gateway database")
            return EncryptedBackend(self.engine)
        if scheme == "aws-sm":
            from sluicegate.vault.aws import AwsBackend

            if self.config.aws is None:
                raise SecretUnavailable("aws-sm:// references need a `vault.aws` config block")
            return AwsBackend(self.config.aws)
        if scheme == "vault":
            from sluicegate.vault.hashicorp import HashicorpBackend

            if self.config.hashicorp is None:
                raise SecretUnavailable("vault:// references need a `vault.hashicorp` config block")
            return HashicorpBackend(self.config.hashicorp, self)
        raise SecretUnavailable(f"unsupported secret reference scheme '{scheme}://'")


def _retrieve(task: asyncio.Task[str]) -> None:
    # Every caller may have been cancelled; reading the outcome keeps asyncio from logging it.
    if not task.cancelled():
        task.exception()


__all__ = ["SECRET_SCHEMES", "Backend", "SecretUnavailable", "Vault"]
