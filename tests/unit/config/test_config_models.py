"""Model-level rules: derived properties, value grammars and in-section checks."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

import pytest
from config_testing import MINIMAL_UPSTREAM, Errors, LoadText
from pydantic import SecretStr, ValidationError

from aiogate.config import (
    ApiKeyConfig,
    ApiKeyEntry,
    BackendConfig,
    GatewayConfig,
    HealthCheckConfig,
    RouteAuth,
    RouteConfig,
    ServerConfig,
    UpstreamConfig,
)
from aiogate.pathnorm import ALLOW_PATH_PARAMETERS, UNESCAPE_SLASHES


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://backend-1:8080", ("http", "backend-1", 8080, "", "backend-1:8080")),
        ("http://svc", ("http", "svc", 80, "", "svc")),
        ("https://svc/api/v1/", ("https", "svc", 443, "/api/v1", "svc")),
        ("https://svc:8443/", ("https", "svc", 8443, "", "svc:8443")),
        ("http://[::1]:9000/p", ("http", "::1", 9000, "/p", "[::1]:9000")),
        ("http://10.0.0.1", ("http", "10.0.0.1", 80, "", "10.0.0.1")),
    ],
)
def test_backend_url_parts(url: str, expected: tuple[str, str, int, str, str]) -> None:
    b = BackendConfig(url=url)
    assert (b.scheme, b.host, b.port, b.base_path, b.authority) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "invalid backend URL"),
        ("backend:80", "invalid backend URL"),
        ("http://user:pw@x", "credentials in a backend URL are not supported"),
        ("http://x/?a=1", "takes no query or fragment"),
        ("http://x/#frag", "takes no query or fragment"),
        ("http://x:99999", "invalid URL"),
        ("http://bad_host!/", "invalid host"),
    ],
)
def test_bad_backend_urls(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BackendConfig(url=url)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:8080", "0.0.0.0", 8080),
        ("[::1]:0", "::1", 0),
        ("localhost:1", "localhost", 1),
        # `:port` is every IPv4 interface; `[::]:port` is the spelling for IPv6 too.
        (":8080", "0.0.0.0", 8080),
        ("[::]:8080", "::", 8080),
    ],
)
def test_listen(listen: str, host: str, port: int) -> None:
    server = ServerConfig(listen=listen)
    assert (server.host, server.port) == (host, port)


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("8080", "expected host:port"),
        (":", "invalid port"),
        ("::1:8080", "write IPv6 as"),
        ("[::1]8080", "expected host:port"),
        ("[nope]:80", "invalid IPv6 address"),
        ("host:http", "invalid port"),
        ("host:70000", "invalid port"),
        ("bad host:80", "invalid host"),
    ],
)
def test_bad_listen(listen: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServerConfig(listen=listen)


@pytest.mark.parametrize(
    ("yaml", "flags"),
    [
        ("{}", 0),
        ("{escaped_slashes: unescape}", UNESCAPE_SLASHES),
        ("{path_parameters: allow}", ALLOW_PATH_PARAMETERS),
        ("{escaped_slashes: unescape, path_parameters: allow}", 3),
        ("{escaped_slashes: reject, path_parameters: reject}", 0),
    ],
)
def test_path_settings(load_text: LoadText, yaml: str, flags: int) -> None:
    assert load_text(f"server: {yaml}\n").server.path_flags == flags


def test_bad_path_settings(errors: Errors) -> None:
    found = errors("server:\n  escaped_slashes: keep\n  path_parameters: strip\n")
    assert len(found) == 2, found
    assert found[0].startswith("2:20: server.escaped_slashes: "), found
    assert "'reject'" in found[0]
    assert "'unescape'" in found[0]
    assert found[1].startswith("3:20: server.path_parameters: "), found


def test_trusted_proxies(load_text: LoadText, errors: Errors) -> None:
    cfg = load_text("server: {trusted_proxies: [10.0.0.0/8, '::1', 192.168.1.7]}\n")
    assert cfg.server.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.7/32"),
    )
    assert load_text("server: {trusted_proxies: 10.1.0.0/16}\n").server.trusted_proxies == (
        ipaddress.ip_network("10.1.0.0/16"),
    )
    assert errors("server:\n  trusted_proxies: [10.0.0.1/8, 5, nope]\n") == [
        "2:21: server.trusted_proxies[0]: invalid CIDR or IP address: 10.0.0.1/8 has host bits set",
        "2:33: server.trusted_proxies[1]: expected a CIDR or an IP address, got the number 5",
        "2:36: server.trusted_proxies[2]: invalid CIDR or IP address: "
        "'nope' does not appear to be an IPv4 or IPv6 network",
    ]


@pytest.mark.parametrize(
    "path", ["/", "/api/users", "/users/{id}", "/files/{*rest}", "/a/{x}/b/{y}", "/v1:batch"]
)
def test_good_route_paths(path: str) -> None:
    assert RouteConfig(path=path, upstream="u").path == path


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("api", "must start with '/'"),
        ("/a//b", "empty segment"),
        ("/a/", "empty segment"),
        ("/a/{*rest}/b", "must be the last segment"),
        ("/a/{id}/{id}", "appears twice"),
        ("/a/{1x}", "is not an identifier"),
        ("/a/{}", "is not an identifier"),
        ("/a/x{id}", "must be plain text, {name} or {*name}"),
        ("/a/../b", "invalid segment '..'"),
        ("/a b", "invalid segment 'a b'"),
        ("/a?b", "invalid segment"),
        # No request path keeps an encoded slash or backslash: the route could never match.
        ("/a%2Fb", "invalid segment 'a%2Fb' in '/a%2Fb': path contains an encoded slash"),
        ("/a/x%5c", "encoded slash or backslash"),
        ("/a\\b", "invalid segment"),
        ("/a/%2e%2e/b", "'.' and '..' segments are not allowed"),
        ("/a/%zz", "malformed percent-encoding"),
    ],
)
def test_bad_route_paths(path: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("*", r"\*")):
        RouteConfig(path=path, upstream="u")


def test_route_methods_and_label() -> None:
    route = RouteConfig(path="/a", upstream="u", methods=("get", "POST", "GET"), name="users")
    assert route.methods == ("GET", "POST")
    assert route.label == "users"
    assert RouteConfig.model_validate(
        {"path": "/a", "upstreams": "u", "methods": "get"}
    ).methods == ("GET",)
    with pytest.raises(ValidationError, match="at least one method"):
        RouteConfig(path="/a", upstream="u", methods=())
    with pytest.raises(ValidationError, match="invalid method 'GE T'"):
        RouteConfig(path="/a", upstream="u", methods=("GE T",))


def test_route_auth(load_text: LoadText, errors: Errors) -> None:
    assert RouteAuth(types=("jwt", "api_key")).types == ("jwt", "api_key")
    assert RouteAuth.model_validate({"type": "api_key"}).types == ("api_key",)
    base = (
        MINIMAL_UPSTREAM
        + f"auth: {{jwt: {{secret: {'s' * 32}}}, api_key: {{keys: [{{key: k, consumer: c}}]}}}}\n"
    )
    cfg = load_text(
        base
        + """\
