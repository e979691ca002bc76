"""Gateway configuration: load a YAML file into validated, immutable models.

>>> config = load_config("/etc/aiogate/aiogate.yaml")      # raises ConfigError with every issue
>>> config.server.max_body_size                             # bytes; durations are float seconds
"""

from .errors import ConfigError, ConfigIssue
from .load import load_config
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
    JwtConfig,
    LoggingConfig,
    LogLevel,
    RateLimitRule,
    RedisConfig,
    RetriesConfig,
    RouteAuth,
    RouteConfig,
    RouteRateLimit,
    ServerConfig,
    Transformations,
    UpstreamConfig,
    UpstreamTlsConfig,
)
from .redact import REDACTED, redacted
from .units import parse_duration, parse_size

__all__ = [
    "REDACTED",
    "AdminConfig",
    "ApiKeyConfig",
    "ApiKeyEntry",
    "AuthConfig",
    "BackendConfig",
    "CircuitBreakerConfig",
    "ConfigError",
    "ConfigIssue",
    "CorsConfig",
    "GatewayConfig",
    "HeaderTransform",
    "HealthCheckConfig",
    "JwtConfig",
    "LogLevel",
    "LoggingConfig",
    "RateLimitRule",
    "RedisConfig",
    "RetriesConfig",
    "RouteAuth",
    "RouteConfig",
    "RouteRateLimit",
    "ServerConfig",
    "Transformations",
    "UpstreamConfig",
    "UpstreamTlsConfig",
    "load_config",
    "parse_duration",
    "parse_size",
    "redacted",
]
