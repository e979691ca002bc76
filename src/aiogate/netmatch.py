"""Is an address in a set of networks? Built once per Runtime, asked once per request.

A set of CIDRs is collapsed into disjoint, sorted integer intervals per address family; a
lookup is one `socket.inet_pton` and one `bisect` — O(log n) whatever n is, about a
microsecond for 10 or 100 000 networks. Building costs O(n log n) and two ints per interval.
No aiohttp import: this is pure and unit-tested on its own.
"""

from __future__ import annotations

import socket
from bisect import bisect_right
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, collapse_addresses
from typing import Final

__all__ = ["NetworkSet", "parse_ip"]

_V4_MAPPED: Final = b"\x00" * 10 + b"\xff\xff"


def parse_ip(address: str) -> tuple[int, int] | None:
    """(family 4 or 6, the address as an int); None if `address` is not an IP literal.

    An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack listener reports for
    an IPv4 client) is the IPv4 address, so IPv4 rules see it. A zone (`fe80::1%eth0`) is
    dropped.
    """
    if ":" not in address:
        try:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
        except OSError:
            return None
    try:
        packed = socket.inet_pton(socket.AF_INET6, address.partition("%")[0])
    except OSError:
        return None
    if packed[:12] == _V4_MAPPED:
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


class _Intervals:
    __slots__ = ("_ends", "_starts")

    def __init__(self, collapsed: Iterable[IPv4Network | IPv6Network]) -> None:
        """`collapsed`: sorted, disjoint networks of one family (`collapse_addresses`)."""
        starts: list[int] = []
        ends: list[int] = []
        for network in collapsed:
            first, last = int(network.network_address), int(network.broadcast_address)
            if ends and first == ends[-1] + 1:  # adjacent: one interval, one fewer probe
                ends[-1] = last
            else:
                starts.append(first)
                ends.append(last)
        self._starts = starts
        self._ends = ends

    def __contains__(self, value: int) -> bool:
        index = bisect_right(self._starts, value) - 1
        return index >= 0 and value <= self._ends[index]

    def __len__(self) -> int:
        return len(self._starts)


class NetworkSet:
    """An immutable set of IPv4/IPv6 networks answering `address in networks`."""

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks: Iterable[IPv4Network | IPv6Network]) -> None:
        networks = list(networks)
        v4 = [n for n in networks if isinstance(n, IPv4Network)]
        v6 = [n for n in networks if isinstance(n, IPv6Network)]
        # An IPv4-mapped IPv6 rule (::ffff:10.0.0.0/104) means the IPv4 range it maps.
        for network in list(v6):
            mapped = network.network_address.ipv4_mapped
            if mapped is not None and network.prefixlen >= 96:
                v6.remove(network)
                v4.append(IPv4Network((mapped, network.prefixlen - 96)))
        self._v4 = _Intervals(collapse_addresses(v4))
        self._v6 = _Intervals(collapse_addresses(v6))

    def __bool__(self) -> bool:
        return bool(len(self._v4) or len(self._v6))

    def __len__(self) -> int:
        """Disjoint intervals after collapsing (at most the number of networks given)."""
        return len(self._v4) + len(self._v6)

    def contains(self, address: str) -> bool:
        """Whether `address` (text, as the client IP is) lies in one of the networks.

        Not an IP literal: False (a deny list does not match it; an allow list rejects it).
        """
        parsed = parse_ip(address)
        return parsed is not None and self.contains_parsed(parsed)

    def contains_parsed(self, parsed: tuple[int, int]) -> bool:
        """`contains` for an address already through `parse_ip` (several sets, one parse)."""
        family, value = parsed
        return value in (self._v4 if family == 4 else self._v6)
