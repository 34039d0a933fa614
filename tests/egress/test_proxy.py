"""The egress proxy's own decisions over real sockets: block, deny, allow (CONNECT and plain
http://), proxy authentication, private destinations, and its bounds; curl and the SDKs as clients."""

from __future__ import annotations

import base64
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CANARY_KEY
from tests.egress.conftest import EgressGateway, OrgCA, egress_config, run_egress_gateway

EGRESS = """\
gateway_url: https://llm.example.test/v1
source_networks: [127.0.0.0/8]
block: [api.openai.com]
allow: [allowed.test, "*.allowed.test", localhost]
deny: [denied.test]
default: deny
connect_ports: [443, 80]
http_ports: [80]
header_timeout_s: 0.5
idle_timeout_s: 0.5
resolve:
  allowed.test: "{site}"
  www.allowed.test: "{site}"
  denied.test: "{site}"
"""


@pytest.fixture(scope="module")
def gw(
    upstream_url: str, test_ca: OrgCA, site: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EgressGateway]:
    metrics = "observability:\n  metrics:\n    on_data_port: true\n"
    config = egress_config(upstream_url, test_ca, EGRESS.format(site=site), extra=metrics)
    with run_egress_gateway(tmp_path_factory.mktemp("egress"), config) as running:
        yield running


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "10", "--noproxy", "", *args],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


def egress_events(gw: EgressGateway) -> list[dict[str, object]]:
    return [e for e in gw.audit() if e["door"] == "egress" and e["endpoint"] == "egress"]


def test_openai_sdk_to_a_blocked_host_gets_a_clear_error(gw: EgressGateway, test_ca: OrgCA) -> None:
    client = openai.OpenAI(
        api_key="sk-someones-own-key",
        max_retries=0,
        http_client=httpx.Client(proxy=gw.proxy, verify=test_ca.context()),
    )
    with pytest.raises(openai.APIConnectionError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    cause = caught.value.__cause__
    assert isinstance(cause, httpx.ProxyError)
    # The status line itself says what happened and where to go instead.
    assert "403" in str(cause) and "blocked" in str(cause) and "https://llm.example.test/v1" in str(cause)
    event = egress_events(gw)[-1]
    assert event["outcome"] == "shadow_ai_blocked" and event["status"] == 403
    assert event["egress_host"] == "api.openai.com" and event["client_ip"] == "127.0.0.1"
    assert event["rule"] == "egress.block" and event["decision"] == "blocked"
    assert "sk-someones-own-key" not in str(event)


def test_a_known_ai_host_is_blocked_with_its_service_named(gw: EgressGateway) -> None:
    # Not in any list, but in the shipped list of AI hosts: `ai_hosts: block` (the default).
    result = curl("-x", gw.proxy, "-w", "%{http_connect}", "https://bedrock-runtime.eu-west-3.amazonaws.com/")
    assert result.stdout.strip() == "403"
    event = egress_events(gw)[-1]
    assert event["egress_host"] == "bedrock-runtime.eu-west-3.amazonaws.com"
    assert event["outcome"] == "shadow_ai_blocked" and event["rule"] == "egress.ai_hosts"
    assert "AWS Bedrock" in str(event["reason"])


def test_curl_to_an_allowed_host_over_plain_http(gw: EgressGateway) -> None:
    result = curl("-x", gw.proxy, "http://allowed.test/hello?x=1")
    assert result.stdout == "site says /hello?x=1", result.stderr
    result = curl("-x", gw.proxy, "--data-binary", "a body", "http://www.allowed.test/post")
    assert result.stdout == "got a body", result.stderr
    event = egress_events(gw)[-1]
    assert event["outcome"] == "egress_allowed" and event["egress_host"] == "www.allowed.test"
    assert event["rule"] == "egress.allow"


def test_curl_through_a_connect_tunnel_to_an_allowed_host(gw: EgressGateway) -> None:
    result = curl("--proxytunnel", "-x", gw.proxy, "http://allowed.test/tunnelled")
    assert result.stdout == "site says /tunnelled", result.stderr
    event = egress_events(gw)[-1]
    assert event["outcome"] == "egress_allowed" and event["reason"] == "tunnel to port 80"


def test_curl_to_a_denied_and_an_unknown_host(gw: EgressGateway) -> None:
    for url, rule in (("http://denied.test/", "egress.deny"), ("http://unknown.test/", "egress.default")):
        result = curl("-x", gw.proxy, "-w", "%{http_code}", "-o", "/dev/null", url)
        assert result.stdout == "403"
        event = egress_events(gw)[-1]
        assert event["outcome"] == "egress_denied" and event["rule"] == rule
    result = curl("-x", gw.proxy, "-w", "%{http_connect}", "https://denied.test/")
    assert result.stdout.strip() == "403"


def test_a_private_destination_is_refused(gw: EgressGateway) -> None:
    # `localhost` is allowed by name, but resolves to loopback, which no setting opens.
    result = curl("-x", gw.proxy, "-w", "%{http_code}", "-o", "/dev/null", "http://localhost/")
    assert result.stdout == "403"
    event = egress_events(gw)[-1]
    assert event["outcome"] == "egress_denied" and event["rule"] == "egress.private_networks"


def test_ports_outside_the_lists_are_refused(gw: EgressGateway) -> None:
    result = curl("-x", gw.proxy, "-w", "%{http_connect}", "https://allowed.test:8443/")
    assert result.stdout.strip() == "403"
    assert "Port 8443" in str(egress_events(gw)[-1]["reason"])


def test_bad_proxy_requests_are_plain_errors(gw: EgressGateway) -> None:
    host, port = gw.proxy.removeprefix("http://").split(":")
    for request in (
        b"GET /not-absolute HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT no-port HTTP/1.1\r\nHost: no-port\r\n\r\n",
        b"GET http://allowed.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(request)
            answer = _read_all(sock)
        assert answer.startswith(b"HTTP/1.1 400 "), (request, answer)
        assert b"Traceback" not in answer


def test_a_head_that_never_ends_is_timed_out(gw: EgressGateway) -> None:
    host, port = gw.proxy.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"CONNECT allowed.test:443 HTTP/1.1\r\n")
        assert _read_all(sock).startswith(b"HTTP/1.1 408 ")


def test_a_huge_head_is_refused(gw: EgressGateway) -> None:
    host, port = gw.proxy.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"CONNECT allowed.test:443 HTTP/1.1\r\nX-Fill: " + b"a" * 40_000 + b"\r\n\r\n")
        assert _read_all(sock).startswith(b"HTTP/1.1 431 ")


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


