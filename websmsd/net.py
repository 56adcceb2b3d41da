"""IP addresses and networks as websms.conf and requests give them (pure Python)."""

from __future__ import annotations

import ipaddress
from typing import Optional, Sequence, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def parse_address(text: str) -> Optional[Address]:
    """An IP address as seen on a socket or in a header, or None if it is not one.

    IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, what a dual-stack listener
    reports) are turned into IPv4 so that IPv4 CIDRs match them.
    """
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443" from some proxies
        text = text[1 : text.index("]")]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def in_networks(addr: Optional[Address], networks: Sequence[Network]) -> bool:
    if addr is None:
        return False
    return any(addr.version == net.version and addr in net for net in networks)
