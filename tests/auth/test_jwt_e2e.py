"""JWT bearer tokens through the running gateway with the official `openai` SDK: mapping, refusals, audit."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from sluicegate.testing import FakeUpstream, serve_in_thread
from tests.auth.idp import AUDIENCE, EC_KEY, ISSUER, RSA_KEY, FakeIdP, claims
from tests.auth.test_jwt import NEGATIVE
from tests.conftest import CANARY_KEY, RunningGateway, assert_openai_error, free_port, run_gateway, wait_for

DOWN_ISSUER = "https://down.example.test"

# The negative suite sends more 401s from one address than are audited one by one by default.
EXTRA = """\
audit:
  auth_failures_per_window: 100000
groups:
  - name: eng
    models: [team-model]
jwt_issuers:
  - name: corp
    issuer: {issuer}
    audience: {audience}
    algorithms: [RS256, ES256]
    jwks_url: {jwks_url}
    consumer_claim: client_id
    groups_claim: groups
    leeway_s: 0
  - name: down
    issuer: {down}
    audience: {audience}
    algorithms: [RS256]
    jwks_url: http://127.0.0.1:{closed_port}/jwks.json
    consumer_claim: client_id
"""


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[FakeIdP, str]]:
    app = FakeIdP()
    app.reset(RSA_KEY, EC_KEY)
    with serve_in_thread(app) as url:
        yield app, url + "/jwks.json"


@pytest.fixture(scope="module")
def gw(
    idp: tuple[FakeIdP, str], upstream_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with run_gateway(tmp_path_factory.mktemp("jwt"), upstream_url, extra_yaml(idp[1])) as gateway:
        yield gateway


def extra_yaml(jwks_url: str) -> str:
    return EXTRA.format(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_url, down=DOWN_ISSUER, closed_port=free_port())


def sdk(gw: RunningGateway, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0)


def chat(gw: RunningGateway, token: str, model: str = "gpt-4o-mini") -> str | None:
    completion = sdk(gw, token).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "echo: hello"}]
    )
    return completion.choices[0].message.content


def audit_event(gw: RunningGateway, error: openai.APIStatusError) -> dict[str, Any]:
    """The audit event of the request that answered with this error."""
    request_id = error.response.headers["x-request-id"]
    events = [e for e in gw.audit(100) if e["request_id"] == request_id]
    assert len(events) == 1, request_id
    return events[0]


def assert_token_kept_secret(gw: RunningGateway, token: str, caplog: pytest.LogCaptureFixture) -> None:
    """The token is in no audit event and no log record; only its signature-free parts could be."""
    signature = token.rsplit(".", 1)[1] or token
    assert token not in json.dumps(gw.audit())
    assert signature not in json.dumps(gw.audit())
    assert token not in caplog.text and signature not in caplog.text


def test_a_token_naming_a_consumer(
    gw: RunningGateway, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = RSA_KEY.sign(claims(client_id="bob"))
    assert chat(gw, token) == "hello"
    # the upstream gets the provider key, never the caller's token
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert token not in str(upstream.requests[-1].headers)
    event = gw.last_audit()
    assert event["consumer"] == "bob" and event["key_id"] == "jwt:corp"
    assert event["decision"] == "allowed" and event["status"] == 200
    # bob's own allow-list applies
    with pytest.raises(openai.PermissionDeniedError):
        chat(gw, token, model="team-model")
    assert_token_kept_secret(gw, token, caplog)


def test_an_ec_signed_token(gw: RunningGateway, upstream: FakeUpstream) -> None:
    assert chat(gw, EC_KEY.sign(claims())) == "hello"
    assert gw.last_audit()["consumer"] == "alice"


def test_a_groups_token_gets_the_groups_models(gw: RunningGateway, upstream: FakeUpstream) -> None:
    token = RSA_KEY.sign(claims(client_id=None, sub="u-777", groups=["eng", "not-configured"]))
    assert [m.id for m in sdk(gw, token).models.list()] == ["team-model"]
    assert chat(gw, token, model="team-model") == "hello"
    event = gw.last_audit()
    assert event["consumer"] == "jwt:corp:u-777" and event["key_id"] == "jwt:corp"
    with pytest.raises(openai.PermissionDeniedError):
        chat(gw, token, model="gpt-4o-mini")


def test_a_space_separated_groups_claim(gw: RunningGateway, upstream: FakeUpstream) -> None:
    token = RSA_KEY.sign(claims(client_id=None, groups="staff eng"))
    assert chat(gw, token, model="team-model") == "hello"


def test_a_token_mapping_to_nothing_configured_is_forbidden(gw: RunningGateway, upstream: FakeUpstream) -> None:
    token = RSA_KEY.sign(claims(client_id="mallory", groups=["not-configured"]))
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(gw, token)
    assert_openai_error(info.value.response, 403, "consumer_not_configured")
    assert upstream.calls == 0
    event = audit_event(gw, info.value)
    assert event["outcome"] == "consumer_not_configured" and event["key_id"] == "jwt:corp"


def test_api_keys_still_work_beside_jwts(gw: RunningGateway, upstream: FakeUpstream) -> None:
    assert chat(gw, gw.keys["alice"]) == "hello"
    assert gw.last_audit()["key_id"].startswith("key_")


@pytest.mark.parametrize("case", list(NEGATIVE), ids=list(NEGATIVE))
def test_negative_suite_over_http(
    gw: RunningGateway, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.DEBUG)
    make_token, code = NEGATIVE[case]
    token = make_token()
    with pytest.raises(openai.AuthenticationError) as info:
        chat(gw, token)
    assert_openai_error(info.value.response, 401, code)
    assert info.value.response.headers["www-authenticate"].startswith("Bearer")
    assert upstream.calls == 0
    event = audit_event(gw, info.value)
    assert event["status"] == 401 and event["decision"] == "denied" and event["outcome"] == code
    assert event["consumer"] is None and event["key_id"] == "jwt"
    if code not in ("jwt_unknown_issuer", "jwt_malformed"):
        assert event["rule"] == "jwt_issuers.corp"  # the issuer was known when the token was refused
    assert_token_kept_secret(gw, token, caplog)


def test_an_unreachable_jwks_answers_503_and_is_audited(gw: RunningGateway, upstream: FakeUpstream) -> None:
    token = RSA_KEY.sign(claims(iss=DOWN_ISSUER))
    with pytest.raises(openai.InternalServerError) as info:
        chat(gw, token)
    assert_openai_error(info.value.response, 503, "jwks_unavailable")
    assert upstream.calls == 0
    assert audit_event(gw, info.value)["outcome"] == "jwks_unavailable"


def test_a_reload_keeps_the_jwks_cache(idp: tuple[FakeIdP, str], upstream_url: str, tmp_path: Path) -> None:
    app, jwks_url = idp
    with run_gateway(tmp_path, upstream_url, extra_yaml(jwks_url), watch_interval_s=0.05) as gw:
        assert chat(gw, RSA_KEY.sign(claims())) == "hello"
        fetches = app.fetches
        text = gw.config_path.read_text()
        gw.config_path.write_text(text.replace("models: [gpt-4o-mini]", "models: [gpt-4o-mini, team-model]"))
        wait_for(lambda: gw.app.reloads == 1)
        # the new config applies (bob may use team-model) and the issuer's keys were not fetched again
        assert chat(gw, RSA_KEY.sign(claims(client_id="bob")), model="team-model") == "hello"
        assert app.fetches == fetches
