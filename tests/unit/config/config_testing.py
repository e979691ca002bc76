"""Shared data and types for the config tests (conftest.py holds the fixtures).

A uniquely named module rather than `conftest`, so that importing it can never pick up another
directory's conftest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiogate.config import GatewayConfig

WriteConfig = Callable[[str], Path]
LoadText = Callable[..., GatewayConfig]
Errors = Callable[..., list[str]]

# The smallest valid config that routes somewhere; partial snippets are merged into it.
MINIMAL_UPSTREAM = """\
upstreams:
  - name: user-service
    backends:
      - url: http://127.0.0.1:9001
"""

# Verbatim from CONTRACT.md "Config file" (only public_key_file is pointed at a temp file).
CONTRACT_EXAMPLE = """\
server:
  listen: "0.0.0.0:8080"          # host:port of the proxy listener
  workers: 1                      # processes sharing the port (SO_REUSEPORT)
  max_body_size: 10MiB            # larger request bodies -> 413 (counted while streaming, too)
  header_timeout: 10s             # a client that has not sent its full headers by then: 408 and close
  idle_timeout: 75s               # keep-alive connections idle longer are closed
  trusted_proxies: []             # CIDRs whose X-Forwarded-For is believed
  body_timeout: 30s               # a request body that stalls this long between reads: 408 and close
  max_connections: 10000          # open client connections per worker; beyond it new ones are refused
  shutdown_timeout: 30s
admin:
  listen: "127.0.0.1:9901"        # /metrics, /healthz, /readyz, /admin/* live here
  token: ${env:AIOGATE_ADMIN_TOKEN}   # bearer token for /admin/*; unset = admin API off
logging:
  level: info                     # plus per-logger levels under `levels:`
  format: json                    # json (default) | console
redis:
  url: redis://127.0.0.1:6379/0   # optional; without it every limiter is local
auth:
  jwt:
    algorithms: [HS256, RS256]    # allow-list; the token's alg must be in it
    secret: ${env:JWT_SECRET}     # for HS*
    public_key_file: /etc/aiogate/jwt.pub   # for RS*/ES* (or public_key: PEM, or jwks_url)
    issuer: https://issuer.example          # optional; checked when set
    audience: my-api                        # optional; checked when set
    leeway: 30s
  api_key:
    header: X-API-Key
    keys:                         # in-memory store
      - key: ${env:DEMO_KEY}      # or key_sha256: <hex>
        consumer: alice
    store: memory                 # memory | redis: key K is found at `aiogate:apikey:<sha256 hex of K>`,
                                  # a JSON object with at least "consumer"
rate_limits:                      # applied to every route
  - dimension: ip                 # ip | user | api_key | route | header:<Name>
    limit: 100
    window: 60s
circuit_breaker:                  # default for every upstream; an upstream may override it
  failure_threshold: 5
  success_threshold: 2
  timeout: 60s
  half_open_requests: 3
upstreams:
  - name: user-service
    strategy: round_robin         # round_robin | least_connections | weighted_round_robin | ip_hash | random
    backends:
      - url: http://127.0.0.1:9001
        weight: 1
    health_check:
      type: http                  # http | tcp | script
      path: /health
      interval: 10s
      timeout: 5s
      unhealthy_threshold: 3
      healthy_threshold: 2
    retries:
      attempts: 2                 # extra tries after the first; 0 = none
    timeout: 30s                  # whole upstream exchange; expiry -> 504
routes:
  - path: /api/users              # see "Routing" below
    methods: [GET, POST]          # default: every method
    upstream: user-service        # `upstreams: user-service` is accepted as the same thing
    auth: {type: jwt}             # jwt | api_key | [jwt, api_key] (either one) ; omitted = public
    rate_limit: {requests: 100, window: 60s}   # dimension defaults to ip
    transformations:
      request:
        add_headers: {X-Gateway: aiogate}
        remove_headers: [X-Internal]
      response:
        add_headers: {X-Response-Time: "${latency}"}
    cors:
      allowed_origins: ["https://example.com"]
      allowed_methods: [GET, POST]
"""  # noqa: E501 - verbatim, long comments included

ENV = {
    "AIOGATE_ADMIN_TOKEN": "admin-token",
    "JWT_SECRET": "jwt-secret-for-tests-" + "0" * 32,
    "DEMO_KEY": "alice-test-key",
}


def load_contract_example(load_text: LoadText, tmp_path: Path) -> GatewayConfig:
    key_file = tmp_path / "jwt.pub"
    key_file.write_text("-----BEGIN PUBLIC KEY-----\n")
    return load_text(CONTRACT_EXAMPLE.replace("/etc/aiogate/jwt.pub", str(key_file)), env=ENV)
