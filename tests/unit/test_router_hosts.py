"""Routing by host and by header value (ConditionalRouter), next to the path rules."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from aiogate.router import (
    ConditionalRouter,
    Match,
    NoMatch,
    RoutePatternError,
    Rule,
    request_host,
)


def rule(
    name: str,
    pattern: str,
    *,
    methods: tuple[str, ...] | None = None,
    hosts: tuple[str, ...] = (),
    headers: Mapping[str, str] | None = None,
) -> Rule[str]:
    return Rule(
        pattern,
        frozenset(methods) if methods is not None else None,
        name,
        hosts,
        tuple((headers or {}).items()),
    )


def route(
    r: ConditionalRouter[str],
    path: str,
    host: str = "",
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
) -> str | NoMatch:
    lower = {k.lower(): v for k, v in (headers or {}).items()}
    found = r.match(method, path, request_host(host), lower.get)
    return found.target if isinstance(found, Match) else found


NOT_FOUND = NoMatch(frozenset())

HOSTS = ConditionalRouter(
    [
        rule("exact", "/api", hosts=("api.example.com",)),
        rule("wild", "/api", hosts=("*.example.com",)),
        rule("deep-wild", "/api", hosts=("*.eu.example.com",)),
        rule("any", "/api"),
        rule("exact-only", "/only", hosts=("api.example.com",)),
        rule("exact-users", "/users/{id}", hosts=("api.example.com",)),
        rule("any-users", "/users/me"),
    ]
)


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("api.example.com", "/api", "exact"),
        ("API.Example.COM", "/api/x", "exact"),  # case-insensitive
        ("api.example.com:8443", "/api", "exact"),  # port ignored
        ("api.example.com.", "/api", "exact"),  # a trailing dot is the same name
        ("www.example.com", "/api", "wild"),
        ("a.b.example.com", "/api", "wild"),  # one or more labels
        ("x.eu.example.com", "/api", "deep-wild"),  # the longer wildcard is more specific
        ("eu.example.com", "/api", "wild"),
        ("example.com", "/api", "any"),  # not matched by *.example.com
        ("notexample.com", "/api", "any"),
        ("", "/api", "any"),  # no Host (HTTP/1.0)
        ("other.test", "/only", NOT_FOUND),
        ("api.example.com", "/only", "exact-only"),
        # A route with hosts is preferred over one without, even for a less specific path.
        ("api.example.com", "/users/me", "exact-users"),
        ("other.test", "/users/me", "any-users"),
        # The host's own routes do not serve the path: the routes for every host do.
        ("www.example.com", "/users/me", "any-users"),
    ],
)
def test_host_precedence(host: str, path: str, expected: str | NoMatch) -> None:
    assert route(HOSTS, path, host) == expected


def test_no_route_for_the_host_is_404() -> None:
    r = ConditionalRouter([rule("a", "/", hosts=("a.test",))])
    assert route(r, "/", "b.test") == NOT_FOUND
    assert route(r, "/", "a.test") == "a"


def test_405_and_allow_are_per_host() -> None:
    r = ConditionalRouter(
        [
            rule("a-get", "/x", methods=("GET",), hosts=("a.test",)),
            rule("any-post", "/x", methods=("POST",)),
        ]
    )
    assert route(r, "/x", "a.test", method="POST") == NoMatch(frozenset({"GET", "HEAD"}))
    assert route(r, "/x", "b.test", method="POST") == "any-post"
    assert route(r, "/x", "b.test", method="GET") == NoMatch(frozenset({"POST"}))
    assert route(r, "/x", "a.test", method="HEAD") == "a-get"


def test_ipv6_host() -> None:
    r = ConditionalRouter([rule("v6", "/", hosts=("[::1]",))])
    assert route(r, "/", "[::1]:8080") == "v6"
    assert route(r, "/", "[::2]") == NOT_FOUND


def test_same_route_on_several_hosts_is_one_target_with_params() -> None:
    r = ConditionalRouter([rule("t", "/u/{id}", hosts=("a.test", "b.test"))])
    no_headers: dict[str, str] = {}
    for host in ("a.test", "b.test"):
        found = r.match("GET", "/u/7", host, no_headers.get)
        assert isinstance(found, Match)
        assert (found.target, dict(found.params)) == ("t", {"id": "7"})


HEADERS = ConditionalRouter(
    [
        rule("v2", "/api", headers={"X-Version": "2"}),
        rule("v2-beta", "/api", headers={"X-Version": "2", "X-Beta": "1"}),
        rule("plain", "/api"),
        rule("beta-only", "/beta/x", headers={"X-Beta": "1"}),
        rule("beta-rest", "/beta/{*rest}"),
        rule("v2-get", "/m", methods=("GET",), headers={"X-Version": "2"}),
        rule("all-post", "/m", methods=("GET", "POST")),
    ]
)


@pytest.mark.parametrize(
    ("headers", "path", "method", "expected"),
    [
        ({"X-Version": "2"}, "/api", "GET", "v2"),
        ({"X-Version": "2", "X-Beta": "1"}, "/api", "GET", "v2-beta"),  # more conditions
        ({"X-Version": "3"}, "/api", "GET", "plain"),  # exact value
        ({"X-Version": "2 "}, "/api", "GET", "plain"),
        ({}, "/api", "GET", "plain"),
        ({"X-Beta": "1"}, "/beta/x", "GET", "beta-only"),
        # Without the header the more specific path is not there: the less specific serves.
        ({}, "/beta/x", "GET", "beta-rest"),
        # Headers match but the method is not allowed there: the route without headers does.
        ({"X-Version": "2"}, "/m", "POST", "all-post"),
        ({"X-Version": "2"}, "/m", "GET", "v2-get"),
        ({"X-Version": "2"}, "/m", "PUT", NoMatch(frozenset({"GET", "HEAD", "POST"}))),
    ],
)
def test_header_precedence(
    headers: Mapping[str, str], path: str, method: str, expected: str | NoMatch
) -> None:
    assert route(HEADERS, path, headers=headers, method=method) == expected


def test_header_routes_only_is_404_without_the_header() -> None:
    r = ConditionalRouter([rule("v2", "/api", headers={"X-Version": "2"})])
    assert route(r, "/api", headers={"X-Version": "1"}) == NOT_FOUND


def test_hosts_before_headers() -> None:
    r = ConditionalRouter(
        [
            rule("any-v2", "/", headers={"X-Version": "2"}),
            rule("host", "/", hosts=("a.test",)),
        ]
    )
    assert route(r, "/", "a.test", {"X-Version": "2"}) == "host"
    assert route(r, "/", "b.test", {"X-Version": "2"}) == "any-v2"


def test_equal_conditions_keep_config_order() -> None:
    r = ConditionalRouter(
        [rule("first", "/", headers={"X-A": "1"}), rule("second", "/", headers={"X-B": "1"})]
    )
    assert route(r, "/", headers={"X-A": "1", "X-B": "1"}) == "first"
    assert route(r, "/", headers={"X-B": "1"}) == "second"


@pytest.mark.parametrize(
    "rules",
    [
        [rule("a", "/x", hosts=("a.test",)), rule("b", "/x", hosts=("b.test", "A.test"))],
        [rule("a", "/x", headers={"X-V": "1"}), rule("b", "/x", headers={"x-v": "1"})],
        [rule("a", "/x"), rule("b", "/x")],
    ],
)
def test_duplicates_are_refused(rules: list[Rule[str]]) -> None:
    with pytest.raises(RoutePatternError, match="duplicates"):
        ConditionalRouter(rules)


def test_not_duplicates_when_hosts_or_headers_differ() -> None:
    ConditionalRouter(
        [
            rule("a", "/x", hosts=("a.test",)),
            rule("b", "/x", hosts=("*.a.test",)),
            rule("c", "/x"),
            rule("d", "/x", headers={"X-V": "1"}),
            rule("e", "/x", headers={"X-V": "2"}),
        ]
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        ("", ""),
        ("Example.COM", "example.com"),
        ("example.com:80", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:80", "[::1]"),
        ("127.0.0.1:8080", "127.0.0.1"),
    ],
)
def test_request_host(value: str | None, expected: str) -> None:
    assert request_host(value) == expected