routes:
  - path: /a
    upstream: user-service
    auth:
      type: [jwt, api_key]
      required_claims: sub
      claims: {role: [admin, ops], tenant: acme}
"""
    )
    auth = cfg.routes[0].auth
    assert auth is not None
    assert auth.types == ("jwt", "api_key")
    assert auth.required_claims == ("sub",)
    assert auth.claims == {"role": ("admin", "ops"), "tenant": "acme"}
    assert errors(
        base
        + """\
routes:
  - path: /a
    upstream: user-service
    auth:
      type: [oauth]
      claims: {role: [admin, {x: 1}], level: {a: b}}
"""
    ) == [
        "10:14: routes[0].auth.type[0]: invalid value 'oauth'"
        " (expected 'jwt', 'api_key' or 'mtls')",
        "11:30: routes[0].auth.claims.role[1]: expected a string, got a mapping",
    ]
    assert errors(base + "routes: [{path: /a, upstream: user-service, auth: {type: []}}]\n") == [
        "6:58: routes[0].auth.type: must have at least 1 item"
    ]
    assert errors(base + "routes: [{path: /a, upstream: user-service, auth: {claims: {l: {}}}}]\n")[
        -1
    ].endswith("routes[0].auth.claims.l: expected a string or a list of strings, got a mapping")


def test_jwt_rules(load_text: LoadText, errors: Errors, tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("pem")
    cfg = load_text(
        f"""\
