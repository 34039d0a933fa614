"""Intercept: unmodified `openai` and `anthropic` SDK calls to their providers' real host names,
through the egress proxy (`HTTPS_PROXY`, the test CA trusted), are served by the gateway's one
pipeline: identity, access rules, guards, its own provider credential, and the audit."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from sluicegate.audit.reader import latest_events
from sluicegate.settings import Settings
from sluicegate.store.db import create_engine
from sluicegate.testing import FakeUpstream, Reply
from tests.conftest import CANARY_KEY
from tests.egress.conftest import EgressGateway, OrgCA, egress_config, run_egress_gateway

EGRESS = """\
source_networks: [127.0.0.0/8]
intercept: [api.openai.com, api.anthropic.com, api.groq.com, "*.openai.azure.com", generativelanguage.googleapis.com]
"""


@pytest.fixture(scope="module")
def gw(upstream_url: str, test_ca: OrgCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EgressGateway]:
    with run_egress_gateway(tmp_path_factory.mktemp("intercept"), egress_config(upstream_url, test_ca, EGRESS)) as g:
        yield g


@pytest.fixture
def proxied(gw: EgressGateway, test_ca: OrgCA, monkeypatch: pytest.MonkeyPatch) -> EgressGateway:
    """The environment an unmodified app runs in: `HTTPS_PROXY` and the CA bundle (`SSL_CERT_FILE`)."""
    monkeypatch.setenv("HTTPS_PROXY", gw.proxy)
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.cert))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    return gw


def test_openai_sdk_is_governed_without_a_changed_line(proxied: EgressGateway, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(api_key=proxied.keys["alice"], max_retries=0)
    assert str(client.base_url) == "https://api.openai.com/v1/"
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: through the proxy"}]
    )
    assert raw.parse().choices[0].message.content == "through the proxy"
    # The upstream got the gateway's provider key, never the app's key.
    sent = upstream.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert proxied.keys["alice"] not in str(sent.headers)
    event = proxied.last_audit()
    assert event["request_id"] == raw.headers["x-request-id"]
    assert event["door"] == "egress" and event["egress_host"] == "api.openai.com"
    assert event["consumer"] == "alice" and event["status"] == 200 and event["endpoint"] == "chat"
    assert event["client_ip"] == "127.0.0.1"


def test_a_streamed_call_is_intercepted_too(proxied: EgressGateway, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(api_key=proxied.keys["alice"], max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: one two three"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    event = proxied.last_audit()
    assert event["egress_host"] == "api.openai.com" and event["completion_tokens"] == 3


def test_a_forbidden_model_is_refused_in_the_sdks_error_type(proxied: EgressGateway, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(api_key=proxied.keys["bob"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="team-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 403
    assert not upstream.requests
    event = proxied.last_audit()
    assert event["consumer"] == "bob" and event["status"] == 403 and event["egress_host"] == "api.openai.com"


def test_a_guard_blocks_an_intercepted_call(proxied: EgressGateway, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(api_key=proxied.keys["alice"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "tell me about nightingale"}]
        )
    assert caught.value.code == "content_blocked"
    assert not upstream.requests
    event = proxied.last_audit()
    assert event["outcome"] == "content_blocked" and event["egress_host"] == "api.openai.com"


def test_an_app_with_its_own_provider_key_is_refused(proxied: EgressGateway, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(api_key="sk-proj-the-apps-own-provider-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert not upstream.requests
    assert "sk-proj-the-apps-own-provider-key" not in str(proxied.audit())


def test_the_proxy_password_identifies_the_caller(gw: EgressGateway, test_ca: OrgCA, upstream: FakeUpstream) -> None:
    # The app keeps its own provider key; the proxy credentials (bob's gateway key) say who calls.
    http = httpx.Client(proxy=gw.proxy_with("bob"), verify=test_ca.context())
    client = openai.OpenAI(api_key="sk-proj-the-apps-own-provider-key", http_client=http, max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: bob"}])
    assert answer.choices[0].message.content == "bob"
    assert "sk-proj-the-apps-own-provider-key" not in str(upstream.requests[-1].headers)
    event = gw.last_audit()
    assert event["consumer"] == "bob" and event["egress_host"] == "api.openai.com"


def test_anthropic_sdk_is_governed(proxied: EgressGateway, upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(api_key=proxied.keys["alice"], max_retries=0)
    assert str(client.base_url) == "https://api.anthropic.com"
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "echo: hello claude"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == "hello claude"
    assert upstream.requests[-1].headers["x-api-key"] == CANARY_KEY
    event = proxied.last_audit()
    assert event["egress_host"] == "api.anthropic.com" and event["endpoint"] == "messages"
    assert event["consumer"] == "alice"
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "nightingale"}]
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    bob = anthropic.Anthropic(api_key=proxied.keys["bob"], max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        bob.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert proxied.last_audit()["egress_host"] == "api.anthropic.com"


def test_a_provider_path_prefix_is_mapped(gw: EgressGateway, test_ca: OrgCA, upstream: FakeUpstream) -> None:
    # Groq serves the OpenAI API under /openai/v1: intercepted, it is the gateway's /v1.
    http = httpx.Client(proxy=gw.proxy, verify=test_ca.context())
    client = openai.OpenAI(
        base_url="https://api.groq.com/openai/v1", api_key=gw.keys["alice"], http_client=http, max_retries=0
    )
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: g"}])
    assert answer.choices[0].message.content == "g"
    assert gw.last_audit()["egress_host"] == "api.groq.com"


def test_geminis_openai_compatible_api_is_mapped(gw: EgressGateway, test_ca: OrgCA, upstream: FakeUpstream) -> None:
    http = httpx.Client(proxy=gw.proxy, verify=test_ca.context())
    base_url = "https://generativelanguage.googleapis.com/v1beta/openai"
    client = openai.OpenAI(base_url=base_url, api_key=gw.keys["alice"], http_client=http, max_retries=0)
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: a"}])
    assert answer.choices[0].message.content == "a"
    assert gw.last_audit()["egress_host"] == "generativelanguage.googleapis.com"
    # Gemini's native API is not the gateway's: a clear 404, not a call elsewhere.
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(
            base_url="https://generativelanguage.googleapis.com/v1beta/models",
            api_key=gw.keys["alice"],
            http_client=http,
            max_retries=0,
        ).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def test_the_azure_openai_client_is_governed(gw: EgressGateway, test_ca: OrgCA, upstream: FakeUpstream) -> None:
    # AzureOpenAI calls /openai/deployments/{deployment}/... with `api-key`: the gateway's own paths.
    http = httpx.Client(proxy=gw.proxy, verify=test_ca.context())

    def azure(who: str) -> openai.AzureOpenAI:
        return openai.AzureOpenAI(
            azure_endpoint="https://myres.openai.azure.com",
            api_key=gw.keys[who],
            api_version="2024-10-21",
            http_client=http,
            max_retries=0,
        )

    answer = azure("alice").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: az"}]
    )
    assert answer.choices[0].message.content == "az"
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {CANARY_KEY}"
    event = gw.last_audit()
    assert (event["egress_host"], event["model_requested"]) == ("myres.openai.azure.com", "gpt-4o-mini")
    with pytest.raises(openai.PermissionDeniedError):
        azure("bob").chat.completions.create(model="team-model", messages=[{"role": "user", "content": "hi"}])
    # Its v1 API too.
    v1 = openai.OpenAI(
        base_url="https://myres.openai.azure.com/openai/v1", api_key=gw.keys["alice"], http_client=http, max_retries=0
    )
    assert v1.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: b"}]).choices


def _tls_through(gw: EgressGateway, test_ca: OrgCA, target: str, sni: str) -> ssl.SSLSocket:
    host, port = gw.proxy.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(f"CONNECT {target}:443 HTTP/1.1\r\nHost: {target}:443\r\n\r\n".encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    return test_ca.context().wrap_socket(sock, server_hostname=sni)


def test_sni_and_host_are_checked_against_the_connect_target(gw: EgressGateway, test_ca: OrgCA) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _tls_through(gw, test_ca, "api.openai.com", "api.anthropic.com")
    with _tls_through(gw, test_ca, "api.openai.com", "api.openai.com") as tls:
        tls.sendall(b"GET /v1/models HTTP/1.1\r\nHost: api.anthropic.com\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 421 ")


def test_leaf_certificates_are_cached_per_host(gw: EgressGateway) -> None:
    assert gw.door is not None
    leaves = gw.door.leaves()
    before = leaves.issued
    for _ in range(2):
        with httpx.Client(proxy=gw.proxy, verify=False) as client:
            client.get("https://api.openai.com/v1/models")
    assert leaves.issued == before


@pytest.fixture(scope="module")
def mapped(upstream_url: str, test_ca: OrgCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EgressGateway]:
    """A proxy whose loopback clients are consumer bob's, and whose leaves are renewed at once."""
    egress = EGRESS + "network_consumers: {127.0.0.0/8: bob}\n"
    ca = f"cert: 'file://{test_ca.cert}', key: 'file://{test_ca.key}', leaf_validity_h: 1, renew_before_h: 0.9999"
    config = egress_config(upstream_url, test_ca, egress)
    config = config[: config.index("  ca: {")] + f"  ca: {{{ca}}}\n"
    with run_egress_gateway(tmp_path_factory.mktemp("mapped"), config) as g:
        yield g


