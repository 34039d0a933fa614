"""The JWT verifier against a JWKS endpoint the tests serve: keys, caching, refetch, the negative suite."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from sluicegate.auth.jwks import JWKSCache
from sluicegate.auth.jwt import JWTIdentity, JWTVerifier, looks_like_jwt, parse_groups
from sluicegate.config.loader import parse_config
from sluicegate.config.model import JWTIssuerConfig
from sluicegate.errors import ServiceUnavailable, Unauthorized
from sluicegate.testing import serve_in_thread
from sluicegate.vault import Vault
from tests.auth.idp import (
    ATTACKER_KEY,
    AUDIENCE,
    EC_KEY,
    ISSUER,
    RSA_KEY,
    RSA_ROTATED,
    FakeIdP,
    SigningKey,
    claims,
    hmac_token,
    unsigned_token,
)
from tests.conftest import free_port

#: long enough for HS256 (32 bytes): shorter secrets are refused
SHARED_SECRET = "s3cret-for-tests-0123456789abcdef-xyz"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def idp_server() -> Iterator[tuple[FakeIdP, str]]:
    app = FakeIdP()
    with serve_in_thread(app) as url:
        yield app, url + "/jwks.json"


@pytest.fixture
def idp(idp_server: tuple[FakeIdP, str]) -> FakeIdP:
    app, _ = idp_server
    app.reset(RSA_KEY, EC_KEY)
    return app


@pytest.fixture
def jwks_url(idp_server: tuple[FakeIdP, str]) -> str:
    return idp_server[1]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return Clock()


def issuer(jwks_url: str | None, **overrides: Any) -> JWTIssuerConfig:
    fields: dict[str, Any] = {
        "name": "corp",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "algorithms": ["RS256", "ES256"],
        "jwks_url": jwks_url,
        "consumer_claim": "client_id",
        "groups_claim": "groups",
        "leeway_s": 0,
        "jwks_min_refresh_s": 10,
        "jwks_cache_s": 300,
    }
    fields.update(overrides)
    return JWTIssuerConfig(**fields)


@pytest.fixture
def make(session: aiohttp.ClientSession, clock: Clock) -> Callable[..., JWTVerifier]:
    cache = JWKSCache(clock=clock)

    def make(*issuers: JWTIssuerConfig, jwks: JWKSCache | None = None) -> JWTVerifier:
        return JWTVerifier(issuers, Vault(), lambda: session, jwks=jwks or cache)

    return make


async def refused(verifier: JWTVerifier, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        await verifier.verify(token)
    # a refusal never echoes the token, nor any part of it
    for part in token.split("."):
        if part:
            assert part not in info.value.message
    return info.value


async def test_rs256_token_from_the_jwks(idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier]) -> None:
    token = RSA_KEY.sign(claims(groups=["eng", "ops"]))
    identity = await make(issuer(jwks_url)).verify(token)
    assert identity == JWTIdentity(issuer="corp", subject="u-123", consumer="alice", groups=("eng", "ops"))
    assert idp.fetches == 1


async def test_es256_token_from_the_jwks(idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier]) -> None:
    identity = await make(issuer(jwks_url)).verify(EC_KEY.sign(claims()))
    assert identity.consumer == "alice" and identity.groups == ()


async def test_a_jwk_without_alg_verifies_any_pinned_algorithm_of_its_type(
    idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier]
) -> None:
    verifier = make(issuer(jwks_url, algorithms=["RS256", "PS256"]))
    assert (await verifier.verify(RSA_KEY.sign(claims(), alg="PS256"))).consumer == "alice"


async def test_a_jwk_with_alg_verifies_only_that_algorithm(
    idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier]
) -> None:
    idp.jwks = {"keys": [RSA_KEY.jwk(alg="RS256")]}
    verifier = make(issuer(jwks_url, algorithms=["RS256", "PS256"]))
    assert (await verifier.verify(RSA_KEY.sign(claims()))).consumer == "alice"
    error = await refused(verifier, RSA_KEY.sign(claims(), alg="PS256"))
    assert error.code == "jwt_bad_signature"


async def test_the_jwks_is_cached_until_it_expires(
    idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier], clock: Clock
) -> None:
    verifier = make(issuer(jwks_url, jwks_cache_s=300))
    for _ in range(3):
        await verifier.verify(RSA_KEY.sign(claims()))
    assert idp.fetches == 1
    clock.now += 299
    await verifier.verify(RSA_KEY.sign(claims()))
    assert idp.fetches == 1
    clock.now += 2
    await verifier.verify(RSA_KEY.sign(claims()))
    assert idp.fetches == 2


async def test_the_cache_outlives_the_verifier(idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier]) -> None:
    # a config reload builds a new verifier; the shared cache keeps the keys
    await make(issuer(jwks_url)).verify(RSA_KEY.sign(claims()))
    await make(issuer(jwks_url)).verify(RSA_KEY.sign(claims()))
    assert idp.fetches == 1
    await make(issuer(jwks_url), jwks=JWKSCache()).verify(RSA_KEY.sign(claims()))
    assert idp.fetches == 2


async def test_unknown_kid_refetches_at_most_once_per_min_refresh(
    idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier], clock: Clock
) -> None:
    verifier = make(issuer(jwks_url, jwks_min_refresh_s=10))
    await verifier.verify(RSA_KEY.sign(claims()))
    assert idp.fetches == 1
    # the issuer rotates a new key in; a token signed with it arrives within min_refresh_s: refused
    idp.jwks["keys"].append(RSA_ROTATED.jwk())
    clock.now += 5
    assert (await refused(verifier, RSA_ROTATED.sign(claims()))).code == "jwt_unknown_kid"
    assert idp.fetches == 1
    # past min_refresh_s, the unknown kid triggers one refetch, and the new key verifies
    clock.now += 6
    assert (await verifier.verify(RSA_ROTATED.sign(claims()))).consumer == "alice"
    assert idp.fetches == 2
    # made-up kids refetch at most once per min_refresh_s
    stranger = SigningKey("made-up", RSA_ROTATED.private, "RS256")
    clock.now += 11
    for _ in range(5):
        assert (await refused(verifier, stranger.sign(claims()))).code == "jwt_unknown_kid"
    assert idp.fetches == 3
    clock.now += 11
    assert (await refused(verifier, stranger.sign(claims()))).code == "jwt_unknown_kid"
    assert idp.fetches == 4


async def test_concurrent_fetches_are_coalesced(idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier]) -> None:
    verifier = make(issuer(jwks_url))
    tokens = [RSA_KEY.sign(claims(sub=f"u-{i}")) for i in range(20)]
    identities = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert {i.subject for i in identities} == {f"u-{i}" for i in range(20)}
    assert idp.fetches == 1


@pytest.mark.parametrize(
    "failure",
    ["http_500", "not_json", "no_keys_list", "too_large"],
)
async def test_an_unusable_jwks_fails_closed(
    idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier], clock: Clock, failure: str
) -> None:
    if failure == "http_500":
        idp.status = 500
    elif failure == "not_json":
        idp.body = b"<html>login</html>"
    elif failure == "no_keys_list":
        idp.body = b'{"keys": {}}'
    else:
        idp.body = b'{"keys": [], "pad": "' + b"x" * (300 * 1024) + b'"}'
    verifier = make(issuer(jwks_url, jwks_min_refresh_s=10))
    token = RSA_KEY.sign(claims())
    with pytest.raises(ServiceUnavailable) as info:
        await verifier.verify(token)
    assert info.value.code == "jwks_unavailable" and info.value.status == 503
    # a failure just now answers at once, without asking the issuer again
    with pytest.raises(ServiceUnavailable):
        await verifier.verify(token)
    assert idp.fetches == 1
    # once the issuer is back and min_refresh_s has passed, tokens verify again
    idp.reset(RSA_KEY)
    clock.now += 10
    assert (await verifier.verify(token)).consumer == "alice"


async def test_an_unreachable_jwks_fails_closed(make: Callable[..., JWTVerifier]) -> None:
    verifier = make(issuer(f"http://127.0.0.1:{free_port()}/jwks.json"))
    with pytest.raises(ServiceUnavailable) as info:
        await verifier.verify(RSA_KEY.sign(claims()))
    assert info.value.code == "jwks_unavailable"


async def test_no_http_session_yet_fails_closed(jwks_url: str) -> None:
    verifier = JWTVerifier([issuer(jwks_url)], Vault(), lambda: None)
    with pytest.raises(ServiceUnavailable):
        await verifier.verify(RSA_KEY.sign(claims()))


async def test_private_symmetric_and_encryption_keys_in_a_jwks_are_ignored(
    idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier]
) -> None:
    assert isinstance(RSA_KEY.private, rsa.RSAPrivateKey)
    leaked = RSAAlgorithm.to_jwk(RSA_KEY.private, as_dict=True)
    idp.jwks = {
        "keys": [
            {**leaked, "kid": "rsa-1"},
            {"kty": "oct", "kid": "rsa-1", "k": "c2VjcmV0"},
            RSA_KEY.jwk(use="enc"),
        ]
    }
    verifier = make(issuer(jwks_url, jwks_min_refresh_s=0))
    assert (await refused(verifier, RSA_KEY.sign(claims()))).code == "jwt_unknown_kid"


def _attacker_jwk_header() -> dict[str, Any]:
    return {"jwk": ATTACKER_KEY.jwk(), "kid": "attacker"}


#: name -> (token maker, expected code); each is refused whatever else holds
NEGATIVE: dict[str, tuple[Callable[[], str], str]] = {
    "alg_none": (lambda: unsigned_token(claims()), "jwt_algorithm_not_allowed"),
    "alg_none_capitalised": (lambda: unsigned_token(claims(), alg="None"), "jwt_algorithm_not_allowed"),
    "hs256_signed_with_the_rsa_public_key": (
        lambda: hmac_token(claims(), RSA_KEY.public_pem(), kid="rsa-1"),
        "jwt_algorithm_not_allowed",
    ),
    "algorithm_not_pinned": (lambda: RSA_KEY.sign(claims(), alg="RS512"), "jwt_algorithm_not_allowed"),
    "wrong_key_same_kid": (lambda: ATTACKER_KEY.sign(claims()), "jwt_bad_signature"),
    "embedded_jwk_header": (
        lambda: ATTACKER_KEY.sign(claims(), **_attacker_jwk_header()),
        "jwt_unknown_kid",
    ),
    "expired": (lambda: RSA_KEY.sign(claims(exp=_now() - 60, iat=_now() - 600)), "jwt_expired"),
    "not_yet_valid": (lambda: RSA_KEY.sign(claims(nbf=_now() + 600)), "jwt_not_yet_valid"),
    "wrong_audience": (lambda: RSA_KEY.sign(claims(aud="someone-else")), "jwt_wrong_audience"),
    "no_audience": (lambda: RSA_KEY.sign(claims(aud=None)), "jwt_wrong_audience"),
    "wrong_issuer": (lambda: RSA_KEY.sign(claims(iss="https://evil.example")), "jwt_unknown_issuer"),
    "no_issuer": (lambda: RSA_KEY.sign(claims(iss=None)), "jwt_unknown_issuer"),
    "unknown_kid": (lambda: SigningKey("nobody", RSA_KEY.private, "RS256").sign(claims()), "jwt_unknown_kid"),
    "missing_mapped_claim": (lambda: RSA_KEY.sign(claims(client_id=None)), "jwt_claim_missing"),
    "mapped_claim_not_a_string": (lambda: RSA_KEY.sign(claims(client_id=["alice"])), "jwt_claim_missing"),
    "no_exp": (lambda: RSA_KEY.sign(claims(exp=None)), "jwt_claim_missing"),
    "tampered_payload": (lambda: _tampered(RSA_KEY.sign(claims(client_id="bob"))), "jwt_bad_signature"),
    "payload_not_json": (lambda: "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", "jwt_malformed"),
}


def _now() -> int:
    return int(time.time())


def _tampered(token: str) -> str:
    """The token's header and signature around another valid token's claims (alice instead of bob)."""
    head, _, sig = token.split(".")
    swapped = RSA_KEY.sign(claims(client_id="alice")).split(".")[1]
    return f"{head}.{swapped}.{sig}"


@pytest.mark.parametrize("case", list(NEGATIVE), ids=list(NEGATIVE))
async def test_negative_suite(idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier], case: str) -> None:
    make_token, code = NEGATIVE[case]
    error = await refused(make(issuer(jwks_url)), make_token())
    assert error.code == code
    assert error.status == 401


async def test_static_public_key(tmp_path: Path, make: Callable[..., JWTVerifier]) -> None:
    pem = tmp_path / "idp.pem"
    pem.write_bytes(RSA_KEY.public_pem())
    verifier = make(issuer(None, public_key=f"file://{pem}"))
    assert (await verifier.verify(RSA_KEY.sign(claims()))).consumer == "alice"
    assert (await refused(verifier, ATTACKER_KEY.sign(claims()))).code == "jwt_bad_signature"
    confused = hmac_token(claims(), RSA_KEY.public_pem())
    assert (await refused(verifier, confused)).code == "jwt_algorithm_not_allowed"


async def test_hmac_is_never_keyed_by_a_public_key_even_if_config_checks_were_skipped(
    tmp_path: Path, make: Callable[..., JWTVerifier]
) -> None:
    # `check_jwt_issuers` refuses this config; the verifier refuses the confusion on its own too
    pem = tmp_path / "idp.pem"
    pem.write_bytes(RSA_KEY.public_pem())
    verifier = make(issuer(None, algorithms=["RS256", "HS256"], public_key=f"file://{pem}"))
    confused = hmac_token(claims(), RSA_KEY.public_pem())
    assert (await refused(verifier, confused)).code == "jwt_algorithm_not_allowed"


async def test_static_key_that_is_not_a_pem_fails_closed(tmp_path: Path, make: Callable[..., JWTVerifier]) -> None:
    pem = tmp_path / "idp.pem"
    pem.write_text("not a key")
    verifier = make(issuer(None, public_key=f"file://{pem}"))
    with pytest.raises(ServiceUnavailable):
        await verifier.verify(RSA_KEY.sign(claims()))


async def test_shared_secret(monkeypatch: pytest.MonkeyPatch, make: Callable[..., JWTVerifier]) -> None:
    monkeypatch.setenv("JWT_TEST_SECRET", SHARED_SECRET)
    verifier = make(issuer(None, algorithms=["HS256"], shared_secret="env://JWT_TEST_SECRET"))
    assert (await verifier.verify(hmac_token(claims(), SHARED_SECRET.encode()))).consumer == "alice"
    assert (await refused(verifier, hmac_token(claims(), b"x" * 40))).code == "jwt_bad_signature"
    # an asymmetric token never reaches an HMAC-only issuer
    assert (await refused(verifier, RSA_KEY.sign(claims()))).code == "jwt_algorithm_not_allowed"


async def test_a_short_shared_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch, make: Callable[..., JWTVerifier]
) -> None:
    monkeypatch.setenv("JWT_TEST_SECRET", "short")
    verifier = make(issuer(None, algorithms=["HS256"], shared_secret="env://JWT_TEST_SECRET"))
    assert (await refused(verifier, hmac_token(claims(), b"short"))).code == "jwt_bad_signature"


async def test_groups_claim_forms_and_nested_claims(
    idp: FakeIdP, jwks_url: str, make: Callable[..., JWTVerifier]
) -> None:
    verifier = make(issuer(jwks_url, consumer_claim=None, groups_claim="realm_access.roles"))
    token = RSA_KEY.sign(claims(client_id=None, realm_access={"roles": ["eng", "ops"]}))
    identity = await verifier.verify(token)
    assert identity.consumer is None and identity.groups == ("eng", "ops")
    empty = RSA_KEY.sign(claims(client_id=None, realm_access={"roles": []}))
    assert (await refused(verifier, empty)).code == "jwt_claim_missing"


@pytest.mark.parametrize(
    ("value", "groups"),
    [
        (["eng", "ops", "eng", 3], ("eng", "ops")),
        ("eng ops", ("eng", "ops")),
        ("eng, ops,,qa", ("eng", "ops", "qa")),
        ("", ()),
        ({"eng": True}, ()),
        (None, ()),
    ],
)
def test_parse_groups(value: object, groups: tuple[str, ...]) -> None:
    assert parse_groups(value) == groups


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (RSA_KEY.sign(claims()), True),
        (unsigned_token(claims()), True),
        ("sg-3f9a0c1d2e4b5a6978c0d1e2f3a4b5c6", False),
        ("sk-live.abc.def", False),
        ("a.b.c", False),
        ("eyJhbGciOiJSUzI1NiJ9.e30", False),
        ("", False),
    ],
)
def test_looks_like_jwt(token: str, expected: bool) -> None:
    assert looks_like_jwt(token) is expected


BASE = """\
providers:
  - {name: p, type: openai_compatible, base_url: "http://127.0.0.1:9/v1"}
