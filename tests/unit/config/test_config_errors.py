"""Every problem in a file is reported, each at its own line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_testing import MINIMAL_UPSTREAM, Errors

from aiogate.config import ConfigError, ConfigIssue, load_config


def test_issue_and_error_formatting() -> None:
    issue = ConfigIssue("a.yaml", 3, 7, "server.bogus: unknown key")
    assert str(issue) == "a.yaml:3:7: server.bogus: unknown key"
    error = ConfigError([issue, ConfigIssue("a.yaml", 4, 1, "x")])
    assert str(error) == "a.yaml:3:7: server.bogus: unknown key\na.yaml:4:1: x"
    assert error.issues[1].message == "x"


def test_many_errors_in_one_file(errors: Errors) -> None:
    assert errors(
        """\
server:
  max_body_size: 10XB
  bogus: 1
  workers: 0
upstreams:
  - name: user-service
    backends:
      - url: http://a:80
        weight: 0
      - url: ftp://x
  - name: order-service
    backends: []
routes:
  - path: /api/users
    upstream: user-svc
"""
    ) == [
        "2:18: server.max_body_size: invalid size '10XB' (use e.g. 512, 64KiB, 10MiB, 1GB)",
        "3:3: server.bogus: unknown key",
        "4:12: server.workers: must be >= 1",
        "9:17: upstreams[0].backends[0].weight: must be >= 1",
        "10:14: upstreams[0].backends[1].url: invalid backend URL 'ftp://x' "
        "(expected http://host[:port][/prefix] or https://...)",
        "12:15: upstreams[1].backends: must have at least 1 item",
        "15:15: routes[0].upstream: unknown upstream 'user-svc' "
        "(known: user-service, order-service)",
    ]


def test_wrong_types(errors: Errors) -> None:
    assert errors(
        """\
server:
  workers: many
  listen: [a]
logging:
  access_log: maybe
  level: LOUD
  levels: {aiogate.access: loud}
admin: 5
circuit_breaker:
  failure_threshold: 1.5
  timeout: -1
rate_limits: {dimension: ip}
"""
    ) == [
        "2:12: server.workers: expected a whole number, got 'many'",
        "3:11: server.listen: expected a string, got a list",
        "5:15: logging.access_log: expected true or false, got 'maybe'",
        "6:10: logging.level: invalid value 'loud' "
        "(expected 'debug', 'info', 'warning' or 'error')",
        "7:28: logging.levels[\"aiogate.access\"]: invalid value 'loud' "
        "(expected 'debug', 'info', 'warning' or 'error')",
        "8:8: admin: expected a mapping, got the number 5",
        "10:22: circuit_breaker.failure_threshold: expected a whole number, got the number 1.5",
        "11:12: circuit_breaker.timeout: invalid duration -1: must be a finite number >= 0",
        "12:14: rate_limits: expected a list, got a mapping",
    ]


def test_unknown_keys_point_at_the_key(errors: Errors) -> None:
    assert errors(
        """\
servr:
  listen: x
upstreams:
  - name: a
    backend:
      - url: http://a
"""
    ) == [
        "1:1: servr: unknown key (did you mean 'server'?)",
        "4:5: upstreams[0].backends: missing required key",
        "5:5: upstreams[0].backend: unknown key (did you mean 'backends'?)",
    ]


def test_route_upstream_spellings(errors: Errors) -> None:
    base = MINIMAL_UPSTREAM + "routes:\n"
    assert errors(
        base
        + """\
  - path: /a
    upstream: user-service
    upstreams: user-service
  - path: /b
    upstreams: nope
  - path: /c
"""
    ) == [
        "8:5: routes[0].upstreams: give either 'upstream' or 'upstreams', not both",
        "10:16: routes[1].upstreams: unknown upstream 'nope' (known: user-service)",
        "11:5: routes[2].upstream: missing required key",
    ]


def test_unknown_upstream_without_any_upstreams(errors: Errors) -> None:
    assert errors("routes:\n  - {path: /a, upstream: x}\n") == [
        "2:26: routes[0].upstream: unknown upstream 'x' (no upstreams are defined)"
    ]


def test_cross_reference_errors(errors: Errors) -> None:
    assert errors(
        """\
auth:
  api_key:
    store: redis
upstreams:
  - name: a
    backends: [{url: "http://a"}]
  - name: a
    backends: [{url: "http://b"}]
routes:
  - {path: "/x/{id}", upstream: a, name: r}
  - {path: "/x/{key}", upstream: a, methods: [get], name: r}
  - {path: /y, upstream: a, methods: [GET], auth: {type: [jwt, api_key]}}
  - {path: /y, upstream: a, methods: [POST]}
