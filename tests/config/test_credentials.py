"""A credential pasted where a reference belongs is refused, and no message, command or log shows it."""

from __future__ import annotations

import os
import random
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sluicegate.cli import main
from sluicegate.config.loader import parse_config
from sluicegate.testing import FakeUpstream
from sluicegate.vault.refs import env_name_problem, looks_like_credential
from tests.conftest import CANARY_KEY, run_gateway, wait_for

_ALNUM = string.ascii_letters + string.digits
# Random-looking, but the same in every test process (pytest-xdist compares test ids).
_RNG = random.Random(20240607)
OPENAI_SHAPED = "sk-proj-" + "".join(_RNG.choice(_ALNUM) for _ in range(48))
RANDOM_40 = "Q" + "".join(_RNG.choice(_ALNUM) for _ in range(39))
HEX_48 = "".join(_RNG.choice("0123456789abcdef") for _ in range(48))
PROVIDER = """\
providers:
  - name: p
    type: openai
    api_key: {api_key}
{headers}models:
  - name: m
    provider: p
"""


def config(api_key: str = "env://SOME_KEY_FOR_TESTS", headers: dict[str, str] | None = None) -> str:
    lines = "".join(f"      {name}: {value!r}\n" for name, value in (headers or {}).items())
    return PROVIDER.format(api_key=api_key, headers=f"    headers:\n{lines}" if headers else "")


def issues(text: str) -> list[str]:
    _, found = parse_config(text)
    return [str(i) for i in found]


@pytest.mark.parametrize(
    "ref",
    [
        f"env://{OPENAI_SHAPED}",
        f"env://{RANDOM_40}",
        "env://AKIAIOSFODNN7EXAMPLE",
        f"env://{HEX_48}",
        f"secret://{OPENAI_SHAPED}",
        f"file:///run/{OPENAI_SHAPED}",
    ],
    ids=["openai-shaped", "random-40", "aws-key-id", "hex", "secret-scheme", "file-scheme"],
)
def test_a_reference_to_a_credential_itself_is_refused_unquoted(ref: str) -> None:
    found = issues(config(api_key=ref))
    assert any("providers[0].api_key" in i and "credential" in i and "warning" not in i for i in found), found
    target = ref.split("://", 1)[1].removeprefix("/run/")
    assert not any(target in i or target[:8] in i for i in found), found


@pytest.mark.parametrize(
    "name",
    ["OPENAI_API_KEY", "TEST_UPSTREAM_KEY", "AZURE_OPENAI_API_KEY_WESTEUROPE_2024", "AzureOpenAIKeyEastUS2", "my_key"],
)
def test_environment_variable_names_are_accepted(name: str) -> None:
    assert env_name_problem(name) is None
    assert not [i for i in issues(config(api_key=f"env://{name}")) if "warning" not in i]


def test_check_never_prints_a_credential_given_as_a_reference(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(config(api_key=f"env://{OPENAI_SHAPED}"))
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 1
    assert "providers[0].api_key" in result.output
    assert OPENAI_SHAPED not in result.output and OPENAI_SHAPED[8:20] not in result.output


def test_serve_refuses_it_without_printing_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(config(api_key=f"env://{RANDOM_40}", headers={"X-Api-Key": OPENAI_SHAPED}))
    env = {**os.environ, "SLUICEGATE_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(
        [sys.executable, "-m", "sluicegate.cli", "serve", "--config", str(path), "--port", "0", "--workers", "1"],
        env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert b"providers[0].api_key" in out and b"providers[0].headers.X-Api-Key" in out
    assert (
        RANDOM_40.encode() not in out and OPENAI_SHAPED.encode() not in out and OPENAI_SHAPED[8:20].encode() not in out
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Authorization", "Bearer abc"),
        ("authorization", "Basic dXNlcjpwYXNz"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("Cookie", "session=1"),
        ("X-Api-Key", "hello"),
        ("X-Goog-Api-Key", "x"),
        ("Ocp-Apim-Subscription-Key", "x"),
        ("X-Auth-Token", "x"),
        ("X-Client-Secret", "x"),
        ("X-Signature", "x"),
        ("X-Password", "x"),
        ("X-Custom", OPENAI_SHAPED),
        ("X-Custom", RANDOM_40),
        ("X-Custom", f"Token {HEX_48}"),
    ],
)
def test_a_literal_credential_in_provider_headers_is_refused_naming_the_header(name: str, value: str) -> None:
    found = issues(config(headers={name: value}))
    assert any(f"providers[0].headers.{name}" in i and "secret reference" in i for i in found), found
    assert not any(value in i for i in found), found


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Title", "My App 2024"),
        ("HTTP-Referer", "https://myapp.example.com/chat"),
        ("OpenAI-Organization", "org-AbCdEf123456GhIjKl7890"),
        ("anthropic-beta", "prompt-caching-2024-07-31"),
        ("X-Api-Key", "env://SOME_HEADER_KEY"),
        ("Authorization", "Bearer file:///run/secrets/token"),
        ("Cookie", "secret://upstream-cookie"),
    ],
)
def test_plain_headers_and_referenced_credentials_are_accepted(name: str, value: str) -> None:
    assert not [i for i in issues(config(headers={name: value})) if "warning" not in i]


def test_header_names_and_values_must_be_valid() -> None:
    found = issues(config(headers={"Bad Name": "x"}))
    assert any("not a valid HTTP header name" in i for i in found), found


def test_looks_like_credential_ignores_identifiers() -> None:
    assert looks_like_credential(CANARY_KEY) and looks_like_credential(OPENAI_SHAPED)
    for text in ("123e4567-e89b-12d3-a456-426614174000", "application/json", "2023-06-01", "sluicegate/0.1"):
        assert not looks_like_credential(text), text


def test_referenced_header_values_are_resolved_at_send_time(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    org_token = "org-token-" + secrets.token_hex(12)
    bearer = "proxy-" + secrets.token_hex(12)
    (tmp_path / "bearer").write_text(bearer + "\n")
    monkeypatch.setenv("UPSTREAM_ORG_TOKEN", org_token)
    headers = (
        "    headers:\n"
        "      X-Org-Token: env://UPSTREAM_ORG_TOKEN\n"
        f"      Proxy-Authorization: Bearer file://{tmp_path / 'bearer'}\n"
        "      X-Title: sluicegate tests\n"
    )
    with run_gateway(tmp_path, upstream_url, watch_interval_s=0.05) as gw, gw.client() as c:
        text = gw.config_path.read_text()
        gw.config_path.write_text(
            text.replace("    api_key: env://TEST_UPSTREAM_KEY\n", f"    api_key: env://TEST_UPSTREAM_KEY\n{headers}")
        )
        wait_for(lambda: gw.app.reloads == 1)
        for stream in (False, True):
            resp = c.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
            )
            assert resp.status_code == 200, resp.text
            sent = upstream.requests[-1].headers
            assert sent["x-org-token"] == org_token
            assert sent["proxy-authorization"] == f"Bearer {bearer}"
            assert sent["x-title"] == "sluicegate tests"
            assert sent["authorization"] == f"Bearer {CANARY_KEY}"
        provider = gw.app.snapshot.providers["mock"]
        assert set(provider.secret_values(CANARY_KEY)) == {CANARY_KEY, org_token, bearer}
        # an unset reference fails closed, naming the header's reference, never a value
        monkeypatch.delenv("UPSTREAM_ORG_TOKEN")
        gw.app.vault.clear()
        resp = c.post(
            "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "credential_unavailable"
        assert org_token not in resp.text and bearer not in resp.text