# -- proxy authentication ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def closed(
    upstream_url: str, test_ca: OrgCA, site: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EgressGateway]:
    """A proxy with no source network: every client authenticates."""
    egress = f"allow: [allowed.test]\ndefault: deny\nresolve: {{allowed.test: '{site}'}}\n"
    with run_egress_gateway(tmp_path_factory.mktemp("closed"), egress_config(upstream_url, test_ca, egress)) as running:
        yield running


def test_an_unauthenticated_client_is_refused(closed: EgressGateway) -> None:
    result = curl("-x", closed.proxy, "-w", "%{http_code}", "-o", "/dev/null", "http://allowed.test/")
    assert result.stdout == "407"
    result = curl("-x", closed.proxy, "-w", "%{http_connect}", "https://allowed.test/")
    assert result.stdout.strip() == "407"
    wrong = closed.proxy.replace("http://", "http://alice:sk-not-a-gateway-key@")
    result = curl("-x", wrong, "-w", "%{http_code}", "-i", "http://allowed.test/")
    assert "407" in result.stdout and 'proxy-authenticate: Basic realm="sluicegate egress"' in result.stdout
    events = [e for e in closed.audit() if e["outcome"] == "egress_unauthorized"]
    assert len(events) == 3 and all(e["status"] == 407 for e in events)
    assert "sk-not-a-gateway-key" not in str(closed.audit())


def test_a_gateway_key_as_proxy_password_is_admitted(closed: EgressGateway) -> None:
    result = curl("-x", closed.proxy_with("bob"), "http://allowed.test/as-bob")
    assert result.stdout == "site says /as-bob", result.stderr
    event = [e for e in closed.audit() if e["outcome"] == "egress_allowed"][-1]
    assert event["consumer"] == "bob" and event["key_id"].startswith("key_")
    assert closed.keys["bob"] not in str(closed.audit())


def test_a_revoked_key_is_refused_as_proxy_password(closed: EgressGateway) -> None:
    from sluicegate.store.keys import KeyStore

    store = KeyStore(closed.app.engine)
    key, record = store.create("bob")
    credentials = base64.b64encode(f"x:{key}".encode()).decode()
    headers = {"Proxy-Authorization": f"Basic {credentials}"}
    with httpx.Client(proxy=httpx.Proxy(closed.proxy, headers=headers)) as client:
        assert client.get("http://allowed.test/ok").text == "site says /ok"
    store.revoke(record.id)
    closed.app.keys.reload()
    with httpx.Client(proxy=httpx.Proxy(closed.proxy, headers=headers)) as client:
        assert client.get("http://allowed.test/ok").status_code == 407