def test_the_source_network_identifies_an_app_without_a_gateway_key(
    mapped: EgressGateway, test_ca: OrgCA, upstream: FakeUpstream
) -> None:
    http = httpx.Client(proxy=mapped.proxy, verify=test_ca.context())
    app = openai.OpenAI(api_key="sk-proj-the-apps-own-provider-key", http_client=http, max_retries=0)
    assert app.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: x"}])
    assert "sk-proj-the-apps-own-provider-key" not in str(upstream.requests[-1].headers)
    event = mapped.last_audit()
    assert event["consumer"] == "bob" and event["key_id"] is None and event["egress_host"] == "api.openai.com"
    # bob's rules apply: team-model is not his.
    with pytest.raises(openai.PermissionDeniedError):
        app.chat.completions.create(model="team-model", messages=[{"role": "user", "content": "x"}])
    # A gateway key the app sends comes before the network's consumer.
    alice = openai.OpenAI(api_key=mapped.keys["alice"], http_client=http, max_retries=0)
    alice.chat.completions.create(model="team-model", messages=[{"role": "user", "content": "x"}])
    assert mapped.last_audit()["consumer"] == "alice"


def test_a_leaf_is_renewed_before_it_expires(mapped: EgressGateway, test_ca: OrgCA) -> None:
    assert mapped.door is not None
    seen = []
    for _ in range(2):
        with httpx.Client(proxy=mapped.proxy, verify=test_ca.context()) as client:
            client.get("https://api.openai.com/v1/models")
        seen.append(mapped.door.leaves().issued)
        # renew_before_h leaves the leaf under half a second of use
        time.sleep(0.5)
    assert seen[1] == seen[0] + 1


def test_a_call_in_flight_finishes_and_is_audited_when_the_gateway_stops(
    upstream_url: str, upstream: FakeUpstream, test_ca: OrgCA, tmp_path: Path
) -> None:
    upstream.enqueue(Reply(chunk_interval_s=0.1))
    started, texts = threading.Event(), []

    def read(stream: Any) -> None:
        for chunk in stream:
            started.set()
            texts.extend(c.delta.content or "" for c in chunk.choices)

    with run_egress_gateway(tmp_path, egress_config(upstream_url, test_ca, EGRESS)) as gw:
        http = httpx.Client(proxy=gw.proxy, verify=test_ca.context())
        client = openai.OpenAI(api_key=gw.keys["alice"], http_client=http, max_retries=0)
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "echo: a b c d e f"}], stream=True
        )
        reader = threading.Thread(target=read, args=(stream,))
        reader.start()
        assert started.wait(5)
    # The gateway stopped (its egress door first, then the audit writer), the call complete.
    reader.join(5)
    assert "".join(texts) == "a b c d e f"
    event = latest_events(create_engine(Settings(data_dir=tmp_path / "data").db_url()), 1)[-1]
    assert event["egress_host"] == "api.openai.com" and event["status"] == 200 and event["completion_tokens"] == 6
