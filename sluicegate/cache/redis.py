"""The exact cache in one Redis server, shared by every gateway instance (`cache.backend: redis`).

Entries hold prompts and answers, so Redis only ever sees them encrypted (AES-256-GCM, the entry's
key bound as associated data). The cache must never fail or slow a call: every command is bounded
by `timeout_s`, a failure reads as a miss, and after a failure Redis is skipped for `backoff_s`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("sluicegate.cache")

#: connections per instance; a call waiting for one is bounded by `timeout_s` like the command
MAX_CONNECTIONS = 64
#: a warning about failures (or entries that do not decrypt) is logged at most this often
WARN_EVERY_S = 30.0
#: secrets shorter than this are refused: the derived key is only as strong as its secret
MIN_SECRET_BYTES = 16
#: the first byte of every stored value
FORMAT_VERSION = b"\x01"

_T = TypeVar("_T")
_HKDF_INFO = b"sluicegate cache v1"
_KEY_ID_LABEL = b"sluicegate cache key id"
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = len(FORMAT_VERSION) + _KEY_ID_BYTES
_OVERHEAD = _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES


def key_id(secret: bytes) -> bytes:
    """The 4-byte id stored with each value: which key it was written under (safe to store)."""
    return hmac.new(secret, _KEY_ID_LABEL, hashlib.sha256).digest()[:_KEY_ID_BYTES]


def _cipher(secret: bytes) -> AESGCM:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"a cache encryption key must be at least {MIN_SECRET_BYTES} bytes, not {len(secret)}")
    # any secret length works: the AES key is derived, never the secret itself
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret)
    return AESGCM(derived)


def _location(url: str) -> str:
    """The URL without its user, password and query (where `unix://` URLs may carry them)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _ms(seconds: float) -> int:
    # PX 0 is refused by Redis
    return max(1, math.ceil(seconds * 1000))


class RedisBackend:
    """Exact-cache entries in Redis, encrypted, under `prefix + key`.

    A stored value is `version (1 byte) | key id (4) | nonce (12) | ciphertext | tag (16)`: 33
    bytes over the entry. The associated data is the version, the key id and the entry's key, so
    a value copied under another key (another consumer's scope) does not decrypt and reads as a
    miss, as does a value altered or written under a key this instance does not hold.

    Rotation: values are written under `key`; values under any of `previous_keys` still read
    until they expire. Nonces are random: past about 2**32 writes under one key, rotate it.

    `get` returns None on a miss and on any failure; failures are counted, logged at most every
    `WARN_EVERY_S` (the URL's password never), and open a circuit: for `backoff_s` Redis is not
    asked, then one call probes it while the others keep skipping it.
    """

    kind = "redis"

    def __init__(
        self,
        url: str,
        key: bytes,
        *,
        previous_keys: Sequence[bytes] = (),
        prefix: str = "sluicegate:cache:",
        timeout_s: float = 0.05,
        backoff_s: float = 1.0,
        max_entry_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_entry_bytes = max_entry_bytes
        self._key_id = key_id(key)
        self._cipher = _cipher(key)
        self._ciphers: dict[bytes, AESGCM] = {self._key_id: self._cipher}
        for previous in previous_keys:
            previous_id = key_id(previous)
            if previous_id in self._ciphers:
                if previous == key:
                    continue
                raise ValueError("two cache encryption keys share a key id: replace one of them")
            self._ciphers[previous_id] = _cipher(previous)
        self._where = _location(url)
        self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # a retry would double the time a dead server costs a call; the circuit handles failures
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = Redis(connection_pool=self._pool)
        #: Redis is skipped until this monotonic time; 0: closed (Redis is asked)
        self._open_until = 0.0
        self._last_error_warning = -math.inf
        self._last_undecryptable_warning = -math.inf
        self._hits = self._misses = self._sets = self._errors = 0
        self._undecryptable = self._skipped = self._too_large = 0

    # -- the CacheBackend contract ---------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        stored = await self._run(lambda: self._redis.get(self.prefix + key))
        # bytes or None: the client does not decode replies
        value = self._decrypt(key, stored) if isinstance(stored, bytes) else None
        if value is None:
            self._misses += 1
        else:
            self._hits += 1
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self.max_entry_bytes:
            self._too_large += 1
            return
        stored = self._encrypt(key, value)
        if await self._run(lambda: self._redis.set(self.prefix + key, stored, px=_ms(ttl_s))):
            self._sets += 1

    async def delete(self, key: str) -> None:
        await self._run(lambda: self._redis.delete(self.prefix + key))

    async def close(self) -> None:
        await self._pool.disconnect()

    def stats(self) -> dict[str, int]:
        """Counts since start: `misses` is every `get` that returned None, whatever the reason;
        `skipped` counts commands not sent while the circuit was `open`."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "sets": self._sets,
            "errors": self._errors,
            "undecryptable": self._undecryptable,
            "skipped": self._skipped,
            "too_large": self._too_large,
            "open": time.monotonic() < self._open_until,
        }

    # -- encryption ------------------------------------------------------------------------

    def _encrypt(self, key: str, value: bytes) -> bytes:
        header = FORMAT_VERSION + self._key_id
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + self._cipher.encrypt(nonce, value, header + key.encode())

    def _decrypt(self, key: str, stored: bytes) -> bytes | None:
        header = stored[:_HEADER_BYTES]
        cipher = self._ciphers.get(header[len(FORMAT_VERSION) :])
        if cipher is not None and len(stored) >= _OVERHEAD and header.startswith(FORMAT_VERSION):
            nonce = stored[_HEADER_BYTES : _HEADER_BYTES + _NONCE_BYTES]
            try:
                return cipher.decrypt(nonce, stored[_HEADER_BYTES + _NONCE_BYTES :], header + key.encode())
            except InvalidTag:
                pass
        self._undecryptable += 1
        now = time.monotonic()
        if now - self._last_undecryptable_warning >= WARN_EVERY_S:
            self._last_undecryptable_warning = now
            log.warning(
                "a cache entry in Redis at %s does not decrypt (written under a key this instance does not "
                "hold, or altered); it reads as a miss (%d so far)",
                self._where,
                self._undecryptable,
            )
        return None

    # -- commands and the circuit ----------------------------------------------------------

    async def _run(self, command: Callable[[], Awaitable[_T]]) -> _T | None:
        """One Redis command within `timeout_s`; None when it failed or the circuit is open."""
        now = time.monotonic()
        if now < self._open_until:
            self._skipped += 1
            return None
        if self._open_until:
            # the backoff is over: this call probes Redis, the others keep skipping it meanwhile
            self._open_until = now + self.timeout_s
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await command()
        except ResponseError as exc:
            # Redis answered (out of memory, read-only replica ...): not a reason to stop asking
            self._open_until = 0.0
            self._failed(exc, now, opens=False)
            return None
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, now, opens=True)
            return None
        self._open_until = 0.0
        return result

    def _failed(self, exc: Exception, now: float, *, opens: bool) -> None:
        self._errors += 1
        if opens:
            self._open_until = time.monotonic() + self.backoff_s
        if now - self._last_error_warning >= WARN_EVERY_S:
            self._last_error_warning = now
            log.warning(
                "the Redis cache at %s failed (%s); calls go uncached while it does (%d errors so far)",
                self._where,
                type(exc).__name__,
                self._errors,
            )