"""
    ) == [
        "3:12: auth.api_key.store: store 'redis' needs a top-level 'redis' section",
        "7:11: upstreams[1].name: duplicate upstream name 'a' (also upstreams[0])",
        "11:12: routes[1].path: duplicate route: /x/{key} GET is already served by routes[0]",
        "11:59: routes[1].name: duplicate route name 'r' (also routes[0])",
        "12:58: routes[2].auth.type: type 'jwt' needs 'auth.jwt' to be configured",
    ]


def test_cross_references_still_checked_next_to_other_errors(errors: Errors) -> None:
    # upstreams[0] is broken, but its name is known: routes to it are not blamed.
    assert errors(
        """\
upstreams:
  - name: a
    strategy: fastest
    backends: [{url: "http://a"}]
  - name: a
    backends: [{url: "http://b"}]
routes:
  - {path: /a, upstream: a, auth: {type: jwt}}
  - {path: /b, upstream: b}
auth:
  jwt: {algorithms: [XX1]}
"""
    ) == [
        "3:15: upstreams[0].strategy: invalid value 'fastest' (expected 'round_robin', "
        "'least_connections', 'weighted_round_robin', 'ip_hash', 'random' or 'p2c_ewma')",
        "5:11: upstreams[1].name: duplicate upstream name 'a' (also upstreams[0])",
        "9:26: routes[1].upstream: unknown upstream 'b' (known: a)",
        "11:22: auth.jwt.algorithms[0]: unknown algorithm 'XX1' (known: HS256, HS384, HS512, "
        "RS256, RS384, RS512, ES256, ES384, ES512, PS256, PS384, PS512, EdDSA)",
    ]


def test_yaml_syntax_error_is_one_issue(errors: Errors) -> None:
    assert errors("server:\n  listen: [1\n  workers: 2\n") == [
        "3:10: invalid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 2)"
    ]


def test_duplicate_yaml_key(errors: Errors) -> None:
    [issue] = errors("server:\n  workers: 1\n  workers: 2\n")
    assert issue.startswith("3:3: invalid YAML: found duplicate key")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "1:1: the config file is empty"),
        ("- a\n- b\n", "1:1: the top level is not a mapping"),
        ("\n\njust text\n", "1:1: the top level is not a mapping"),
    ],
)
def test_top_level_must_be_a_mapping(errors: Errors, text: str, expected: str) -> None:
    [issue] = errors(text)
    assert issue.startswith(expected)
    assert "expected a mapping of sections" in issue


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    [issue] = info.value.issues
    assert (issue.file, issue.line, issue.col) == (str(path), 1, 1)
    assert "No such file or directory" in issue.message


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"server:\n  listen: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"{path}:2:11: file is not valid UTF-8"


def test_unsupported_tag(errors: Errors) -> None:
    assert errors("admin:\n  token: !vault secret/x\n") == [
        "2:10: admin.token: unsupported YAML tag '!vault'"
    ]


def test_merge_keys_and_anchors(errors: Errors) -> None:
    # Merged keys have no marks of their own: errors fall back to the enclosing mapping.
    assert errors(
        """\
x-defaults: &defaults
  weight: 0
upstreams:
  - name: a
    backends:
      - <<: *defaults
        url: http://a
"""
    ) == [
        "1:1: x-defaults: unknown key",
        "6:9: upstreams[0].backends[0].weight: must be >= 1",
    ]


def test_dates_are_read_as_text(errors: Errors) -> None:
    assert errors("circuit_breaker:\n  timeout: 2024-01-01\n") == [
        "2:12: circuit_breaker.timeout: invalid duration '2024-01-01' "
        "(use e.g. 250ms, 10s, 5m, 1h or a number of seconds)"
    ]


def test_non_string_keys(errors: Errors) -> None:
    assert errors("server:\n  1: x\n") == ["2:3: server.1: unknown key"]


def test_unknown_keys_suggest_the_closest_known_key(errors: Errors) -> None:
    """A typo names the key it was probably meant to be, from the keys valid at that place."""
    assert errors(
        """\
server:
  listn: ":8080"
upstreams:
  - name: a
    backends: [{url: "http://127.0.0.1:9", wieght: 2}]
    health_check: {type: http, intervl: 5s}
routes:
  - path: /x
    upstream: a
    transformations: {request: {add_header: {A: b}}}
    colour: red
"""
    ) == [
        "2:3: server.listn: unknown key (did you mean 'listen'?)",
        "5:44: upstreams[0].backends[0].wieght: unknown key (did you mean 'weight'?)",
        "6:32: upstreams[0].health_check.intervl: unknown key (did you mean 'interval'?)",
        "10:33: routes[0].transformations.request.add_header: unknown key"
        " (did you mean 'add_headers'?)",
        "11:5: routes[0].colour: unknown key",
    ]
