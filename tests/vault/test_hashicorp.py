"""`vault://path#field` through hvac, against a FAKE HashiCorp Vault KV v2 API on loopback.

No Vault server can be installed here (Debian ships no `vault` package and nothing may be
downloaded), so `FakeKV` below serves the documented KV v2 read endpoint: `GET
/v1/<mount>/data/<path>` checking `X-Vault-Token`, answering `{"data": {"data": ..., "metadata": ...}}`.
The client side is the real `hvac`, driven by the real gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from sluicegate.config.loader import parse_config
from sluicegate.config.model import HashicorpVaultConfig, VaultConfig
from sluicegate.testing import FakeUpstream, serve_in_thread
from sluicegate.types import Receive, Scope, Send
from sluicegate.vault import SecretUnavailable, Vault
from tests.conftest import assert_openai_error, wait_for
from tests.vault.conftest import BODY, CHAT, bearer, gateway_on, provider_config

CANARY = "sk-hcv-canary-4b3a2918f7e6"
ROTATED = "sk-hcv-canary-rotated-5c6d7e"
TOKEN = "hvs.test-token-a1b2c3"


class FakeKV:
    """The KV v2 read endpoint of HashiCorp Vault, in memory (a fake: see the module docstring)."""

    def __init__(self, mount: str = "secret") -> None:
        self.mount = mount
        self.token = TOKEN
        self.secrets: dict[str, dict[str, str]] = {}
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append(headers)
        prefix = f"/v1/{self.mount}/data/"
        body: dict[str, object]
        if headers.get("x-vault-token") != self.token:
            status, body = 403, {"errors": ["permission denied"]}
        elif scope["method"] != "GET" or not scope["path"].startswith(prefix):
            status, body = 404, {"errors": []}
        elif (data := self.secrets.get(scope["path"].removeprefix(prefix))) is None:
            status, body = 404, {"errors": []}
        else:
            metadata = {"created_time": "2026-01-01T00:00:00Z", "deletion_time": "", "destroyed": False, "version": 1}
            status, body = 200, {"request_id": "r-1", "data": {"data": data, "metadata": metadata}}
        raw = orjson.dumps(body)
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": raw})


@pytest.fixture(scope="module")
def kv_server() -> Iterator[tuple[FakeKV, str]]:
    kv = FakeKV()
    with serve_in_thread(kv) as url:
        yield kv, url


@pytest.fixture
def kv(kv_server: tuple[FakeKV, str], monkeypatch: pytest.MonkeyPatch) -> tuple[FakeKV, str]:
    app, url = kv_server
    app.secrets.clear()
    app.seen.clear()
    app.token = TOKEN
    monkeypatch.setenv("TEST_VAULT_TOKEN", TOKEN)
    return app, url


def _vault(url: str, namespace: str | None = None) -> Vault:
    config = HashicorpVaultConfig(url=url, token="env://TEST_VAULT_TOKEN", namespace=namespace)
    return Vault(VaultConfig(hashicorp=config))


async def test_reads_a_field_or_the_only_field(kv: tuple[FakeKV, str]) -> None:
    app, url = kv
    app.secrets["team/openai"] = {"api_key": CANARY, "org": "o-1"}
    app.secrets["team/single"] = {"key": CANARY}
    vault = _vault(url, namespace="team-a")
    assert await vault.aresolve("vault://team/openai#api_key") == CANARY
    assert await vault.aresolve("vault://team/single") == CANARY
    assert app.seen[-1]["x-vault-token"] == TOKEN and app.seen[-1]["x-vault-namespace"] == "team-a"
    with pytest.raises(SecretUnavailable, match="has 2 fields; name one with #field"):
        await vault.aresolve("vault://team/openai")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("vault://team/absent#api_key", r"vault://team/absent cannot be read \(InvalidPath\)"),
        ("vault://team/openai#nope", "no text field 'nope'"),
        ("vault://team/openai#api_key", r"vault://team/openai cannot be read \(Forbidden\)"),
    ],
    ids=["missing-path", "missing-field", "bad-token"],
)
async def test_failures_name_the_reference_never_a_value(kv: tuple[FakeKV, str], ref: str, message: str) -> None:
    app, url = kv
    app.secrets["team/openai"] = {"api_key": CANARY}
    if "Forbidden" in message:
        app.token = "hvs.another-token"
    with pytest.raises(SecretUnavailable, match=message) as info:
        await _vault(url).aresolve(ref)
    assert CANARY not in str(info.value) and TOKEN not in str(info.value)


async def test_unreachable_vault_fails_closed(unused_tcp_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_VAULT_TOKEN", TOKEN)
    with pytest.raises(SecretUnavailable, match=r"vault://a cannot be read \(ConnectionError\)"):
        await _vault(f"http://127.0.0.1:{unused_tcp_port}").aresolve("vault://a#b")


def test_config_check_needs_a_vault_hashicorp_block() -> None:
    text = provider_config("http://127.0.0.1:1", "vault://team/openai#api_key")
    snapshot, issues = parse_config(text)
    assert snapshot is None and any("vault.hashicorp" in str(i) for i in issues)
    block = "vault:\n  hashicorp: {url: 'http://127.0.0.1:8200', token: %s}\n"
    snapshot, issues = parse_config(text + block % "file:///run/vault-token")
    assert snapshot is not None, [str(i) for i in issues]
    snapshot, issues = parse_config(text + block % "vault://token#t")
    assert snapshot is None and any("cannot itself live in Vault" in str(i) for i in issues)


def test_gateway_uses_the_vault_key_and_picks_up_a_new_version(
    tmp_path: Path, kv: tuple[FakeKV, str], any_key_upstream: tuple[FakeUpstream, str], caplog: pytest.LogCaptureFixture
) -> None:
    app, kv_url = kv
    upstream, upstream_url = any_key_upstream
    app.secrets["team/openai"] = {"api_key": CANARY}
    vault = f"""\
        vault:
          cache_ttl_s: 0.2
          hashicorp: {{url: "{kv_url}", token: env://TEST_VAULT_TOKEN}}
        """
    seen: list[str] = []
    config = provider_config(upstream_url, "vault://team/openai#api_key", vault=vault)
    with caplog.at_level(logging.DEBUG), gateway_on(tmp_path, config) as gw, gw.client() as c:
        upstream.required_key = CANARY
        resp = c.post(CHAT, json=BODY)
        assert resp.status_code == 200, resp.text
        assert bearer(upstream) == CANARY
        app.secrets["team/openai"] = {"api_key": ROTATED}
        upstream.required_key = ROTATED

        def rotated() -> bool:
            r = c.post(CHAT, json=BODY)
            seen.append(r.text)
            return r.status_code == 200

        wait_for(rotated, timeout=10)
        assert bearer(upstream) == ROTATED
        app.token = "hvs.revoked"
        wait_for(lambda: c.post(CHAT, json=BODY).status_code == 503, timeout=10)
        resp = c.post(CHAT, json=BODY)
        error = assert_openai_error(resp, 503, "credential_unavailable")
        assert "vault://team/openai" in error["message"]
        seen.append(resp.text + str(gw.audit()))
    text = "\n".join(seen) + caplog.text
    assert CANARY not in text and ROTATED not in text and TOKEN not in text
