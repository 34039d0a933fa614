"""`secret://name`: the gateway's own secret store, AES-256-GCM in the database under a master key.

The master key comes from `SLUICEGATE_MASTER_KEY` (base64 of 32 bytes) or the file named by
`SLUICEGATE_MASTER_KEY_FILE`; each row records which key encrypted it, and the secret's name is
bound as associated data, so a row copied under another name does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.engine import Engine

from sluicegate.store.db import secrets_table
from sluicegate.vault import SecretUnavailable

MASTER_KEY_ENV = "SLUICEGATE_MASTER_KEY"
MASTER_KEY_FILE_ENV = "SLUICEGATE_MASTER_KEY_FILE"
#: names are path-like so they can mirror a remote layout (`prod/openai`)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@/-]{1,200}$")
#: a secret is a credential, not a document
MAX_SECRET_BYTES = 64 * 1024
_AAD_PREFIX = b"sluicegate/secret/v1\x00"


class MasterKeyError(SecretUnavailable):
    """The master key is missing, malformed, or not the one that encrypted a secret."""

    code = "master_key_unavailable"


@dataclass(frozen=True, slots=True)
class MasterKey:
    """A 256-bit AES key and its short id (a hash, safe to show); the key never reprs."""

    key: bytes = field(repr=False)
    key_id: str

    @classmethod
    def from_base64(cls, text: str, source: str) -> MasterKey:
        """Decode a base64 key; `source` names where it came from in the error, never its value."""
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError(f"the master key in {source} is not base64") from None
        if len(raw) != 32:
            raise MasterKeyError(f"the master key in {source} must be 32 bytes (base64), not {len(raw)}")
        # Domain-separated so the id is never the hash of the key used anywhere else.
        key_id = hashlib.sha256(b"sluicegate/master-key-id\x00" + raw).hexdigest()[:12]
        return cls(raw, key_id)

    @classmethod
    def from_file(cls, path: str | Path) -> MasterKey:
        """Read a key file holding the base64 key."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise MasterKeyError(f"the master key file {path} cannot be read") from None
        return cls.from_base64(text, f"file {path}")

    @staticmethod
    def generate() -> str:
        """A new random key, base64, for a key file or `SLUICEGATE_MASTER_KEY`."""
        return base64.b64encode(os.urandom(32)).decode()


def load_master_key(environ: Mapping[str, str] | None = None) -> MasterKey:
    """The master key from `SLUICEGATE_MASTER_KEY`, else the file in `SLUICEGATE_MASTER_KEY_FILE`."""
    env = os.environ if environ is None else environ
    text = env.get(MASTER_KEY_ENV)
    if text:
        return MasterKey.from_base64(text, MASTER_KEY_ENV)
    path = env.get(MASTER_KEY_FILE_ENV)
    if path:
        return MasterKey.from_file(path)
    raise MasterKeyError(f"no master key: set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV}")


def fingerprint(value: str) -> str:
    """A short SHA-256 of a value: tells two values apart without showing either."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What may be shown about a stored secret: never its value."""

    name: str
    key_id: str
    fingerprint: str
    updated_at: float


def _aad(name: str) -> bytes:
    return _AAD_PREFIX + name.encode()


