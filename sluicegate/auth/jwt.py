"""JWT bearer tokens from an organisation's identity provider: verification and claim mapping.

`JWTVerifier.verify` picks the issuer by the token's `iss`, pins the algorithm to that issuer's
list and key source (HS* only with a shared secret, asymmetric only with a JWKS or public key:
no algorithm confusion), verifies signature and claims with PyJWT, then maps claims to a
consumer name or groups. `check_jwt_issuers` validates the `jwt_issuers` config.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509 import load_pem_x509_certificate

from sluicegate.auth.jwks import JWKSCache
from sluicegate.config.loader import ConfigIssue, PathPart, _check_secret_ref
from sluicegate.errors import Unauthorized
from sluicegate.vault import SecretUnavailable

if TYPE_CHECKING:
    from aiohttp import ClientSession

    from sluicegate.config.model import GatewayConfig, JWTIssuerConfig
    from sluicegate.vault import Vault

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512", "EdDSA"}
)
#: a generous bound (large `groups` claims included); longer bearer values are refused unread
MAX_TOKEN_CHARS = 16 * 1024
_MAX_HEADER_CHARS = 2048
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_GROUP_SEPARATORS = re.compile(r"[\s,]+")

PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey
VerificationKey = jwt.PyJWK | PublicKey | bytes
#: returns the gateway's HTTP session (None before startup)
SessionGetter = Callable[[], "ClientSession | None"]


@dataclass(frozen=True, slots=True)
class JWTIdentity:
    """Who a verified token says the caller is: issuer (config name), subject, consumer and groups."""

    issuer: str
    subject: str | None
    consumer: str | None
    groups: tuple[str, ...]


def looks_like_jwt(token: str) -> bool:
    """Whether a bearer credential has a JWT's shape: three base64url segments, a JSON object header."""
    if token.count(".") != 2:
        return False
    head = token[: token.index(".")]
    if not head or len(head) > _MAX_HEADER_CHARS:
        return False
    try:
        return isinstance(_b64json(head), dict)
    except ValueError:
        return False


def _b64json(segment: str) -> object:
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    return orjson.loads(raw)


def _refusal(code: str, message: str, issuer: str | None = None) -> Unauthorized:
    # Messages are fixed strings and config names: never the token, never a claim value.
    return Unauthorized(message, code=code, rule=f"jwt_issuers.{issuer}" if issuer else None)


def _bad_signature(issuer: str) -> Unauthorized:
    message = f"The token's signature does not verify with the keys of issuer '{issuer}'"
    return _refusal("jwt_bad_signature", message, issuer)


def _malformed(issuer: str | None = None) -> Unauthorized:
    return _refusal("jwt_malformed", "The bearer token is not a well-formed JWT", issuer)