auth:
  jwt:
    algorithms: RS256
    public_key_file: {key}
    audience: [a, b]
    required_claims: [sub]
    forward_claims: {{sub: X-User}}
    leeway: 5
"""
    )
    jwt = cfg.auth.jwt
    assert jwt is not None
    assert (jwt.algorithms, jwt.audience, jwt.leeway) == (("RS256",), ("a", "b"), 5.0)
    assert jwt.forward_claims == {"sub": "X-User"}
    assert errors(
        f"""\
auth:
  jwt:
    algorithms: [HS256, ES256, EdDSA]
    secret: ""
    public_key_file: {tmp_path}/missing.pem
    jwks_url: ftp://x
    audience: [a, 5]
    forward_claims: {{sub: "X User"}}
"""
    ) == [
        "4:13: auth.jwt.secret: must not be empty",
        f"5:22: auth.jwt.public_key_file: cannot read '{tmp_path}/missing.pem': "
        "No such file or directory",
        "6:15: auth.jwt.jwks_url: must be an http:// or https:// URL, got 'ftp://x'",
        "7:19: auth.jwt.audience[1]: expected a non-empty audience, got the number 5",
        "8:27: auth.jwt.forward_claims.sub: invalid header name 'X User'",
    ]
    assert errors("auth:\n  jwt:\n    algorithms: [HS256, ES256]\n    jwks_url: https://x\n") == [
        "3:18: auth.jwt.algorithms[0]: algorithm HS256 needs 'secret'"
    ]
    assert errors("auth:\n  jwt:\n    algorithms: [ES256]\n") == [
        "3:18: auth.jwt.algorithms[0]: algorithm ES256 needs one of 'public_key', "
        "'public_key_file' or 'jwks_url'"
    ]
    assert errors("auth:\n  jwt:\n    algorithms: []\n    secret: x\n") == [
        "3:17: auth.jwt.algorithms: must list at least one algorithm"
    ]


def test_api_keys(load_text: LoadText, errors: Errors) -> None:
    digest = hashlib.sha256(b"k2").hexdigest()
    cfg = load_text(
        f"""\
auth:
  api_key:
    keys:
      - {{key: k1, consumer: alice}}
      - {{key_sha256: "{digest.upper()}", consumer: bob}}
"""
    )
    api_key = cfg.auth.api_key
    assert api_key is not None
    assert api_key.header == "X-API-Key"
    assert api_key.keys[1].key_sha256 == digest
    assert api_key.keys[0].digest == hashlib.sha256(b"k1").hexdigest()
    assert api_key.keys[1].digest == digest
    assert errors(
        f"""\
auth:
  api_key:
    header: "Bad Header"
    keys:
      - {{consumer: a}}
      - {{key: x, key_sha256: "{digest}", consumer: b}}
      - {{key_sha256: abc, consumer: c}}
      - {{key: "", consumer: d}}
      - {{key: x}}
      - {{key: k2, consumer: e}}
      - {{key_sha256: "{digest}", consumer: f}}
"""
    ) == [
        "3:13: auth.api_key.header: invalid header name 'Bad Header'",
        "5:9: auth.api_key.keys[0]: needs 'key' or 'key_sha256'",
        "6:30: auth.api_key.keys[1].key_sha256: give either 'key' or 'key_sha256', not both",
        "7:22: auth.api_key.keys[2].key_sha256: must be 64 hex digits (the SHA-256 of the key)",
        "8:15: auth.api_key.keys[3].key: must not be empty",
        "9:9: auth.api_key.keys[4].consumer: missing required key",
    ]
    keys = (
        ApiKeyEntry(key=SecretStr("k2"), consumer="e"),
        ApiKeyEntry(key_sha256=digest, consumer="f"),
    )
    with pytest.raises(ValidationError, match=r"duplicate API key \(same as keys\[0\]\)"):
        ApiKeyConfig(keys=keys)


def test_health_checks(load_text: LoadText, errors: Errors) -> None:
    cfg = load_text(
        """\
