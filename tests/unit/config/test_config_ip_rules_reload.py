"""`ip_rules:` (global and per route) and `reload:` in the config file."""

from __future__ import annotations

from ipaddress import ip_network

from config_testing import MINIMAL_UPSTREAM, Errors, LoadText


def test_defaults(load_text: LoadText) -> None:
    config = load_text(MINIMAL_UPSTREAM)
    assert config.reload.watch is False
    assert config.reload.debounce == 0.5
    assert config.ip_rules.empty


def test_global_and_route_rules(load_text: LoadText) -> None:
    config = load_text(
        MINIMAL_UPSTREAM
        + """\
reload: {watch: true, debounce: 200ms}
ip_rules:
  allow: [10.0.0.0/8, "2001:db8::/32"]
  deny: 10.6.6.6
routes:
  - path: /a
    upstream: user-service
    ip_rules: {deny: [10.1.0.0/16]}
  - path: /b
    upstream: user-service
"""
    )
    assert config.reload.watch is True
    assert config.reload.debounce == 0.2
    assert config.ip_rules.allow == (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))
    assert config.ip_rules.deny == (ip_network("10.6.6.6/32"),)
    assert config.routes[0].ip_rules is not None
    assert config.routes[0].ip_rules.deny == (ip_network("10.1.0.0/16"),)
    assert config.routes[1].ip_rules is None


def test_bad_cidrs_are_reported_at_their_position(errors: Errors) -> None:
    found = errors(
        MINIMAL_UPSTREAM
        + """\
ip_rules:
  deny: [10.0.0.0/8, "192.168.1.1/24"]
routes:
  - path: /a
    upstream: user-service
    ip_rules:
      allow: [10.0.0.0/33]
      whitelist: [10.0.0.0/8]
"""
    )
    assert any(e.startswith("6:22: ip_rules.deny[1]: invalid CIDR") for e in found), found
    assert any(e.startswith("11:15: routes[0].ip_rules.allow[0]: invalid CIDR") for e in found)
    assert any(e.startswith("12:7: routes[0].ip_rules.whitelist: unknown key") for e in found)


def test_bad_reload_section(errors: Errors) -> None:
    found = errors(MINIMAL_UPSTREAM + "reload: {watch: maybe, debounce: 2h}\n")
    assert any(e.startswith("5:17: reload.watch:") for e in found), found
    assert any(e.startswith("5:34: reload.debounce:") for e in found), found