models:
  - {name: m, provider: p}
groups:
  - {name: eng, models: [m]}
"""


@pytest.mark.parametrize(
    ("overrides", "where", "message"),
    [
        (["algorithms: [RS256, none]"], "jwt_issuers[0].algorithms[1]", "never accepted"),
        (["algorithms: [RS256, XS999]"], "jwt_issuers[0].algorithms[1]", "unknown algorithm"),
        (["algorithms: [RS256, HS256]"], "jwt_issuers[0].algorithms[1]", "needs a shared_secret"),
        (["algorithms: [HS256]", "shared_secret: plain-text"], "jwt_issuers[0].shared_secret", "secret reference"),
        (["algorithms: [ES256]", "jwks_url: null"], "jwt_issuers[0].algorithms[0]", "needs a jwks_url or a public_key"),
        (["public_key: file:///etc/idp.pem"], "jwt_issuers[0].public_key", "not both"),
        (["jwks_url: ftp://idp.example/jwks"], "jwt_issuers[0].jwks_url", "not an http(s) URL"),
        (["groups_claim: null", "consumer_claim: null"], "jwt_issuers[0]", "set consumer_claim or groups_claim"),
        (["audience: []"], "jwt_issuers[0].audience", "at least one audience"),
    ],
)
def test_config_errors(overrides: list[str], where: str, message: str) -> None:
    text = BASE + textwrap.dedent(
        """\
        jwt_issuers:
          - name: corp
            issuer: https://idp.example
            audience: sluicegate
            algorithms: [RS256]
            jwks_url: https://idp.example/jwks
            groups_claim: groups
        """
    )
    # the case's keys override the defaults above (YAML keeps the last duplicate)
    text += "".join(f"    {line}\n" for line in overrides)
    snapshot, issues = parse_config(text)
    assert snapshot is None
    errors = [i for i in issues if not i.warning]
    assert any(i.where() == where and message in i.message for i in errors), [str(i) for i in issues]


def test_duplicate_issuers_and_a_valid_config() -> None:
    good = """\
jwt_issuers:
  - {name: a, issuer: "https://one", audience: x, algorithms: [RS256], jwks_url: "https://one/jwks", groups_claim: g}
"""
    snapshot, issues = parse_config(BASE + good)
    assert snapshot is not None and not [i for i in issues if not i.warning], [str(i) for i in issues]
    twice = good + good.splitlines()[1] + "\n"
    _, issues = parse_config(BASE + twice)
    wheres = {i.where() for i in issues if not i.warning}
    assert {"jwt_issuers[1].name", "jwt_issuers[1].issuer"} <= wheres


def test_the_docs_example_is_a_valid_config() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "jwt.md").read_text()
    block = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    base = """\
providers:
  - {name: p, type: openai_compatible, base_url: "https://llm.example/v1"}
models:
  - {name: gpt-4o, provider: p}
  - {name: team-model, provider: p}
consumers:
  - {name: my-app, models: [gpt-4o]}
"""
    snapshot, issues = parse_config(base + block)
    assert snapshot is not None and not issues, [str(i) for i in issues]
    assert snapshot.config.jwt_issuers[0].groups_claim == "groups"
