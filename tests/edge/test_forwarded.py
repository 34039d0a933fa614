"""The client's address: forwarding headers believed from trusted proxies only, read from the right."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sluicegate.edge.forwarded import ClientAddress, parse_address
from sluicegate.testing import FakeUpstream
from tests.conftest import run_gateway

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
PROXIES = ["127.0.0.0/8", "10.0.0.0/8", "2001:db8:ffff::/48"]
TRUSTED = "server:\n  trusted_proxies: [127.0.0.0/8]\n"


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", v.encode()) for v in values]


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ([], "127.0.0.1"),
        (xff("203.0.113.7"), "203.0.113.7"),
        # The client wrote the left part; the first untrusted address from the right is the client.
        (xff("198.51.100.1, 203.0.113.7"), "203.0.113.7"),
        (xff("203.0.113.7, 10.1.1.1, 10.2.2.2"), "203.0.113.7"),
        # Several lines are one list, in order.
        (xff("198.51.100.1", "203.0.113.7, 10.1.1.1"), "203.0.113.7"),
        # Ports and brackets as some proxies write them; IPv4-mapped IPv6 is IPv4.
        (xff("203.0.113.7:4711"), "203.0.113.7"),
        (xff("[2001:db8::17]:4711"), "2001:db8::17"),
        (xff("::ffff:203.0.113.7"), "203.0.113.7"),
        # Every hop a trusted proxy: the farthest.
        (xff("10.3.3.3, 10.1.1.1"), "10.3.3.3"),
        # A trusted proxy says the client is no address: no address at all (rules fail closed).
        (xff("unknown"), None),
        (xff("203.0.113.7, garbage"), None),
        (xff(""), None),
        # Only the configured header is read.
        ([(b"forwarded", b"for=203.0.113.7")], "127.0.0.1"),
    ],
    ids=[
        "none",
        "one",
        "spoofed-left",
        "proxy-chain",
        "two-lines",
        "port",
        "v6-bracket-port",
        "v4-mapped",
        "all-trusted",
        "unknown",
        "garbage",
        "empty",
        "other-header",
    ],
)
def test_x_forwarded_for(headers: list[tuple[bytes, bytes]], client: str | None) -> None:
    assert ClientAddress(PROXIES).resolve("127.0.0.1", headers) == client


@pytest.mark.parametrize(
    ("value", "client"),
    [
        (b"for=203.0.113.7", "203.0.113.7"),
        (b'for="[2001:db8:cafe::17]:4711";proto=https', "2001:db8:cafe::17"),
        (b"for=198.51.100.1, for=203.0.113.7;by=10.0.0.1, for=10.1.1.1", "203.0.113.7"),
        (b'For="203.0.113.7:80"', "203.0.113.7"),
        (b"for=_hidden", None),
        (b"for=unknown", None),
        (b"proto=https", None),  # an element without `for` is an unknown hop
        (b'for="203.0.113.7";note="a, b; c"', "203.0.113.7"),
    ],
    ids=["plain", "v6-quoted", "chain", "case-and-port", "obfuscated", "unknown", "no-for", "quoted-separators"],
)
def test_forwarded_rfc7239(value: bytes, client: str | None) -> None:
    resolver = ClientAddress(PROXIES, "forwarded")
    assert resolver.resolve("10.9.9.9", [(b"forwarded", value)]) == client


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    resolver = ClientAddress(PROXIES)
    assert resolver.resolve("203.0.113.9", xff("10.1.1.1")) == "203.0.113.9"
    # No trusted proxies (the default): nothing is believed, even from loopback.
    assert ClientAddress([]).resolve("127.0.0.1", xff("10.1.1.1")) == "127.0.0.1"


def test_parse_address() -> None:
    assert str(parse_address(" 192.0.2.1 ")) == "192.0.2.1"
    assert parse_address("192.0.2.1:x") is None
    assert parse_address("[2001:db8::1") is None
    assert parse_address("fe80::1%eth0") is None
    assert parse_address("example.com") is None


@pytest.mark.parametrize(
    ("server", "sent", "status", "recorded"),
    [
        # No trusted proxy: a forged header from loopback changes nothing.
        ("", {"X-Forwarded-For": "10.1.2.3"}, 403, "127.0.0.1"),
        ("server:\n  trusted_proxies: [127.0.0.0/8]\n", {"X-Forwarded-For": "10.1.2.3"}, 200, "10.1.2.3"),
        # Behind the proxy, the client cannot put itself inside the allowed range.
        (
            "server:\n  trusted_proxies: [127.0.0.0/8]\n",
            {"X-Forwarded-For": "10.1.2.3, 203.0.113.7"},
            403,
            "203.0.113.7",
        ),
        (
            TRUSTED + "  forwarded_header: forwarded\n",
            {"Forwarded": "for=10.1.2.3", "X-Forwarded-For": "203.0.113.7"},
            200,
            "10.1.2.3",
        ),
    ],
    ids=["untrusted", "trusted", "spoof-behind-proxy", "rfc7239"],
)
def test_source_rules_and_audit_use_the_resolved_address(
    tmp_path: Path,
    upstream: FakeUpstream,
    upstream_url: str,
    server: str,
    sent: dict[str, str],
    status: int,
    recorded: str,
) -> None:
    extra = server + "groups:\n  - name: office\n    source_ips: [10.0.0.0/8]\n"
    with run_gateway(tmp_path, upstream_url, extra) as gw:
        text = gw.config_path.read_text().replace("  - name: bob\n", "  - name: bob\n    groups: [office]\n")
        gw.config_path.write_text(text)
        assert asyncio.run(gw.app.reload())
        with gw.client("bob") as c:
            resp = c.post(CHAT, json=BODY, headers=sent)
        assert resp.status_code == status, resp.text
        event = gw.last_audit()
        assert event["client_ip"] == recorded and event["request_id"] == resp.headers["x-request-id"]
