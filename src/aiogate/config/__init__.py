"""Gateway configuration: load a YAML file into validated, immutable models.

>>> config = load_config("/etc/aiogate/aiogate.yaml")      # raises ConfigError with every issue
>>> config.server.max_body_size                             # bytes; durations are float seconds
"""

from ._discovery import ConsulDiscoveryConfig, DiscoveryConfig, EtcdDiscoveryConfig
from ._route import CacheConfig, JsonBodyTransform, PathRewrite, RequestTransform, ResponseTransform
from ._source import ConfigSourceConfig, EtcdConfigSource
from ._upstream import FallbackResponseConfig, PassiveHealthConfig
from .errors import ConfigError, ConfigIssue
from .load import SourceValue, load_config, loaded_source
from .model import (
    AdminConfig,
    ApiKeyConfig,
    ApiKeyEntry,
    AuthConfig,
    BackendConfig,
    CircuitBreakerConfig,
    CorsConfig,
    GatewayConfig,
    HeaderTransform,
    HealthCheckConfig,
    IpRulesConfig,
    JwtConfig,
    LoggingConfig,
    LogLevel,
    RateLimitingConfig,
    RateLimitRule,
    RedisConfig,
    ReloadConfig,
    RetriesConfig,
    RouteAuth,
    RouteConfig,
    RouteRateLimit,
    ServerConfig,
    ServerTlsConfig,
    TracingConfig,
    Transformations,
    UpstreamConfig,
    UpstreamTlsConfig,
)
from .policy import RoutePolicy, breaker_for, route_policy
from .redact import REDACTED, redacted
from .units import parse_duration, parse_size

__all__ = [
    "breaker_for",
    "route_policy",
    "REDACTED",
    "AdminConfig",
    "ApiKeyConfig",
    "CacheConfig",
    "ApiKeyEntry",
    "AuthConfig",
    "BackendConfig",
    "CircuitBreakerConfig",
    "ConfigError",
    "ConfigIssue",
    "ConfigSourceConfig",
    "ConsulDiscoveryConfig",
    "CorsConfig",
    "DiscoveryConfig",
    "EtcdConfigSource",
    "EtcdDiscoveryConfig",
    "FallbackResponseConfig",
    "GatewayConfig",
    "HeaderTransform",
    "HealthCheckConfig",
    "IpRulesConfig",
    "JsonBodyTransform",
    "JwtConfig",
    "LogLevel",
    "LoggingConfig",
    "PassiveHealthConfig",
    "PathRewrite",
    "RateLimitRule",
    "RateLimitingConfig",
    "RedisConfig",
    "ReloadConfig",
    "RequestTransform",
    "ResponseTransform",
    "RetriesConfig",
    "RouteAuth",
    "RouteConfig",
    "RoutePolicy",
    "RouteRateLimit",
    "ServerConfig",
    "ServerTlsConfig",
    "SourceValue",
    "TracingConfig",
    "Transformations",
    "UpstreamConfig",
    "UpstreamTlsConfig",
    "load_config",
    "loaded_source",
    "parse_duration",
    "parse_size",
    "redacted",
]
