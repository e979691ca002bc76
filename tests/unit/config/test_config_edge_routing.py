"""Config of host/header routes, templates and JSON Pointers; `check` reports every error."""

from __future__ import annotations

from config_testing import MINIMAL_UPSTREAM, Errors, LoadText


def test_hosts_and_headers_load(load_text: LoadText) -> None:
    config = load_text(
        MINIMAL_UPSTREAM
        + """\
routes:
  - path: /api
    upstream: user-service
    hosts: [API.Example.com, "*.example.com", "api.example.com.", "[::1]"]
    headers: {X-Version: 2}
  - path: /api
    upstream: user-service
    hosts: api.example.net
"""
    )
    first, second = config.routes
    assert first.hosts == ("api.example.com", "*.example.com", "[::1]")
    assert dict(first.headers) == {"X-Version": "2"}
    assert second.hosts == ("api.example.net",)


def test_invalid_hosts_and_headers(errors: Errors) -> None:
    invalid = (
        " (expected a host name such as api.example.com or a wildcard such as *.example.com,"
        " without a port)"
    )
    assert errors(
        MINIMAL_UPSTREAM
        + """\
routes:
  - {path: /a, upstream: user-service, hosts: [ok.test, api.example.com:8080]}
  - {path: /b, upstream: user-service, hosts: "*"}
  - {path: /c, upstream: user-service, hosts: [a.*.com]}
  - {path: /d, upstream: user-service, hosts: [""]}
  - {path: /e, upstream: user-service, headers: {Host: a.test}}
  - {path: /f, upstream: user-service, headers: {X-A: "1", x-a: "2"}}
"""
    ) == [
        f"6:57: routes[0].hosts[1]: invalid host 'api.example.com:8080'{invalid}",
        f"7:47: routes[1].hosts: invalid host '*'{invalid}",
        f"8:48: routes[2].hosts[0]: invalid host 'a.*.com'{invalid}",
        f"9:48: routes[3].hosts[0]: invalid host ''{invalid}",
        "10:56: routes[4].headers.Host: match hosts with the route's `hosts`, not a Host header",
        "11:65: routes[5].headers.x-a: header 'x-a' is given twice (names are case-insensitive)",
    ]


def test_duplicates_consider_hosts_and_headers(errors: Errors) -> None:
    base = MINIMAL_UPSTREAM + "routes:\n"

    def r(extra: str = "") -> str:
        return f"  - {{path: /api, upstream: user-service{extra}}}\n"

    # Different hosts, host vs no host, different headers: no duplicates.
    text = (
        base
        + r(", hosts: [a.test]")
        + r(", hosts: [b.test]")
        + r()
        + r(", headers: {X-V: '1'}")
        + r(", headers: {X-V: '2'}")
        + r(", hosts: ['*.a.test']")
    )
    assert errors(text + r(", hosts: [c.test, b.test]") + r(", headers: {x-v: '1'}")) == [
        "12:12: routes[6].path: duplicate route: /api (every method) on host b.test"
        " is already served by routes[1]",
        "13:12: routes[7].path: duplicate route: /api (every method) with the same headers"
        " is already served by routes[3]",
    ]


def test_template_errors_have_positions(errors: Errors) -> None:
    assert errors(
        MINIMAL_UPSTREAM
        + """\
routes:
  - path: /api
    upstream: user-service
    transformations:
      request:
        add_headers:
          X-Sub: "${claims.sub}"
          X-Bad: "${claim.sub}"
      response:
        add_headers: {X-Q: "${query.page}", X-T: "${tls.cipher}"}
  - path: /b
    upstream: user-service
    transformations: {request: {add_headers: {X-Open: "${header.X-A"}}}
"""
    ) == [
        "12:18: routes[0].transformations.request.add_headers.X-Bad: unknown variable"
        " ${claim.sub} (known: ${backend}, ${client_ip}, ${consumer}, ${latency},"
        " ${request_id}, ${route}, ${upstream}, ${claims.NAME}, ${header.NAME}, ${query.NAME},"
        " ${tls.client_subject})",
        "14:50: routes[0].transformations.response.add_headers.X-T: unknown variable"
        " ${tls.cipher} (known: ${tls.client_subject})",
        "17:55: routes[1].transformations.request.add_headers.X-Open: '${' starts a variable"
        " that is not closed with '}': '${header.X-A'",
    ]


def test_json_pointer_errors_have_positions(errors: Errors) -> None:
    assert errors(
        MINIMAL_UPSTREAM
        + """\
routes:
  - path: /api
    upstream: user-service
    transformations:
      request:
        json_body:
          add: {/meta/source: gw, /bad~2: 1}
          remove: [/ok, /a~]
"""
    ) == [
        "11:43: routes[0].transformations.request.json_body.add[\"/bad~2\"]: '/bad~2': '~' must"
        " be followed by 0 or 1 (~0 is '~', ~1 is '/')",
        "12:25: routes[0].transformations.request.json_body.remove[1]: '/a~': '~' must be"
        " followed by 0 or 1 (~0 is '~', ~1 is '/')",
    ]


def test_schema_and_reference_errors_in_one_run(errors: Errors) -> None:
    # Each broken route still takes part in the cross-reference checks with its valid keys.
    assert errors(
        MINIMAL_UPSTREAM
        + """\
  - name: other
    backends: [{url: http://127.0.0.1:9}]
    timeout: banana
routes:
  - path: /x
    upstream: nope
    rate_limit: {requests: -1, window: 1s}
  - path: /y
    upstream: user-service
    transformations: {request: {add_headers: {X-A: "${nope}"}}}
  - path: /y
    upstream: user-service
  - path: /z
    upstream: 12x
    auth: {type: jwt}
    methods: 12
  - path: /z
    methods: [GET]
    upstream: user-service
server:
  max_body_size: lots
"""
    ) == [
        "7:14: upstreams[1].timeout: invalid duration 'banana' (use e.g. 250ms, 10s, 5m, 1h"
        " or a number of seconds)",
        "10:15: routes[0].upstream: unknown upstream 'nope' (known: user-service, other)",
        "11:28: routes[0].rate_limit.requests: must be > 0",
        "14:52: routes[1].transformations.request.add_headers.X-A: unknown variable ${nope}"
        " (known: ${backend}, ${client_ip}, ${consumer}, ${latency}, ${request_id}, ${route},"
        " ${upstream}, ${claims.NAME}, ${header.NAME}, ${query.NAME}, ${tls.client_subject})",
        "15:11: routes[2].path: duplicate route: /y (every method) is already served by routes[1]",
        "18:15: routes[3].upstream: unknown upstream '12x' (known: user-service, other)",
        "19:18: routes[3].auth.type: type 'jwt' needs 'auth.jwt' to be configured",
        "20:14: routes[3].methods: expected a list, got the number 12",
        "25:18: server.max_body_size: invalid size 'lots' (use e.g. 512, 64KiB, 10MiB, 1GB)",
    ]
