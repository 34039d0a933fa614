"""The `egress:` config compiled once per snapshot: host decisions, networks, resolve overrides."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sluicegate.egress.config import EgressConfig
from sluicegate.egress.hosts import HostPolicy, normalise

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str | None) -> Address | None:
    """An IP address (an IPv4-mapped IPv6 address as its IPv4 one), or None."""
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where a configured override sends a host."""

    address: str
    port: int


class EgressPolicy:
    """What the proxy reads per connection, built from one `EgressConfig`."""

    def __init__(self, config: EgressConfig) -> None:
        self.config = config
        self.hosts = HostPolicy(config)
        self.sources: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in config.source_networks)
        self.private: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in config.private_networks
        )
        self.network_consumers: tuple[tuple[Network, str], ...] = tuple(
            (ipaddress.ip_network(n, strict=False), name) for n, name in config.network_consumers.items()
        )
        self.resolve: dict[str, Resolved] = {}
        for host, target in config.resolve.items():
            address, _, port = target.rpartition(":")
            name = normalise(host)
            if name is not None:
                self.resolve[name] = Resolved(address.strip("[]"), int(port))

    def from_sources(self, client: Address | None) -> bool:
        """Whether a client may use the proxy without authenticating."""
        return client is not None and any(client in network for network in self.sources)

    def may_reach(self, address: Address) -> bool:
        """Whether a tunnel may go to this address: a public one, or a private one allowed."""
        return address.is_global or any(address in network for network in self.private)

    def network_consumer(self, client: Address | None) -> tuple[str, str] | None:
        """The consumer of the client's source network and that network, if one is mapped."""
        if client is None:
            return None
        for network, name in self.network_consumers:
            if client in network:
                return name, str(network)
        return None
