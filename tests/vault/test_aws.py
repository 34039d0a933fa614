"""`aws-sm://` against a real moto server on loopback: resolution, JSON fields, failures, rotation."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from sluicegate.config.loader import parse_config
from sluicegate.config.model import AwsSecretsConfig, VaultConfig
from sluicegate.testing import FakeUpstream
from sluicegate.vault import SecretUnavailable, Vault
from tests.conftest import assert_openai_error, wait_for
from tests.vault.conftest import BODY, CHAT, bearer, gateway_on, provider_config

CANARY = "sk-aws-canary-7e6d5c4b3a29"
ROTATED = "sk-aws-canary-rotated-1f2e3d"
REGION = "eu-west-1"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fake credentials for moto; never a real account (no profile or role is consulted).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


class _Admin:
    """The test's own Secrets Manager calls, kept out of the captured logs the canary check reads."""

    def __init__(self, moto_url: str) -> None:
        self.client = boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto_url)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def call(**kwargs: Any) -> Any:
            logging.disable(logging.CRITICAL)
            try:
                return method(**kwargs)
            finally:
                logging.disable(logging.NOTSET)

        return call


def _sm(moto_url: str) -> _Admin:
    return _Admin(moto_url)


def _name() -> str:
    return f"sluicegate/test/{uuid.uuid4().hex[:8]}"


def _vault(moto_url: str) -> Vault:
    return Vault(VaultConfig(aws=AwsSecretsConfig(region=REGION, endpoint_url=moto_url)))


async def test_plain_and_json_field_secrets(moto_url: str) -> None:
    plain, doc = _name(), _name()
    _sm(moto_url).create_secret(Name=plain, SecretString=CANARY)
    _sm(moto_url).create_secret(Name=doc, SecretString=json.dumps({"api_key": CANARY, "org": "o-1"}))
    vault = _vault(moto_url)
    assert await vault.aresolve(f"aws-sm://{plain}") == CANARY
    assert await vault.aresolve(f"aws-sm://{doc}#api_key") == CANARY
    assert await vault.aresolve(f"aws-sm://{doc}#org") == "o-1"


@pytest.mark.parametrize(
    ("suffix", "message"),
    [("#missing", "no text field 'missing'"), ("", "ResourceNotFoundException")],
    ids=["missing-field", "missing-secret"],
)
async def test_failures_name_the_reference_never_a_value(moto_url: str, suffix: str, message: str) -> None:
    name = _name()
    if suffix:
        _sm(moto_url).create_secret(Name=name, SecretString=json.dumps({"api_key": CANARY}))
    else:
        name += "-absent"
    with pytest.raises(SecretUnavailable, match=message) as info:
        await _vault(moto_url).aresolve(f"aws-sm://{name}{suffix}")
    assert f"aws-sm://{name}" in str(info.value) and CANARY not in str(info.value)


async def test_unreachable_endpoint_fails_closed(unused_tcp_port: int) -> None:
    vault = _vault(f"http://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(SecretUnavailable, match=r"aws-sm://x cannot be read \(EndpointConnectionError\)"):
        await vault.aresolve("aws-sm://x")


def test_config_check_needs_a_vault_aws_block() -> None:
    text = provider_config("http://127.0.0.1:1", "aws-sm://prod/openai#api_key")
    snapshot, issues = parse_config(text)
    assert snapshot is None and any("vault.aws" in str(i) for i in issues)
    snapshot, issues = parse_config(text + "vault:\n  aws: {region: eu-west-1}\n")
    assert snapshot is not None, [str(i) for i in issues]


def test_gateway_uses_the_aws_key_and_picks_up_rotation_without_restart(
    tmp_path: Path,
    moto_url: str,
    any_key_upstream: tuple[FakeUpstream, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream, upstream_url = any_key_upstream
    name = _name()
    sm = _sm(moto_url)
    sm.create_secret(Name=name, SecretString=json.dumps({"api_key": CANARY}))
    vault = f"""\
        vault:
          cache_ttl_s: 0.2
          aws: {{region: {REGION}, endpoint_url: "{moto_url}"}}
        """
    seen: list[str] = []
    with (
        caplog.at_level(logging.DEBUG),
        gateway_on(tmp_path, provider_config(upstream_url, f"aws-sm://{name}#api_key", vault=vault)) as gw,
        gw.client() as c,
    ):
        upstream.required_key = CANARY
        resp = c.post(CHAT, json=BODY)
        assert resp.status_code == 200, resp.text
        assert bearer(upstream) == CANARY
        seen.append(resp.text)
        sm.put_secret_value(SecretId=name, SecretString=json.dumps({"api_key": ROTATED}))
        upstream.required_key = ROTATED

        def rotated() -> bool:
            r = c.post(CHAT, json=BODY)
            seen.append(r.text)
            return r.status_code == 200

        wait_for(rotated, timeout=10)
        assert bearer(upstream) == ROTATED
        # A secret that disappears fails the call closed: 503, the reference named, no upstream call.
        sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        wait_for(lambda: c.post(CHAT, json=BODY).status_code == 503, timeout=10)
        calls = upstream.calls
        resp = c.post(CHAT, json=BODY)
        error = assert_openai_error(resp, 503, "credential_unavailable")
        assert f"aws-sm://{name}" in error["message"]
        assert upstream.calls == calls
        seen.append(resp.text + str(gw.audit()))
    text = "\n".join(seen) + caplog.text
    assert CANARY not in text and ROTATED not in text