def test_the_canary_provider_key_never_appears(gw: EgressGateway) -> None:
    assert CANARY_KEY not in str(gw.audit())


def test_a_config_reload_reaches_the_proxy(closed: EgressGateway) -> None:
    url = "http://allowed.test/reloaded"
    assert curl("-x", closed.proxy, "-w", "%{http_code}", "-o", "/dev/null", url).stdout == "407"
    closed.reconfigure(
        lambda text: text.replace(
            "  allow: [allowed.test]\n", "  allow: [allowed.test]\n  source_networks: [127.0.0.0/8]\n"
        )
    )
    try:
        assert curl("-x", closed.proxy, url).stdout == "site says /reloaded"
    finally:
        closed.reconfigure(lambda text: text.replace("  source_networks: [127.0.0.0/8]\n", ""))
    assert curl("-x", closed.proxy, "-w", "%{http_code}", "-o", "/dev/null", url).stdout == "407"


def test_anthropic_sdk_to_a_blocked_host_gets_a_clear_error(
    gw: EgressGateway, test_ca: OrgCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anthropic

    monkeypatch.setenv("HTTPS_PROXY", gw.proxy)
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.cert))
    for name in ("ANTHROPIC_BASE_URL", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = anthropic.Anthropic(api_key="sk-ant-someones-own-key", max_retries=0)
    with pytest.raises(anthropic.APIConnectionError) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    # The SDK's HTTP client says why, from the proxy's status line.
    assert "403 Anthropic at api.anthropic.com is blocked" in str(caught.value.__cause__)
    event = egress_events(gw)[-1]
    assert event["egress_host"] == "api.anthropic.com" and event["outcome"] == "shadow_ai_blocked"


@pytest.mark.parametrize(
    "request_",
    [
        # an address literal: private, whatever the lists say
        b"CONNECT [::1]:80 HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n",
        # a name that only looks like an allowed one
        b"CONNECT allowed.test.evil.test:443 HTTP/1.1\r\nHost: allowed.test.evil.test:443\r\n\r\n",
        b"CONNECT allowed.test@evil.test:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        # both framings: a request smuggling shape
        b"POST http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # two Host headers
        b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nHost: evil.test\r\n\r\n",
    ],
    ids=["ipv6-loopback", "ipv4-loopback", "suffix", "userinfo", "smuggling", "two-hosts"],
)
def test_hostile_proxy_requests_are_refused(gw: EgressGateway, request_: bytes) -> None:
    host, port = gw.proxy.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request_)
        answer = _read_all(sock)
    assert answer.split(b" ", 2)[1] in (b"400", b"403"), answer
    assert b"site says" not in answer


def test_decisions_are_counted_in_the_metrics(gw: EgressGateway) -> None:
    def blocked() -> float:
        text = httpx.get(gw.url + "/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "sluicegate_egress_decisions_total" and sample.labels == {
                    "outcome": "shadow_ai_blocked"
                }:
                    return sample.value
        return 0.0

    before = blocked()
    assert curl("-x", gw.proxy, "-w", "%{http_connect}", "https://api.mistral.ai/").stdout.strip() == "403"
    assert blocked() == before + 1


def test_an_idle_tunnel_is_closed(gw: EgressGateway) -> None:
    host, port = gw.proxy.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"CONNECT allowed.test:80 HTTP/1.1\r\nHost: allowed.test:80\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        # Nothing moves either way: the tunnel ends after `idle_timeout_s` (0.5 s here).
        assert _read_all(sock) == b""


def test_connections_past_the_cap_are_refused(upstream_url: str, test_ca: OrgCA, tmp_path: Path) -> None:
    config = egress_config(upstream_url, test_ca, "source_networks: [127.0.0.0/8]\nmax_connections: 1\n")
    with run_egress_gateway(tmp_path, config) as capped:
        host, port = capped.proxy.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as first:
            first.sendall(b"CONNECT ")  # a head begun, held open
            with socket.create_connection((host, int(port)), timeout=5) as second:
                assert _read_all(second).startswith(b"HTTP/1.1 503 ")
