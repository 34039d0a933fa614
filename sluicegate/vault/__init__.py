"""Secret references (`env://NAME`, `file:///path`) resolved at send time, with a short cache.

Config never holds a provider key, only a reference; the key is read when a request needs it
and kept in memory for `ttl_s`, so a rotated key is picked up without a restart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sluicegate.errors import ServiceUnavailable

SECRET_SCHEMES = ("env", "file")


class SecretUnavailable(ServiceUnavailable):
    """A referenced secret cannot be read; the call fails closed."""

    code = "credential_unavailable"


class Vault:
    """Resolves secret references; values live only in this object's cache and outbound requests."""

    def __init__(self, ttl_s: float = 5.0) -> None:
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, str]] = {}

    def resolve(self, ref: str) -> str:
        """The secret a reference points at; raises `SecretUnavailable` (naming the ref, not a value)."""
        now = time.monotonic()
        hit = self._cache.get(ref)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = self._read(ref)
        self._cache[ref] = (now + self.ttl_s, value)
        return value

    def clear(self) -> None:
        """Forget every cached value (next use reads again)."""
        self._cache.clear()

    @staticmethod
    def _read(ref: str) -> str:
        scheme, _, rest = ref.partition("://")
        if scheme == "env":
            value = os.environ.get(rest)
            if not value:
                raise SecretUnavailable(f"secret reference env://{rest} is not set")
            return value
        if scheme == "file":
            # Small local files only (a mounted secret); read once per TTL, never per request.
            try:
                value = Path(rest).read_text(encoding="utf-8").strip()
            except OSError:
                raise SecretUnavailable(f"secret reference file://{rest} cannot be read") from None
            if not value:
                raise SecretUnavailable(f"secret reference file://{rest} is empty")
            return value
        raise SecretUnavailable(f"unsupported secret reference scheme '{scheme}://'")
