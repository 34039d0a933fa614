"""Consumer API keys: created once and shown once, stored only as a SHA-256 hash.

A key reads `sg-<40 random url-safe chars>`; its id (`key_...`) names it in logs, audit and the
CLI. Keys are high-entropy random strings, so an unsalted SHA-256 is the right hash: it makes
lookup a dict access and a stolen table useless.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sluicegate.store.db import api_keys, meta

KEY_PREFIX = "sg-"


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key, the only form the store keeps."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key, without its secret."""

    id: str
    consumer: str
    prefix: str
    key_hash: str
    name: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def is_active(self, now: float) -> bool:
        """Neither revoked nor expired at `now`."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class KeyStore:
    """Create, list, revoke and load consumer keys in the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self, consumer: str, *, name: str | None = None, expires_at: float | None = None
    ) -> tuple[str, KeyRecord]:
        """Make a new key for `consumer`; return the key (shown once) and its record."""
        key = KEY_PREFIX + secrets.token_urlsafe(30)
        record = KeyRecord(
            id="key_" + secrets.token_hex(6),
            consumer=consumer,
            prefix=key[:7],
            key_hash=hash_key(key),
            name=name,
            created_at=time.time(),
            expires_at=expires_at,
            revoked_at=None,
        )
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=record.id,
                    consumer=consumer,
                    prefix=record.prefix,
                    key_hash=record.key_hash,
                    name=name,
                    created_at=record.created_at,
                    expires_at=expires_at,
                )
            )
            _bump_version(conn)
        return key, record

    def rotate(self, key_id: str, overlap_s: float) -> tuple[str, KeyRecord]:
        """A new key for the same consumer; the old one stays valid `overlap_s` more seconds."""
        until = time.time() + overlap_s
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            ).first()
            if row is None:
                raise KeyError(key_id)
            old = KeyRecord(**row._mapping)
            if old.expires_at is None or old.expires_at > until:
                conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(expires_at=until))
        return self.create(old.consumer, name=old.name, expires_at=old.expires_at)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key by id; False when no active key has that id."""
        with self.engine.begin() as conn:
            result = conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            if result.rowcount:
                _bump_version(conn)
            return bool(result.rowcount)

    def list(self, consumer: str | None = None) -> list[KeyRecord]:
        """Every key (revoked ones too), oldest first."""
        query = sa.select(api_keys).order_by(api_keys.c.created_at)
        if consumer is not None:
            query = query.where(api_keys.c.consumer == consumer)
        with self.engine.connect() as conn:
            return [KeyRecord(**row._mapping) for row in conn.execute(query)]

    def find(self, key_hash: str) -> KeyRecord | None:
        """The key with this hash (revoked or expired ones too), or None."""
        query = sa.select(api_keys).where(api_keys.c.key_hash == key_hash)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return KeyRecord(**row._mapping) if row is not None else None

    def version(self) -> int:
        """A number that changes whenever a key is created or revoked (cheap to poll)."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(meta.c.value).where(meta.c.key == "keys_version")).scalar()
        return int(value or 0)


def _bump_version(conn: sa.Connection) -> None:
    conn.execute(meta.update().where(meta.c.key == "keys_version").values(value=meta.c.value + 1))
