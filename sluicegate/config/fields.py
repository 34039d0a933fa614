"""Checks of config values that several sections share (a section's own model calls them)."""

from __future__ import annotations

import ipaddress


def ip_networks(value: list[str]) -> list[str]:
    """`value` unchanged when every item is an IP network in CIDR form (a bare address is a /32 or
    /128); a ValueError naming the first that is not."""
    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"'{text}' is not an IP network (CIDR such as 10.0.0.0/8 or 2001:db8::/32)") from None
    return value
