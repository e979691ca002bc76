"""The route `cache:` key: defaults, validation with positions, the redis cross-check."""

from __future__ import annotations

from config_testing import MINIMAL_UPSTREAM, Errors, LoadText


def test_cache_defaults_and_values(load_text: LoadText) -> None:
    config = load_text(
        MINIMAL_UPSTREAM
        + """\
routes:
  - path: /a
    upstream: user-service
  - path: /b
    upstream: user-service
    cache: {}
  - path: /c
    upstream: user-service
    cache:
      ttl: 5m
      methods: [get]
      vary: [Accept-Language, accept-language, X-Tenant]
      max_entry_size: 64KiB
      max_entries: 10
      max_size: 1MiB
      authenticated: true
"""
    )
    none, defaults, custom = config.routes
    assert none.cache is None
    assert defaults.cache is not None
    assert (defaults.cache.ttl, defaults.cache.methods, defaults.cache.vary) == (
        30.0, ("GET", "HEAD"), ())  # fmt: skip
    assert (defaults.cache.store, defaults.cache.max_entry_size) == ("memory", 1024 * 1024)
    assert (defaults.cache.max_entries, defaults.cache.max_size) == (10_000, 64 * 1024 * 1024)
    assert defaults.cache.authenticated is False
    assert custom.cache is not None
    assert custom.cache.ttl == 300.0
    assert custom.cache.methods == ("GET",)
    assert custom.cache.vary == ("accept-language", "x-tenant")
    assert (custom.cache.max_entry_size, custom.cache.max_size) == (65536, 1024 * 1024)
    assert custom.cache.authenticated is True


def test_cache_errors_have_positions(errors: Errors) -> None:
    assert errors(
        MINIMAL_UPSTREAM
        + """\
routes:
  - path: /a
    upstream: user-service
    cache: {methods: [GET, POST], store: disk, ttl: 0}
  - path: /b
    upstream: user-service
    cache:
      store: redis
  - path: /c
    upstream: user-service
    cache: {max_entry_size: 2MiB, max_size: 1MiB}
"""
    ) == [
        "8:28: routes[0].cache.methods[1]: only GET and HEAD responses can be cached, not POST",
        "8:42: routes[0].cache.store: invalid value 'disk' (expected 'memory' or 'redis')",
        "8:53: routes[0].cache.ttl: must be > 0",
        "12:14: routes[1].cache.store: store 'redis' needs a top-level 'redis' section",
        "15:29: routes[2].cache.max_entry_size: must not exceed max_size",
    ]


def test_redis_store_with_a_redis_section_loads(load_text: LoadText) -> None:
    config = load_text(
        MINIMAL_UPSTREAM
        + """\
redis: {url: "redis://127.0.0.1:6379/0"}
routes:
  - {path: /a, upstream: user-service, cache: {store: redis}}
"""
    )
    assert config.routes[0].cache is not None
    assert config.routes[0].cache.store == "redis"
