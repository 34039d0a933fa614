"""JWKS documents fetched over HTTP and cached per URL, shared across config reloads.

A document is kept for the issuer's `jwks_cache_s`; a token naming an unknown `kid` refetches it
at most once per `jwks_min_refresh_s`, and concurrent fetches of one URL share one request. A JWKS
that cannot be fetched fails closed (503 `jwks_unavailable`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
import orjson

from sluicegate.errors import ServiceUnavailable

if TYPE_CHECKING:
    from aiohttp import ClientSession
    from jwt import PyJWK

log = logging.getLogger("sluicegate.jwt")

#: an identity provider's JWKS is a few kilobytes; anything far larger is not one
MAX_JWKS_BYTES = 256 * 1024
JWKS_TIMEOUT_S = 5.0
#: asymmetric key types only: a symmetric key published at a URL would be a secret no longer
_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
#: private members of a JWK; a document carrying them is leaking keys and those keys are skipped
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


def jwks_unavailable() -> ServiceUnavailable:
    """The refusal when an issuer's keys cannot be fetched (fail closed)."""
    return ServiceUnavailable(
        "The identity provider's signing keys (JWKS) cannot be fetched; try again later", code="jwks_unavailable"
    )


class _BadDocument(ValueError):
    """The JWKS response is not a usable JWKS document."""


@dataclass(slots=True)
class JWKSKey:
    """One usable public key of a JWKS, and the `PyJWK` bound to each algorithm asked of it so far."""

    kid: str | None
    jwk: dict[str, object]
    #: the JWK's own `alg`: when set, the only algorithm this key verifies
    alg: str | None
    _bound: dict[str, PyJWK | None] = field(default_factory=dict)

    def for_algorithm(self, alg: str) -> PyJWK | None:
        """This key bound to `alg`, or None when it cannot verify `alg` (other key type or `alg`)."""
        if self.alg is not None and self.alg != alg:
            return None
        if alg not in self._bound:
            from jwt import PyJWK, PyJWTError  # PyJWT and `cryptography`: loaded with a JWT issuer

            try:
                # PyJWT verifies with the algorithm a PyJWK is bound to, so bind the pinned one.
                self._bound[alg] = PyJWK(self.jwk, algorithm=alg)
            except PyJWTError:
                self._bound[alg] = None
        return self._bound[alg]


@dataclass(slots=True)
class _Document:
    keys: tuple[JWKSKey, ...] = ()
    #: monotonic time of the last successful fetch; None: never fetched
    fetched_at: float | None = None
    #: monotonic time of the last attempt, successful or not
    attempted_at: float | None = None
    failed: bool = False
    inflight: asyncio.Task[bool] | None = None


class JWKSCache:
    """The JWKS of every configured URL; one per gateway, so config reloads keep the keys."""

    def __init__(
        self,
        *,
        timeout_s: float = JWKS_TIMEOUT_S,
        max_bytes: int = MAX_JWKS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        #: monotonic seconds; tests pass their own to step through cache lifetimes
        self.clock = clock
        self._docs: dict[str, _Document] = {}

    async def keys_for(
        self,
        url: str,
        kid: str | None,
        session: ClientSession | None,
        *,
        cache_s: float,
        min_refresh_s: float,
    ) -> tuple[JWKSKey, ...]:
        """The keys at `url` with this `kid` (all of them when `kid` is None); () when none has it."""
        doc = self._docs.setdefault(url, _Document())
        now = self.clock()
        if doc.fetched_at is None or now - doc.fetched_at >= cache_s:
            await self._refresh(url, doc, session, min_refresh_s)
            return _matching(doc.keys, kid)
        found = _matching(doc.keys, kid)
        if found or kid is None:
            return found
        # An unknown kid may be a key the issuer rotated in since the last fetch: look once more,
        # but not more often than `min_refresh_s`, so made-up kids cannot hammer the issuer.
        if doc.inflight is not None or doc.attempted_at is None or now - doc.attempted_at >= min_refresh_s:
            await self._refresh(url, doc, session, min_refresh_s)
            return _matching(doc.keys, kid)
        return ()

    async def _refresh(self, url: str, doc: _Document, session: ClientSession | None, min_refresh_s: float) -> None:
        task = doc.inflight
        if task is None:
            recent = doc.attempted_at is not None and self.clock() - doc.attempted_at < min_refresh_s
            if session is None or (doc.failed and recent):
                # A fetch failed a moment ago: answer at once rather than queue calls on a dead issuer.
                raise jwks_unavailable()
            task = doc.inflight = asyncio.create_task(self._fetch(url, doc, session))
            task.add_done_callback(_retrieve)
        # Shielded: a caller that goes away does not cancel the fetch the others are waiting on.
        if not await asyncio.shield(task):
            raise jwks_unavailable()

    async def _fetch(self, url: str, doc: _Document, session: ClientSession) -> bool:
        doc.attempted_at = self.clock()
        try:
            keys = await self._download(url, session)
        except _BadDocument as exc:
            log.warning("the JWKS at %s is unusable (%s); its issuer's tokens are refused", url, exc)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("cannot fetch the JWKS at %s (%s); its issuer's tokens are refused", url, type(exc).__name__)
        else:
            doc.keys = keys
            doc.fetched_at = self.clock()
            doc.failed = False
            return True
        finally:
            doc.inflight = None
        doc.failed = True
        return False

    async def _download(self, url: str, session: ClientSession) -> tuple[JWKSKey, ...]:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        headers = {"Accept": "application/json, application/jwk-set+json"}
        async with session.get(url, timeout=timeout, headers=headers, max_redirects=3) as resp:
            if resp.status != 200:
                raise _BadDocument(f"HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > self.max_bytes:
                raise _BadDocument(f"larger than {self.max_bytes} bytes")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > self.max_bytes:
                    raise _BadDocument(f"larger than {self.max_bytes} bytes")
        return parse_jwks(bytes(body))


def parse_jwks(body: bytes) -> tuple[JWKSKey, ...]:
    """The usable signing keys of a JWKS document; raises ValueError when it is not one."""
    from jwt import PyJWK, PyJWTError

    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _BadDocument("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise _BadDocument("no 'keys' list")
    keys: list[JWKSKey] = []
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in _KEY_TYPES or jwk.get("use", "sig") != "sig":
            continue
        kid, alg = jwk.get("kid"), jwk.get("alg")
        if not isinstance(kid, str | None) or not isinstance(alg, str | None):
            continue
        if any(member in jwk for member in _PRIVATE_MEMBERS):
            log.warning("the JWKS publishes private key material (kid %r); that key is ignored", kid)
            continue
        try:
            default = PyJWK(jwk)
        except PyJWTError:
            continue  # a key type or curve PyJWT cannot use; the others still serve
        key = JWKSKey(kid, jwk, alg)
        key._bound[default.algorithm_name] = default
        keys.append(key)
    return tuple(keys)


def _matching(keys: tuple[JWKSKey, ...], kid: str | None) -> tuple[JWKSKey, ...]:
    if kid is None:
        return keys
    return tuple(k for k in keys if k.kid == kid)


def _retrieve(task: asyncio.Task[bool]) -> None:
    # Mark an exception as seen even when every waiter went away, so asyncio does not log it.
    if not task.cancelled():
        task.exception()
