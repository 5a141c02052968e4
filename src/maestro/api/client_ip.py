"""Which address a request came from, believing X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:192.0.2.1 is 192.0.2.1 for allowlists
    return address


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The client's address: the peer itself, unless the peer is a trusted proxy; then the
    right-most address in X-Forwarded-For that is not a trusted proxy (addresses to its left
    were written by the client and prove nothing). None when no address can be made out."""
    address = parse_address(peer) if peer else None
    if address is None or not forwarded_for or not _trusted(address, trusted_proxies):
        return address
    hops = [h for h in (part.strip() for part in forwarded_for.split(",")) if h]
    for hop in reversed(hops):
        hop_address = parse_address(hop)
        if hop_address is None:
            return None  # a malformed entry after our proxies: believe nothing beyond it
        if not _trusted(hop_address, trusted_proxies):
            return hop_address
    return parse_address(hops[0]) if hops else address


def allowed(address: IPAddress | None, allowlist: Sequence[IPNetwork]) -> bool:
    """An empty allowlist admits everyone; an unknown address is never in a non-empty one."""
    if not allowlist:
        return True
    return address is not None and _trusted(address, allowlist)


@functools.lru_cache(maxsize=4096)
def parse_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """CIDR strings (as stored, already validated) as networks; remembered, since every
    delivery to an endpoint checks the same list."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