class JWTVerifier:
    """Verifies bearer JWTs against the configured issuers; cheap to build, one per config snapshot.

    JWKS documents live in the `JWKSCache` passed in, which outlives snapshots. HMAC signatures
    are compared by PyJWT with `hmac.compare_digest` (constant time).
    """

    def __init__(
        self,
        issuers: Sequence[JWTIssuerConfig],
        vault: Vault,
        session: SessionGetter,
        *,
        jwks: JWKSCache | None = None,
    ) -> None:
        self.issuers = {i.issuer: i for i in issuers}
        self.vault = vault
        self.session = session
        self.jwks = jwks if jwks is not None else JWKSCache()
        #: parsed static public keys by reference, with the PEM they came from (re-read on rotation)
        self._static: dict[str, tuple[str, PublicKey]] = {}

    async def verify(self, token: str) -> JWTIdentity:
        """The identity a valid token carries; raises `Unauthorized` (or 503 when keys are unreachable)."""
        header, claims = _unverified(token)
        iss = claims.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise _refusal("jwt_unknown_issuer", "The token's issuer (iss) is not trusted by this gateway")
        alg = header.get("alg")
        if not isinstance(alg, str) or not _allows(issuer, alg):
            # The header is unverified input: name the algorithm only when it is one we know.
            known = isinstance(alg, str) and alg in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS | {"none"}
            named = f"'{alg}'" if known else "of the token"
            raise _refusal(
                "jwt_algorithm_not_allowed",
                f"The algorithm {named} is not allowed for issuer '{issuer.name}'",
                issuer.name,
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _malformed(issuer.name)
        keys = await self._keys(issuer, alg, kid)
        verified = _decode(token, issuer, alg, keys)
        return _map_claims(issuer, verified)

    async def _keys(self, issuer: JWTIssuerConfig, alg: str, kid: str | None) -> list[VerificationKey]:
        if alg in HMAC_ALGORITHMS:
            assert issuer.shared_secret is not None  # `_allows` checked it
            return [(await self.vault.aresolve(issuer.shared_secret)).encode()]
        if issuer.public_key is not None:
            return [await self._static_key(issuer.public_key)]
        assert issuer.jwks_url is not None  # `_allows` checked it
        found = await self.jwks.keys_for(
            issuer.jwks_url,
            kid,
            self.session(),
            cache_s=issuer.jwks_cache_s,
            min_refresh_s=issuer.jwks_min_refresh_s,
        )
        if not found:
            raise _refusal(
                "jwt_unknown_kid",
                f"The token's signing key (kid) is not among the keys of issuer '{issuer.name}'",
                issuer.name,
            )
        bound = [b for b in (k.for_algorithm(alg) for k in found) if b is not None]
        if not bound:
            raise _refusal("jwt_bad_signature", f"The token's key cannot verify its algorithm '{alg}'", issuer.name)
        return list(bound)

    async def _static_key(self, ref: str) -> PublicKey:
        pem = await self.vault.aresolve(ref)
        cached = self._static.get(ref)
        if cached is not None and cached[0] == pem:
            return cached[1]
        data = pem.encode()
        try:
            key = load_pem_x509_certificate(data).public_key() if b"CERTIFICATE" in data else load_pem_public_key(data)
        except ValueError:
            key = None
        if not isinstance(key, PublicKey):
            raise SecretUnavailable(f"secret reference {ref} is not a PEM RSA, EC or Ed25519 public key or certificate")
        self._static[ref] = (pem, key)
        return key


def _unverified(token: str) -> tuple[dict[str, object], dict[str, object]]:
    """The header and claims of a token, not yet verified: only to choose the issuer and key."""
    if len(token) > MAX_TOKEN_CHARS or not _SHAPE.fullmatch(token):
        raise _malformed()
    head, payload, _ = token.split(".")
    try:
        header, claims = _b64json(head), _b64json(payload)
    except (ValueError, binascii.Error):
        raise _malformed() from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _malformed()
    return header, claims


def _allows(issuer: JWTIssuerConfig, alg: str) -> bool:
    """Whether `alg` is pinned for this issuer and matches its key source (no `none`, no confusion)."""
    if alg not in issuer.algorithms:
        return False
    if alg in HMAC_ALGORITHMS:
        return issuer.shared_secret is not None
    if alg in ASYMMETRIC_ALGORITHMS:
        return issuer.jwks_url is not None or issuer.public_key is not None
    return False


def _decode(token: str, issuer: JWTIssuerConfig, alg: str, keys: Sequence[VerificationKey]) -> dict[str, object]:
    for key in keys:
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=issuer.leeway_s,
                options={"require": ["exp", "iss"], "enforce_minimum_key_length": True},
            )
        except jwt.InvalidSignatureError:
            continue  # several keys without a kid: try the next one
        except jwt.PyJWTError as exc:
            raise _pyjwt_refusal(exc, issuer.name) from None
        return claims
    raise _refusal(
        "jwt_bad_signature",
        f"The token's signature does not verify with the keys of issuer '{issuer.name}'",
        issuer.name,
    )


def _pyjwt_refusal(exc: jwt.PyJWTError, issuer: str) -> Unauthorized:
    # PyJWT checks the signature before any claim, so a claim error means the signature held.
    if isinstance(exc, jwt.ExpiredSignatureError):
        return _refusal("jwt_expired", "The token has expired", issuer)
    if isinstance(exc, jwt.ImmatureSignatureError):
        return _refusal("jwt_not_yet_valid", "The token is not valid yet (nbf or iat is in the future)", issuer)
    if isinstance(exc, jwt.InvalidAudienceError) or (
        isinstance(exc, jwt.MissingRequiredClaimError) and exc.claim == "aud"
    ):
        return _refusal("jwt_wrong_audience", "The token is not meant for this gateway (aud)", issuer)
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return _refusal("jwt_claim_missing", f"The token lacks the required claim '{exc.claim}'", issuer)
    if isinstance(exc, jwt.InvalidIssuerError):
        return _refusal("jwt_unknown_issuer", "The token's issuer (iss) is not trusted by this gateway", issuer)
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return _refusal("jwt_algorithm_not_allowed", "The token's algorithm is not allowed for this issuer", issuer)
    if isinstance(exc, jwt.InvalidKeyError | jwt.InvalidSignatureError):
        # A key too short for its algorithm is refused as if it did not verify.
        return _refusal(
            "jwt_bad_signature", f"The token's signature does not verify with the keys of issuer '{issuer}'", issuer
        )
    return _malformed(issuer)


