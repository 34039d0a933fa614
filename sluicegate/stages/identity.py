"""Identity: who is calling, from `Authorization: Bearer <key>` or `x-api-key`: an API key or a JWT.

Keys are looked up by their SHA-256 in an in-memory index that a background refresh keeps in
step with the store (created or revoked keys take effect within `refresh_s`, at once where the
instances share a Redis: `store.changes`); a known key never touches the database. A key the
index does not hold yet (made a moment ago) is looked up in the store, off the event loop: one
lookup at a time per hash, a few at once in all, none while too many wait, and a hash the store
does not hold is not looked up again for `MISS_TTL_S`, so random keys cannot flood the database.
A bearer value shaped like a JWT, when `jwt_issuers` are configured, is verified by `auth.jwt`
instead and mapped to a consumer by name or to its groups (`auth.jwt`, with PyJWT and
`cryptography`, is imported only then).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from typing import TYPE_CHECKING

from sluicegate.errors import Forbidden, Unauthorized
from sluicegate.stages.base import Services, register_stage
from sluicegate.store.keys import KeyRecord, KeyStore, hash_key

if TYPE_CHECKING:
    from sluicegate.auth.jwt import JWTVerifier
    from sluicegate.call import Call
    from sluicegate.config.snapshot import Snapshot

log = logging.getLogger("sluicegate.identity")

MAX_KEY_LENGTH = 512
#: store lookups of keys the index does not hold: at once, and waiting at most (beyond: refused)
MAX_LOOKUPS = 4
MAX_WAITING = 256
#: a hash the store does not hold is not looked up again for this long; at most this many are kept
MISS_TTL_S = 2.0
MAX_MISSES = 10_000


class KeyIndex:
    """The consumer keys by hash, reloaded from the store when its version changes."""

    def __init__(self, store: KeyStore | None, refresh_s: float = 1.0) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.by_hash: dict[str, KeyRecord] = {}
        self._version = -1
        #: the poller and the change listener may both reload: one at a time, newest last
        self._reloading = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: lookups in flight, by hash; hashes the store did not hold, with when to forget them
        self._lookups: dict[str, asyncio.Future[KeyRecord | None]] = {}
        self._misses: dict[str, float] = {}
        self._slots: asyncio.Semaphore | None = None
        #: store lookups made (for tests and operators: a flood shows here, bounded)
        self.lookups = 0

    async def find(self, digest: str) -> KeyRecord | None:
        """The key with this hash: from the index, else (a key made since the last refresh) from
        the store, coalesced and bounded."""
        record = self.by_hash.get(digest)
        if record is not None or self.store is None:
            return record
        now = time.monotonic()
        forget = self._misses.get(digest)
        if forget is not None and forget > now:
            return None
        pending = self._lookups.get(digest)
        if pending is None:
            if len(self._lookups) >= MAX_WAITING:
                return None  # a flood of unknown keys: refused without asking the store
            pending = asyncio.ensure_future(self._look_up(digest))
            self._lookups[digest] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(digest, None))
        # Shielded: a caller that gives up (its client left) does not cancel the others' lookup.
        return await asyncio.shield(pending)

    async def _look_up(self, digest: str) -> KeyRecord | None:
        assert self.store is not None
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_LOOKUPS)
        async with self._slots:
            self.lookups += 1
            try:
                record = await asyncio.to_thread(self.store.find, digest)
            except Exception as exc:  # the store is down: unknown keys fail closed, known ones still work
                log.error("cannot look up a consumer key in the store (%s)", type(exc).__name__)
                return None
        if record is None:
            if len(self._misses) >= MAX_MISSES:
                self._misses.clear()
            self._misses[digest] = time.monotonic() + MISS_TTL_S
        else:
            # Seen now; the next refresh brings it (and any later revocation) in the whole index.
            self.by_hash[digest] = record
        return record

    def reload(self) -> bool:
        """Reload the index if the store changed; True when it did."""
        if self.store is None:
            return False
        with self._reloading:
            version = self.store.version()
            if version == self._version:
                return False
            records = self.store.list()
            # Swap the whole dict: readers on the event loop see the old or the new one, never a mix.
            self.by_hash = {r.key_hash: r for r in records}
            self._version = version
            return True

    def start(self) -> None:
        """Load now, then poll the store in a background thread."""
        self.reload()
        self._thread = threading.Thread(target=self._run, name="sluicegate-keys", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.reload()
            except Exception as exc:  # keep the last good index; say so
                log.error("cannot reload consumer keys from the store (%s); keeping the last index", type(exc).__name__)


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key the client presented, from `Authorization: Bearer`, `x-api-key` (Anthropic's
    clients) or `api-key` (Azure OpenAI's)."""
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, value = auth.partition(b" ")
        if scheme.lower() == b"bearer" and value.strip():
            return value.strip().decode("latin-1")
        return None
    key = headers.get(b"x-api-key") or headers.get(b"api-key")
    if key is not None and key.strip():
        return key.strip().decode("latin-1")
    return None


