"""The contract's reference config and every roadmap snippet load unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_testing import CONTRACT_EXAMPLE, ENV, MINIMAL_UPSTREAM, LoadText, load_contract_example

from aiogate.config import GatewayConfig


def test_contract_example(load_text: LoadText, tmp_path: Path) -> None:
    cfg = load_contract_example(load_text, tmp_path)
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 8080)
    assert cfg.server.max_body_size == 10 * 1024 * 1024
    assert cfg.server.header_timeout == 10.0
    assert cfg.server.idle_timeout == 75.0
    assert cfg.server.body_timeout == 30.0
    assert cfg.server.max_connections == 10000
    assert cfg.server.shutdown_timeout == 30.0
    assert cfg.admin.token is not None
    assert cfg.admin.token.get_secret_value() == "admin-token"
    assert cfg.redis is not None
    assert cfg.redis.url == "redis://127.0.0.1:6379/0"
    jwt = cfg.auth.jwt
    assert jwt is not None
    assert jwt.algorithms == ("HS256", "RS256")
    assert jwt.secret is not None
    assert jwt.secret.get_secret_value() == ENV["JWT_SECRET"]
    assert (jwt.issuer, jwt.audience, jwt.leeway) == ("https://issuer.example", "my-api", 30.0)
    api_key = cfg.auth.api_key
    assert api_key is not None
    assert api_key.keys[0].consumer == "alice"
    assert api_key.keys[0].key is not None
    assert api_key.keys[0].key.get_secret_value() == ENV["DEMO_KEY"]
    assert cfg.rate_limits[0].window == 60.0
    upstream = cfg.upstream_by_name("user-service")
    assert upstream.retries.attempts == 2
    assert upstream.health_check is not None
    assert upstream.health_check.interval == 10.0
    route = cfg.routes[0]
    assert route.methods == ("GET", "POST")
    assert route.upstream == "user-service"
    assert route.auth is not None
    assert route.auth.types == ("jwt",)
    assert [(r.requests, r.dimension) for r in route.rate_limit] == [(100, "ip")]
    assert route.transformations is not None
    assert route.transformations.response is not None
    assert route.transformations.response.add_headers == {"X-Response-Time": "${latency}"}
    assert route.cors is not None
    assert route.cors.allowed_origins == ("https://example.com",)


def test_contract_example_spelled_with_upstreams(load_text: LoadText, tmp_path: Path) -> None:
    key_file = tmp_path / "jwt.pub"
    key_file.write_text("key")
    text = CONTRACT_EXAMPLE.replace("/etc/aiogate/jwt.pub", str(key_file)).replace(
        "    upstream: user-service", "    upstreams: user-service"
    )
    assert load_text(text, env=ENV).routes[0].upstream == "user-service"


RATE_LIMITS = """\
rate_limits:
  - dimension: ip
    limit: 100
    window: 60s
  - dimension: user
    limit: 1000
    window: 3600s
"""

CIRCUIT_BREAKER = """\
circuit_breaker:
  failure_threshold: 5
  success_threshold: 2
  timeout: 60s
  half_open_requests: 3
"""

UPSTREAMS = """\
upstreams:
  - name: user-service
    strategy: round_robin
    backends:
      - url: http://backend-1:8080
        weight: 1
      - url: http://backend-2:8080
        weight: 2
    health_check:
      path: /health
      interval: 10s
      timeout: 5s
      unhealthy_threshold: 3
      healthy_threshold: 2
"""

ROUTES = """\
routes:
  - path: /api/v1/users
    methods: [GET, POST]
    upstreams: user-service
    auth:
      type: jwt
    rate_limit:
      requests: 100
      window: 60s
    transformations:
      request:
        add_headers:
          X-Gateway: "rust-gateway"
        remove_headers:
          - X-Internal
      response:
        add_headers:
          X-Response-Time: "${latency}"
    cors:
      allowed_origins: ["https://example.com"]
      allowed_methods: [GET, POST]
"""

JWT_AUTH = "auth:\n  jwt:\n    secret: s3cret-s3cret-s3cret-s3cret-s3cret\n"


def test_roadmap_rate_limits(load_text: LoadText) -> None:
    rules = load_text(RATE_LIMITS).rate_limits
    assert [(r.dimension, r.limit, r.window) for r in rules] == [
        ("ip", 100, 60.0),
        ("user", 1000, 3600.0),
    ]


def test_roadmap_circuit_breaker(load_text: LoadText) -> None:
    breaker = load_text(CIRCUIT_BREAKER).circuit_breaker
    assert (breaker.failure_threshold, breaker.success_threshold) == (5, 2)
    assert (breaker.timeout, breaker.half_open_requests) == (60.0, 3)


def test_roadmap_upstreams(load_text: LoadText) -> None:
    upstream = load_text(UPSTREAMS).upstreams[0]
    assert [(b.host, b.port, b.weight) for b in upstream.backends] == [
        ("backend-1", 8080, 1),
        ("backend-2", 8080, 2),
    ]
    assert upstream.health_check is not None
    assert upstream.health_check.type == "http"
    assert upstream.health_check.timeout == 5.0


def test_roadmap_routes(load_text: LoadText) -> None:
    route = load_text(UPSTREAMS + ROUTES + JWT_AUTH).routes[0]
    assert route.path == "/api/v1/users"
    assert route.upstream == "user-service"
    assert route.label == "/api/v1/users"
    assert route.transformations is not None
    assert route.transformations.request is not None
    assert route.transformations.request.add_headers == {"X-Gateway": "rust-gateway"}
    assert route.transformations.request.remove_headers == ("X-Internal",)


def test_all_roadmap_snippets_together(load_text: LoadText) -> None:
    cfg = load_text(RATE_LIMITS + CIRCUIT_BREAKER + UPSTREAMS + ROUTES + JWT_AUTH)
    assert len(cfg.routes) == 1


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_minimal_documents_are_not_configs(load_text: LoadText, text: str) -> None:
    from aiogate.config import ConfigError

    with pytest.raises(ConfigError, match="the config file is empty"):
        load_text(text)


def test_defaults(load_text: LoadText) -> None:
    cfg = load_text(MINIMAL_UPSTREAM)
    assert cfg.server == GatewayConfig().server
    assert cfg.admin.token is None
    assert cfg.redis is None
    assert cfg.routes == ()
    upstream = cfg.upstreams[0]
    assert (upstream.timeout, upstream.connect_timeout, upstream.max_idle_connections) == (
        30.0,
        5.0,
        64,
    )
    assert (upstream.retries.backoff, upstream.retries.max_backoff) == (0.025, 0.25)