def _claim(claims: Mapping[str, object], name: str) -> object:
    """A claim by name, or by dotted path into nested objects (`realm_access.roles`)."""
    if name in claims:
        return claims[name]
    value: object = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def parse_groups(value: object) -> tuple[str, ...]:
    """Group names from a claim: a list of strings, or one space- or comma-separated string."""
    if isinstance(value, str):
        names = _GROUP_SEPARATORS.split(value)
    elif isinstance(value, list):
        names = [v for v in value if isinstance(v, str)]
    else:
        return ()
    return tuple(dict.fromkeys(n.strip() for n in names if n.strip()))


def _map_claims(issuer: JWTIssuerConfig, claims: Mapping[str, object]) -> JWTIdentity:
    consumer: str | None = None
    if issuer.consumer_claim:
        value = _claim(claims, issuer.consumer_claim)
        consumer = value if isinstance(value, str) and value else None
    groups = parse_groups(_claim(claims, issuer.groups_claim)) if issuer.groups_claim else ()
    if consumer is None and not groups:
        wanted = " or ".join(f"'{c}'" for c in (issuer.consumer_claim, issuer.groups_claim) if c)
        raise _refusal("jwt_claim_missing", f"The token lacks the claim {wanted} that names its consumer", issuer.name)
    subject = claims.get("sub")
    return JWTIdentity(issuer.name, subject if isinstance(subject, str) else None, consumer, groups)


def check_jwt_issuers(config: GatewayConfig) -> list[ConfigIssue]:
    """Problems in `jwt_issuers` that pydantic's field checks cannot see, each with its path."""
    issues: list[ConfigIssue] = []
    names: set[str] = set()
    iss_values: set[str] = set()
    for i, issuer in enumerate(config.jwt_issuers):
        at: tuple[PathPart, ...] = ("jwt_issuers", i)
        if issuer.name in names:
            issues.append(ConfigIssue((*at, "name"), f"duplicate JWT issuer name '{issuer.name}'"))
        names.add(issuer.name)
        if issuer.issuer in iss_values:
            issues.append(ConfigIssue((*at, "issuer"), f"another JWT issuer already has the issuer '{issuer.issuer}'"))
        iss_values.add(issuer.issuer)
        audiences = [issuer.audience] if isinstance(issuer.audience, str) else issuer.audience
        if not audiences or not all(audiences):
            issues.append(ConfigIssue((*at, "audience"), "name at least one audience, none of them empty"))
        issues.extend(_check_algorithms(issuer, at))
        if issuer.jwks_url is not None and issuer.public_key is not None:
            issues.append(ConfigIssue((*at, "public_key"), "set jwks_url or public_key, not both"))
        if issuer.jwks_url is not None:
            url = urlsplit(issuer.jwks_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                issues.append(ConfigIssue((*at, "jwks_url"), f"not an http(s) URL: '{issuer.jwks_url}'"))
            elif url.scheme == "http" and url.hostname not in ("localhost", "127.0.0.1", "::1"):
                issues.append(
                    ConfigIssue((*at, "jwks_url"), "plain http: the keys can be replaced in transit", warning=True)
                )
        for field in ("public_key", "shared_secret"):
            ref = getattr(issuer, field)
            if ref is not None:
                issues.extend(_check_secret_ref(ref, (*at, field), config.vault))
        if not issuer.consumer_claim and not issuer.groups_claim:
            issues.append(ConfigIssue(at, "set consumer_claim or groups_claim: a token must map to a consumer"))
        if issuer.groups_claim and not config.groups:
            issues.append(ConfigIssue((*at, "groups_claim"), "no groups are configured to map to", warning=True))
    return issues


def _check_algorithms(issuer: JWTIssuerConfig, at: tuple[PathPart, ...]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for j, alg in enumerate(issuer.algorithms):
        where = (*at, "algorithms", j)
        if alg.lower() == "none":
            issues.append(ConfigIssue(where, "the 'none' algorithm is never accepted"))
        elif alg in HMAC_ALGORITHMS:
            if issuer.shared_secret is None:
                issues.append(ConfigIssue(where, f"'{alg}' needs a shared_secret reference"))
        elif alg in ASYMMETRIC_ALGORITHMS:
            if issuer.jwks_url is None and issuer.public_key is None:
                issues.append(ConfigIssue(where, f"'{alg}' needs a jwks_url or a public_key reference"))
        else:
            known = ", ".join(sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS))
            issues.append(ConfigIssue(where, f"unknown algorithm '{alg}' (known: {known})"))
    if issuer.shared_secret is not None and not HMAC_ALGORITHMS.intersection(issuer.algorithms):
        issues.append(ConfigIssue((*at, "shared_secret"), "unused: no HS* algorithm is listed", warning=True))
    keyed = issuer.jwks_url is not None or issuer.public_key is not None
    if keyed and not ASYMMETRIC_ALGORITHMS.intersection(issuer.algorithms):
        issues.append(
            ConfigIssue((*at, "algorithms"), "no asymmetric algorithm uses the jwks_url or public_key", warning=True)
        )
    return issues