class EncryptedStore:
    """The `secrets` table: set, get, list, delete, and re-encrypt under a new master key."""

    def __init__(self, engine: Engine, key: MasterKey | None = None) -> None:
        self.engine = engine
        #: needed to set, get and rotate; `list` and `delete` read no ciphertext
        self._key = key

    @property
    def key(self) -> MasterKey:
        """The current master key."""
        if self._key is None:
            raise MasterKeyError(f"no master key: set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV}")
        return self._key

    @key.setter
    def key(self, key: MasterKey) -> None:
        self._key = key

    @staticmethod
    def check_name(name: str) -> str:
        """The name, if it is a valid secret name; else `ValueError`."""
        if not NAME_PATTERN.match(name):
            raise ValueError("a secret name is 1-200 of A-Z a-z 0-9 _ . @ / -")
        return name

    def set(self, name: str, value: str) -> SecretInfo:
        """Store (or replace) a secret, encrypted under the current master key."""
        self.check_name(name)
        if not value:
            raise ValueError("a secret cannot be empty")
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise ValueError(f"a secret is at most {MAX_SECRET_BYTES} bytes")
        nonce = os.urandom(12)
        info = SecretInfo(name, self.key.key_id, fingerprint(value), time.time())
        row = {
            "ciphertext": AESGCM(self.key.key).encrypt(nonce, value.encode(), _aad(name)),
            "nonce": nonce,
            "key_id": info.key_id,
            "fingerprint": info.fingerprint,
            "updated_at": info.updated_at,
        }
        t = secrets_table
        with self.engine.begin() as conn:
            # One store, one key: a second key would leave secrets that `rotate` cannot read.
            other = conn.execute(sa.select(t.c.key_id).where(t.c.key_id != info.key_id).limit(1)).scalar()
            if other is not None:
                raise MasterKeyError(
                    f"the store's secrets are encrypted under master key {other}, not {info.key_id}; "
                    "use that key (or rotate to this one first)"
                )
            done = conn.execute(sa.update(secrets_table).where(secrets_table.c.name == name).values(**row))
            if done.rowcount == 0:
                conn.execute(sa.insert(secrets_table).values(name=name, **row))
        return info

    def get(self, name: str) -> str:
        """The decrypted value; `SecretUnavailable` if missing, tampered or under another key."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(secrets_table).where(secrets_table.c.name == name)).first()
        if row is None:
            raise SecretUnavailable(f"secret reference secret://{name} is not in the store")
        return self._decrypt(name, row.key_id, row.nonce, row.ciphertext)

    def list(self) -> list[SecretInfo]:
        """Every stored secret's name, key id, fingerprint and update time, by name."""
        t = secrets_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.name, t.c.key_id, t.c.fingerprint, t.c.updated_at).order_by(t.c.name))
            return [SecretInfo(r.name, r.key_id, r.fingerprint, r.updated_at) for r in rows]

    def delete(self, name: str) -> bool:
        """Remove a secret; False if there was none."""
        with self.engine.begin() as conn:
            return conn.execute(sa.delete(secrets_table).where(secrets_table.c.name == name)).rowcount > 0

    def rotate(self, new_key: MasterKey) -> int:
        """Re-encrypt every secret under `new_key` in one transaction; return how many.

        Every row must decrypt under the current key (or already be under the new one, so an
        interrupted rotation can be run again); otherwise nothing changes.
        """
        t = secrets_table
        count = 0
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(t.c.name, t.c.key_id, t.c.nonce, t.c.ciphertext)).all()
            for r in rows:
                if r.key_id == new_key.key_id:
                    continue
                value = self._decrypt(r.name, r.key_id, r.nonce, r.ciphertext)
                nonce = os.urandom(12)
                conn.execute(
                    sa.update(t)
                    .where(t.c.name == r.name)
                    .values(
                        ciphertext=AESGCM(new_key.key).encrypt(nonce, value.encode(), _aad(r.name)),
                        nonce=nonce,
                        key_id=new_key.key_id,
                        updated_at=time.time(),
                    )
                )
                count += 1
        self.key = new_key
        return count

    def _decrypt(self, name: str, key_id: str, nonce: bytes, ciphertext: bytes) -> str:
        if key_id != self.key.key_id:
            raise MasterKeyError(
                f"secret reference secret://{name} is encrypted under master key {key_id}, "
                f"not the current one ({self.key.key_id})"
            )
        try:
            return AESGCM(self.key.key).decrypt(nonce, ciphertext, _aad(name)).decode()
        except (InvalidTag, UnicodeDecodeError):
            raise SecretUnavailable(
                f"secret reference secret://{name} fails its integrity check (tampered or moved)"
            ) from None


class EncryptedBackend:
    """Resolves `secret://name` from the store; the master key is loaded on first use."""

    def __init__(self, engine: Engine, load_key: Callable[[], MasterKey] = load_master_key) -> None:
        self.engine = engine
        self.load_key = load_key
        self._store: EncryptedStore | None = None

    def read(self, ref: str) -> str:
        """The decrypted value of `secret://name`."""
        name = ref.removeprefix("secret://")
        store = self._store
        if store is None:
            store = self._store = EncryptedStore(self.engine, self.load_key())
        try:
            return store.get(name)
        except sa.exc.SQLAlchemyError:
            raise SecretUnavailable(f"secret reference secret://{name}: the store cannot be read") from None
        except MasterKeyError:
            # After `secrets rotate` the key file is replaced: read it again before giving up.
            fresh = self.load_key()
            if fresh.key_id == store.key.key_id:
                raise
            store.key = fresh
            return store.get(name)