upstreams:
  - name: a
    backends: [{url: "http://a"}]
    health_check: {type: script, command: "/bin/check --port 80 'x y'"}
  - name: b
    backends: [{url: "http://b"}]
    health_check: {type: script, command: [/bin/true]}
  - name: c
    backends: [{url: "http://c"}]
    health_check: {type: tcp}
"""
    )
    checks = [u.health_check for u in cfg.upstreams]
    assert [c.command if c else None for c in checks] == [
        ("/bin/check", "--port", "80", "x y"),
        ("/bin/true",),
        None,
    ]
    assert errors(
        """\
upstreams:
  - name: a
    backends: [{url: "http://a"}]
    health_check: {type: script}
  - name: b
    backends: [{url: "http://b"}]
    health_check: {command: x, path: health}
  - name: c
    backends: [{url: "http://c"}]
    health_check: {type: script, command: "unterminated 'quote"}
"""
    ) == [
        "4:26: upstreams[0].health_check.type: type 'script' needs a 'command'",
        "7:38: upstreams[1].health_check.path: must start with '/', got 'health'",
        "10:43: upstreams[2].health_check.command: cannot split command: No closing quotation",
    ]
    assert errors(
        """\
upstreams:
  - name: b
    backends: [{url: "http://b"}]
    health_check: {command: x}
"""
    ) == [
        "4:29: upstreams[0].health_check.command: 'command' is only used with type 'script' "
        "(type is 'http')"
    ]


def test_upstream_rules(errors: Errors) -> None:
    assert errors(
        """\
upstreams:
  - name: ""
    backends:
      - url: http://a
      - url: http://a:80/
    retries: {attempts: -1, backoff: 1s, max_backoff: 100ms}
    circuit_breaker: {half_open_requests: 0}
"""
    ) == [
        "2:11: upstreams[0].name: must not be empty",
        "6:25: upstreams[0].retries.attempts: must be >= 0",
        "7:43: upstreams[0].circuit_breaker.half_open_requests: must be >= 1",
    ]
    assert errors(
        """\
upstreams:
  - name: a
    backends: [{url: "http://a"}]
    retries: {backoff: 1s, max_backoff: 100ms}
"""
    ) == ["4:41: upstreams[0].retries.max_backoff: must be >= backoff"]
    assert errors(
        """\
upstreams:
  - name: a
    backends: [{url: "http://a"}, {url: "http://a:80/"}]
"""
    ) == ["3:41: upstreams[0].backends[1].url: duplicate backend (same as backends[0])"]


def test_route_sections(load_text: LoadText, errors: Errors) -> None:
    base = MINIMAL_UPSTREAM + "routes:\n  - path: /a\n    upstream: user-service\n"
    cfg = load_text(
        base
        + """\
    timeout: 2s
    rate_limit: {requests: 5, window: 1s, dimension: "header:X-Tenant"}
    cors: {allowed_origins: "*", allowed_methods: [get], max_age: 10m, exposed_headers: X-Id}
"""
    )
    route = cfg.routes[0]
    assert route.timeout == 2.0
    assert [rule.dimension for rule in route.rate_limit] == ["header:X-Tenant"]
    assert route.cors is not None
    assert (route.cors.allowed_origins, route.cors.allowed_methods) == (("*",), ("GET",))
    assert (route.cors.max_age, route.cors.exposed_headers) == (600.0, ("X-Id",))
    assert errors(
        base
        + """\
    timeout: 0
    transformations:
      request:
        add_headers: {"Bad Name": x, X-Ok: "a\\nb"}
        remove_headers: ["X Bad"]
"""
    ) == [
        "8:14: routes[0].timeout: must be > 0",
        '11:23: routes[0].transformations.request.add_headers["Bad Name"]: '
        "invalid header name 'Bad Name'",
        "11:44: routes[0].transformations.request.add_headers.X-Ok: "
        "header value must not contain a line break",
        "12:26: routes[0].transformations.request.remove_headers[0]: invalid header name 'X Bad'",
    ]


def test_misc_sections(load_text: LoadText, errors: Errors) -> None:
    cfg = load_text(
        """\
