"""Who calls through the egress proxy: `Proxy-Authorization: Basic` with a gateway API key as the
password, checked against the gateway's key index as the identity stage checks keys."""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from typing import TYPE_CHECKING

from sluicegate.stages.identity import MAX_KEY_LENGTH
from sluicegate.store.keys import hash_key

if TYPE_CHECKING:
    from sluicegate.config.snapshot import Snapshot
    from sluicegate.stages.identity import KeyIndex
    from sluicegate.store.keys import KeyRecord


def basic_credentials(header: bytes) -> tuple[str, str] | None:
    """User and password of a `Basic` credential, or None when it is not one."""
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


async def find_key(keys: KeyIndex, snapshot: Snapshot, key: str) -> KeyRecord | None:
    """The active key record for `key` whose consumer is configured, or None."""
    if not key or len(key) > MAX_KEY_LENGTH:
        return None
    digest = hash_key(key)
    record = keys.by_hash.get(digest)
    if record is None:
        record = await keys.find(digest)
    if record is None or not hmac.compare_digest(record.key_hash, digest):
        return None
    if not record.is_active(time.time()) or record.consumer not in snapshot.consumers:
        return None
    return record
