"""NetworkSet: the precompiled CIDR matcher behind `ip_rules`."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network

import pytest

from aiogate.netmatch import NetworkSet, parse_ip


def nets(*cidrs: str) -> NetworkSet:
    return NetworkSet(ip_network(c) for c in cidrs)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.1.2.3", True),
        ("10.0.0.0", True),
        ("10.255.255.255", True),
        ("11.0.0.0", False),
        ("9.255.255.255", False),
        ("192.168.1.7", True),
        ("192.168.1.8", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("::ffff:10.9.9.9", True),  # IPv4-mapped: what a dual-stack socket reports
        ("fe80::1%eth0", False),
        ("", False),
        ("not-an-ip", False),
        ("10.1.2", False),
    ],
)
def test_membership(address: str, expected: bool) -> None:
    rules = nets("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32")
    assert rules.contains(address) is expected


def test_overlapping_and_adjacent_networks_collapse() -> None:
    rules = nets("10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.2.0/23")
    assert len(rules) == 1  # one interval 10.0.0.0 - 10.0.3.255
    assert rules.contains("10.0.3.255")
    assert not rules.contains("10.0.4.0")


def test_families_are_separate() -> None:
    v4_only = nets("0.0.0.0/0")
    assert v4_only.contains("203.0.113.9")
    assert not v4_only.contains("2001:db8::1")
    v6_only = nets("::/0")
    assert v6_only.contains("2001:db8::1")
    assert not v6_only.contains("203.0.113.9")


def test_ipv4_mapped_rule_means_the_ipv4_range() -> None:
    rules = nets("::ffff:10.0.0.0/104")
    assert rules.contains("10.20.30.40")
    assert not rules.contains("11.0.0.1")


def test_empty_set() -> None:
    empty = NetworkSet([])
    assert not empty
    assert not empty.contains("10.0.0.1")


def test_parse_ip() -> None:
    assert parse_ip("0.0.0.1") == (4, 1)
    assert parse_ip("::1") == (6, 1)
    assert parse_ip("::ffff:0.0.0.2") == (4, 2)
    assert parse_ip("1.2.3.4.5") is None


def test_agrees_with_ipaddress_on_many_random_networks() -> None:
    rng = random.Random(7)
    networks: list[IPv4Network | IPv6Network] = []
    for _ in range(2000):
        prefix = rng.randint(8, 32)
        networks.append(IPv4Network((rng.getrandbits(32), prefix), strict=False))
    rules = NetworkSet(networks)
    assert len(rules) <= len(networks)
    for _ in range(3000):
        address = IPv4Address(rng.getrandbits(32))
        expected = any(address in network for network in networks)
        assert rules.contains(str(address)) is expected, address
