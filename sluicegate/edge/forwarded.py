"""The client's address: the peer's, or behind trusted reverse proxies the one they forwarded.

A forwarding header (`X-Forwarded-For`, or RFC 7239 `Forwarded`) is believed only when the peer
is one of `server.trusted_proxies`, and only as far as the chain stays inside them: each proxy
appends the address it saw, so the list is read from the right, and the first address that is
not a trusted proxy is the client. Everything left of it was written by the client and can be
anything. An entry that is not an address (`unknown`, an obfuscated `_name`, garbage) where the
client should be gives no address at all: rules on the source then refuse, they never guess.
Only the configured header is read: a proxy that sets one passes the other through untouched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from sluicegate.config.rules import IPNetwork

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientAddress:
    """Resolves the client address of a request, compiled from the `server:` settings."""

    __slots__ = ("header", "networks")

    def __init__(self, trusted_proxies: Iterable[str], header: str = "x-forwarded-for") -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self.header = header.encode("latin-1")

    def resolve(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The client's address for a request from `peer` with these headers (name, value)."""
        if not self.networks or peer is None:
            return peer
        address = parse_address(peer)
        if address is None or not self._trusted(address):
            return peer
        values = [value for name, value in headers if name == self.header]
        entries = _forwarded_for(values) if self.header == b"forwarded" else _x_forwarded_for(values)
        if not entries:
            return peer
        for entry in reversed(entries):
            hop = parse_address(entry)
            if hop is None:
                return None  # a trusted proxy says the client is not an address: fail closed
            if not self._trusted(hop):
                return str(hop)
        # Every hop is a trusted proxy: the farthest one is the client (a proxy calling itself).
        first = parse_address(entries[0])
        return str(first) if first is not None else None

    def _trusted(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def parse_address(text: str) -> Address | None:
    """An IP address as forwarding headers and sockets write it: bare, `[v6]`, with a port
    (`1.2.3.4:80`, `[v6]:80`); IPv4-mapped IPv6 as IPv4. None when it is not an address."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not (text[end + 1] == ":" and text[end + 2 :].isdigit())):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        text = host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return None
    return address


def _x_forwarded_for(values: list[bytes]) -> list[str]:
    """The entries of every `X-Forwarded-For` line, in order (several lines are one list)."""
    return [entry.strip() for value in values for entry in value.decode("latin-1").split(",")]


def _forwarded_for(values: list[bytes]) -> list[str]:
    """The `for=` node of each element of every `Forwarded` line, in order (RFC 7239 section 4).

    An element without `for=` counts as an unknown hop (""), so it cannot be skipped over."""
    out: list[str] = []
    for value in values:
        for element in _split(value.decode("latin-1"), ","):
            node = ""
            for pair in _split(element, ";"):
                name, sep, raw = pair.partition("=")
                if sep and name.strip().lower() == "for":
                    node = _unquote(raw.strip())
            out.append(node)
    return out


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside quoted strings (RFC 7230 quoted-string, with backslash escapes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p for p in (part.strip() for part in parts) if p]


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
        out: list[str] = []
        escaped = False
        for char in text:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        return "".join(out)
    return text
