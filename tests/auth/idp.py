"""A fake identity provider for the JWT tests: signing keys, a counting JWKS endpoint, token makers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example.test/realms/corp"
AUDIENCE = "sluicegate"


@dataclass
class SigningKey:
    """A private key the fake IdP signs with, published (or not) under `kid`."""

    kid: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    alg: str

    def jwk(self, **extra: Any) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data: dict[str, Any] = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", **extra}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], alg: str | None = None, **header: Any) -> str:
        headers = {"kid": self.kid, **header}
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=headers)


RSA_KEY = SigningKey("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
RSA_ROTATED = SigningKey("rsa-2", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
#: never published: signs the "wrong key" tokens
ATTACKER_KEY = SigningKey("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
EC_KEY = SigningKey("ec-1", ec.generate_private_key(ec.SECP256R1()), "ES256")


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for `ISSUER` and `AUDIENCE`, mapping to consumer `alice`; None drops a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u-123",
        "iat": now,
        "exp": now + 600,
        "client_id": "alice",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj).encode())


def unsigned_token(payload: dict[str, Any], alg: str = "none") -> str:
    """A token with `alg: none` and an empty signature."""
    return f"{_segment({'alg': alg, 'typ': 'JWT'})}.{_segment(payload)}."


def hmac_token(payload: dict[str, Any], secret: bytes, **header: Any) -> str:
    """An HS256 token signed with any bytes (PyJWT refuses to sign with a PEM key, an attacker does not)."""
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT', **header})}.{_segment(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


class FakeIdP:
    """An ASGI app serving `jwks` as JSON at any path; counts the fetches; `status`/`body` script failures."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, *keys: SigningKey) -> None:
        self.jwks: dict[str, Any] = {"keys": [k.jwk() for k in keys]}
        self.fetches = 0
        self.status = 200
        self.body: bytes | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.fetches += 1
        body = self.body if self.body is not None else json.dumps(self.jwks).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