class IdentityStage:
    """Resolves the caller's key to a configured consumer, or refuses with 401."""

    name = "identity"
    needs_body = False

    def __init__(self, keys: KeyIndex, jwt: JWTVerifier | None = None) -> None:
        self.keys = keys
        self.jwt = jwt
        if jwt is not None:
            from sluicegate.auth.jwt import looks_like_jwt

            self._looks_like_jwt = looks_like_jwt

    async def on_request(self, call: Call) -> None:
        if call.consumer is not None:
            return  # identified by the door it came in by (the egress proxy's source network)
        key = presented_key(call.headers)
        if key is None:
            raise Unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>', 'x-api-key: <key>' or 'api-key: <key>'",
                code="missing_api_key",
            )
        if self.jwt is not None and self._looks_like_jwt(key):
            await self._identify_jwt(call, self.jwt, key)
            return
        if len(key) > MAX_KEY_LENGTH:
            raise Unauthorized("Invalid API key")
        digest = hash_key(key)
        record = self.keys.by_hash.get(digest)
        if record is None:
            record = await self.keys.find(digest)
        # The dict finds the candidate; the stored hash is then compared in constant time.
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            raise Unauthorized("Invalid API key")
        call.key_id = record.id
        if record.revoked_at is not None:
            raise Unauthorized("This API key has been revoked", code="api_key_revoked")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise Unauthorized("This API key has expired", code="api_key_expired")
        consumer = call.snapshot.consumers.get(record.consumer)
        if consumer is None:
            raise Forbidden(
                "This API key's consumer is not in the gateway's configuration", code="consumer_not_configured"
            )
        call.consumer = consumer

    async def _identify_jwt(self, call: Call, verifier: JWTVerifier, token: str) -> None:
        # The audit names the issuer, never the token; refusals carry the issuer in their rule.
        call.key_id = "jwt"
        identity = await verifier.verify(token)
        call.key_id = f"jwt:{identity.issuer}"
        snapshot = call.snapshot
        consumer = snapshot.consumers.get(identity.consumer) if identity.consumer is not None else None
        if consumer is None and identity.groups:
            name = f"jwt:{identity.issuer}:{identity.subject}" if identity.subject else f"jwt:{identity.issuer}"
            consumer = snapshot.consumer_for_groups(name, identity.groups)
        if consumer is None:
            raise Forbidden(
                "This token maps to no consumer or group in the gateway's configuration",
                code="consumer_not_configured",
                rule=f"jwt_issuers.{identity.issuer}",
            )
        call.consumer = consumer

    async def on_finish(self, call: Call) -> None:
        return None


def _factory(snapshot: Snapshot, services: Services) -> IdentityStage:
    issuers = snapshot.config.jwt_issuers
    if not issuers:
        return IdentityStage(services.keys)
    from sluicegate.auth.jwt import JWTVerifier

    # Built per snapshot (cheap); the JWKS cache lives in `services` and survives reloads.
    return IdentityStage(services.keys, JWTVerifier(issuers, services.vault, lambda: services.http, jwks=services.jwks))


register_stage("identity", _factory)
