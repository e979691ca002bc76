"""One rule for the settings in force on a route: its own, else its upstream's, else the top."""

from __future__ import annotations

from typing import Any

from aiogate.config import GatewayConfig, breaker_for, route_policy


def _config(
    route: dict[str, Any], upstream: dict[str, Any] | None = None, **top: Any
) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "upstreams": [
                {"name": "u", "backends": [{"url": "http://127.0.0.1:1"}], **(upstream or {})}
            ],
            "routes": [{"path": "/r", "upstream": "u", **route}],
            **top,
        }
    )


def test_the_upstream_decides_what_the_route_leaves_unset() -> None:
    config = _config({}, {"timeout": "7s", "connect_timeout": "2s", "read_timeout": "3s",
                          "retries": {"attempts": 4}})  # fmt: skip
    policy = route_policy(config.routes[0], config)
    assert (policy.timeout, policy.connect_timeout, policy.read_timeout) == (7.0, 2.0, 3.0)
    assert policy.retries.attempts == 4
    assert not policy.own_retry_budget
    assert policy.upstream is config.upstreams[0]


def test_the_route_overrides_its_upstream() -> None:
    config = _config(
        {"timeout": "1s", "connect_timeout": "500ms", "read_timeout": "800ms",
         "retries": {"attempts": 0}},
        {"timeout": "7s", "connect_timeout": "2s", "read_timeout": "3s",
         "retries": {"attempts": 4}},
    )  # fmt: skip
    policy = route_policy(config.routes[0], config)
    assert (policy.timeout, policy.connect_timeout, policy.read_timeout) == (1.0, 0.5, 0.8)
    assert policy.retries.attempts == 0
    assert policy.own_retry_budget


def test_breaker_and_cors_fall_back_to_the_top_level() -> None:
    config = _config({}, circuit_breaker={"failure_threshold": 9},
                     cors={"allowed_origins": ["https://a.example"]})  # fmt: skip
    policy = route_policy(config.routes[0], config)
    assert policy.breaker.failure_threshold == 9
    assert policy.cors is config.cors
    own = _config(
        {"cors": {"allowed_origins": ["https://b.example"]}},
        {"circuit_breaker": {"failure_threshold": 2}},
        circuit_breaker={"failure_threshold": 9},
        cors={"allowed_origins": ["https://a.example"]},
    )
    policy = route_policy(own.routes[0], own)
    assert policy.breaker.failure_threshold == 2
    assert policy.cors is own.routes[0].cors
    assert breaker_for(own.upstreams[0], own.circuit_breaker).failure_threshold == 2


def test_no_cors_anywhere_is_none() -> None:
    config = _config({})
    assert route_policy(config.routes[0], config).cors is None
