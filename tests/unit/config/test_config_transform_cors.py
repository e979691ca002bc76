"""Config of route transformations and CORS: accepted shapes and errors with positions."""

from __future__ import annotations

from config_testing import MINIMAL_UPSTREAM, Errors, LoadText

BASE = MINIMAL_UPSTREAM + "routes:\n  - path: /v1\n    upstream: user-service\n"


def test_full_transformations_load(load_text: LoadText) -> None:
    cfg = load_text(
        BASE
        + """\
    transformations:
      request:
        add_headers: {X-Gateway: aiogate, X-Who: "${consumer}@${route}"}
        remove_headers: X-Internal
        rename_headers: {X-Old: X-New}
        rewrite: {prefix: /}
        add_query: {version: 2}
        remove_query: [debug]
        json_body: {add: {source: gw, meta: {a: [1, 2]}}, remove: [password], max_size: 1KiB}
      response:
        add_headers: {X-Response-Time: "${latency}", X-Backend: "${backend}"}
        remove_headers: [Server]
        status_map: {502: 503}
        json_body: {remove: [internal]}
cors:
  allowed_origins: "https://*.example.com"
"""
    )
    t = cfg.routes[0].transformations
    assert t is not None
    assert t.request is not None
    assert t.response is not None
    assert t.request.rewrite is not None
    assert t.request.rewrite.prefix == "/"
    assert t.request.add_query == {"version": "2"}
    assert t.request.json_body is not None
    assert t.request.json_body.add == {"source": "gw", "meta": {"a": [1, 2]}}
    assert type(t.request.json_body.add["meta"]) is dict  # plain, orjson-serialisable
    assert t.request.json_body.max_size == 1024
    assert t.response.status_map == {502: 503}
    assert cfg.cors is not None
    assert cfg.cors.allowed_origins == ("https://*.example.com",)


def test_gateway_owned_and_hop_by_hop_headers_are_rejected(errors: Errors) -> None:
    assert errors(
        BASE
        + """\
    transformations:
      request:
        add_headers: {X-Forwarded-For: 1.2.3.4, Connection: close}
        remove_headers: [X-Request-ID]
        rename_headers: {X-A: Host}
      response:
        add_headers: {Transfer-Encoding: chunked}
"""
    ) == [
        # One issue per field (the first offending entry), each at its own line and column.
        "10:40: routes[0].transformations.request.add_headers.X-Forwarded-For: 'X-Forwarded-For'"
        " is a hop-by-hop or gateway-owned header and cannot be added",
        "11:26: routes[0].transformations.request.remove_headers[0]: 'X-Request-ID'"
        " is a hop-by-hop or gateway-owned header and cannot be removed",
        "12:31: routes[0].transformations.request.rename_headers.X-A: 'Host'"
        " is a hop-by-hop or gateway-owned header",
        "14:42: routes[0].transformations.response.add_headers.Transfer-Encoding:"
        " 'Transfer-Encoding' is a hop-by-hop or gateway-owned header and cannot be added",
    ]


def test_template_variables_are_checked(errors: Errors, load_text: LoadText) -> None:
    found = errors(
        BASE
        + """\
    transformations:
      request:
        add_headers: {X-A: "${latncy}", X-B: "${backend}"}
"""
    )
    assert len(found) == 1
    assert found[0].startswith("10:28: routes[0].transformations.request.add_headers.X-A: ")
    assert "unknown variable ${latncy}" in found[0]
    found = errors(BASE + "    transformations: {request: {add_headers: {X-B: '${backend}'}}}\n")
    assert len(found) == 1
    assert "${backend} is not known here" in found[0]
    # Upper-case `${...}` is not ours: verbatim (the env loader resolves only ${env:...}).
    load_text(BASE + "    transformations: {response: {add_headers: {X-E: '${HOME}'}}}\n")


def test_rewrite_and_status_map_errors(errors: Errors) -> None:
    found = errors(
        BASE
        + """\
    transformations:
      request:
        rewrite: {regex: "^/v1/(.*)$", replacement: "/\\\\2"}
      response:
        status_map: {502: 304, 100: 200}
"""
    )
    assert found == [
        "10:53: routes[0].transformations.request.rewrite.replacement: "
        "refers to a group the regex does not have: 2",
        "12:21: routes[0].transformations.response.status_map: "
        "status 304 cannot be mapped (200-599, not 204 or 304)",
    ]
    found = errors(BASE + "    transformations: {request: {rewrite: {prefix: v2}}}\n")
    assert len(found) == 1
    assert "must be a path starting with '/'" in found[0]
    found = errors(
        BASE + "    transformations: {request: {rewrite: {regex: '(', replacement: /}}}\n"
    )
    assert len(found) == 1
    assert "invalid regular expression" in found[0]


def test_cors_origin_errors(errors: Errors) -> None:
    found = errors(
        BASE
        + """\
    cors:
      allowed_origins: ["https://ok.example", "example.com", "https://a.example/path"]
"""
    )
    assert len(found) == 1
    assert found[0].startswith("9:47: routes[0].cors.allowed_origins[1]: invalid origin")
    found = errors(BASE + "    cors: {allowed_origins: 'https://a.example/path'}\n")
    assert len(found) == 1
    assert "invalid origin 'https://a.example/path'" in found[0]
    found = errors(BASE + "    cors: {allowed_origins: '*', allow_credentials: true}\n")
    assert len(found) == 1
    assert "allow_credentials" in found[0]


def test_rewrite_text_must_have_a_canonical_form(errors: Errors) -> None:
    """A rewrite must not bring back an encoded slash or a `re` escape the request path lacks."""
    at = "routes[0].transformations.request.rewrite"
    cases = [
        ("{prefix: /a%2Fb}", "prefix", "encoded slash or backslash"),
        ("{prefix: /a%zz}", "prefix", "malformed percent-encoding"),
        ("{regex: '^/v1/(.*)$', replacement: '/x%2f\\1'}", "replacement", "encoded slash"),
        ("{regex: '^/v1/(.*)$', replacement: '/x%\\1'}", "replacement", "malformed"),
        ("{regex: '^/v1/(.*)$', replacement: '/x%2\\1'}", "replacement", "malformed"),
        ("{regex: '^/v1/(.*)$', replacement: '/x\\n\\1'}", "replacement", "a backslash may only"),
        ("{regex: '^/v1/(.*)$', replacement: '/x\\\\\\1'}", "replacement", "a backslash may only"),
    ]
    for rewrite, key, message in cases:
        found = errors(BASE + f"    transformations: {{request: {{rewrite: {rewrite}}}}}\n")
        assert len(found) == 1, (rewrite, found)
        assert f"{at}.{key}: " in found[0], (rewrite, found)
        assert message in found[0], (rewrite, found)


def test_rewrite_text_that_is_canonical_or_resolvable_loads(load_text: LoadText) -> None:
    for rewrite in (
        "{prefix: /a/../b}",
        "{prefix: '/x;v=1'}",
        "{regex: '^/v1/(.*)$', replacement: '/v2/%7E\\1/%20\\g<1>'}",
    ):
        cfg = load_text(BASE + f"    transformations: {{request: {{rewrite: {rewrite}}}}}\n")
        assert cfg.routes[0].transformations is not None, rewrite