logging: {level: DEBUG, format: console, levels: {aiogate.access: WARNING}, access_log: false}
redis: {url: "unix:///run/redis.sock", timeout: 1s}
rate_limits: [{dimension: api_key, limit: 1, window: 1h}]
"""
    )
    assert (cfg.logging.level, cfg.logging.format) == ("debug", "console")
    assert cfg.logging.levels == {"aiogate.access": "warning"}
    assert cfg.redis is not None
    assert cfg.redis.timeout == 1.0
    assert errors(
        """\
redis: {url: "http://x"}
rate_limits: [{dimension: cookie, limit: 0, window: 1s}]
"""
    ) == [
        "1:14: redis.url: must start with redis://, rediss:// or unix://",
        "2:27: rate_limits[0].dimension: unknown dimension 'cookie' "
        "(use ip, user, api_key, route or header:<Name>)",
        "2:42: rate_limits[0].limit: must be > 0",
    ]


def test_gateway_config_checks_references_when_built_in_code() -> None:
    upstream = UpstreamConfig(name="u", backends=(BackendConfig(url="http://a"),))
    cfg = GatewayConfig(upstreams=(upstream,), routes=(RouteConfig(path="/a", upstream="u"),))
    assert cfg.upstream_by_name("u") is upstream
    with pytest.raises(KeyError):
        cfg.upstream_by_name("nope")
    with pytest.raises(ValidationError, match=r"routes\[0\].upstream: unknown upstream 'x'"):
        GatewayConfig(upstreams=(upstream,), routes=(RouteConfig(path="/a", upstream="x"),))


def test_models_are_frozen() -> None:
    cfg = GatewayConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.server.workers = 2  # type: ignore[misc]


def test_script_check_environment_keys() -> None:
    check = HealthCheckConfig(type="script", command=("true",), env={"A": "1"})
    assert (dict(check.env), check.inherit_env) == ({"A": "1"}, False)
    with pytest.raises(ValidationError, match="invalid environment variable name"):
        HealthCheckConfig(type="script", command=("true",), env={"A=B": "1"})
    with pytest.raises(ValidationError, match="'env' is only used with type 'script'"):
        HealthCheckConfig(type="http", env={"A": "1"})
    with pytest.raises(ValidationError, match="'inherit_env' is only used with type 'script'"):
        HealthCheckConfig(type="tcp", inherit_env=True)


def test_short_and_published_secrets_are_refused(errors: Errors) -> None:
    """An HMAC secret under 32 bytes, or any credential printed in our docs, fails `check`."""
    short = "auth:\n  jwt:\n    secret: too-short\n"
    assert errors(short) == [
        "3:13: auth.jwt.secret: too short for an HMAC key (9 bytes; at least 32, e.g. "
        "`python3 -c 'import secrets; print(secrets.token_hex(32))'`)"
    ]
    published = "this value is published in aiogate's documentation; use a random one"
    demo = "change-me-demo-secret-change-me-demo-secret"
    assert errors(f"auth:\n  jwt:\n    secret: {demo}\n") == [f"3:13: auth.jwt.secret: {published}"]
    keys = "auth:\n  api_key:\n    keys:\n      - {key: demo-key, consumer: c}\n"
    assert errors(keys) == [f"4:15: auth.api_key.keys[0].key: {published}"]
    digest = hashlib.sha256(b"my-secret-key").hexdigest()
    assert errors(f"auth:\n  api_key:\n    keys: [{{key_sha256: {digest}, consumer: c}}]\n")
    assert errors("admin:\n  token: change-me\n") == [f"2:10: admin.token: {published}"]
    assert errors("admin:\n  token: ${env:T}\n", env={"T": "REPLACE-WITH-A-RANDOM-TOKEN"})


def test_a_short_secret_is_fine_without_hmac(load_text: LoadText, tmp_path: Path) -> None:
    """Only HS* algorithms use `secret`; with RS256 alone its length does not matter."""
    key = tmp_path / "k.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\n")
    cfg = load_text(
        f"auth:\n  jwt:\n    algorithms: [RS256]\n    secret: x\n    public_key_file: {key}\n"
    )
    assert cfg.auth.jwt is not None
