"""The validated, immutable gateway configuration.

Durations are float seconds and sizes int bytes; nothing downstream sees YAML, dicts of raw
values, or environment variables. The models live in a few private modules by topic and are
re-exported here, which is the one import path other code should use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..pathnorm import ALLOW_PATH_PARAMETERS, UNESCAPE_SLASHES
from ._access import IpRulesConfig
from ._auth import ApiKeyConfig, ApiKeyEntry, AuthConfig, JwtConfig
from ._base import IpNetwork, Model, fail, one_or_many, split_host_port
from ._checks import Sections, format_path, reference_issues
from ._observability import SampleRatio, TracingConfig
from ._ratelimit import RateLimitingConfig, RateLimitRule, RateLimitRules
from ._reload import ReloadConfig
from ._route import (
    CorsConfig,
    HeaderTransform,
    RouteAuth,
    RouteConfig,
    RouteRateLimit,
    Transformations,
)
from ._secrets import check_not_published
from ._source import ConfigSourceConfig
from ._tls import ServerTlsConfig
from ._upstream import (
    BackendConfig,
    CircuitBreakerConfig,
    HealthCheckConfig,
    RetriesConfig,
    UpstreamConfig,
    UpstreamTlsConfig,
)
from .units import Duration, Size

__all__ = [
    "AdminConfig",
    "ApiKeyConfig",
    "ApiKeyEntry",
    "AuthConfig",
    "BackendConfig",
    "CircuitBreakerConfig",
    "CorsConfig",
    "GatewayConfig",
    "HeaderTransform",
    "HealthCheckConfig",
    "IpRulesConfig",
    "JwtConfig",
    "LogLevel",
    "LoggingConfig",
    "RateLimitRule",
    "RateLimitingConfig",
    "RedisConfig",
    "ReloadConfig",
    "RetriesConfig",
    "RouteAuth",
    "RouteConfig",
    "RouteRateLimit",
    "ServerConfig",
    "ServerTlsConfig",
    "TracingConfig",
    "Transformations",
    "UpstreamConfig",
    "UpstreamTlsConfig",
]

# Set by the loader, which runs the cross-section checks itself so it can report all of them
# with positions even when other sections failed to validate.
SKIP_REFERENCE_CHECKS = "aiogate.skip_reference_checks"


def _listen(value: str) -> str:
    try:
        split_host_port(value)
    except ValueError as exc:
        fail(str(exc))
    return value


ListenAddress = Annotated[str, AfterValidator(_listen)]


class ServerConfig(Model):
    listen: ListenAddress = "0.0.0.0:8080"
    workers: int = Field(default=1, ge=1)
    max_body_size: Annotated[Size, Field(ge=0)] = 10 * 1024 * 1024
    header_timeout: Annotated[Duration, Field(gt=0)] = 10.0
    idle_timeout: Annotated[Duration, Field(gt=0)] = 75.0
    trusted_proxies: Annotated[tuple[IpNetwork, ...], BeforeValidator(one_or_many)] = ()
    #: Longest wait for the next bytes of a request body the gateway is reading: 408 and close.
    body_timeout: Annotated[Duration, Field(gt=0)] = 30.0
    #: Bytes per second a body must keep up over each `body_timeout` of waiting; 0 = no check.
    body_min_rate: Annotated[Size, Field(ge=0)] = 1024
    #: Open client connections per worker; connections beyond it are closed at once.
    max_connections: int = Field(default=10_000, ge=1)
    shutdown_timeout: Annotated[Duration, Field(ge=0)] = 30.0
    #: A WebSocket with no bytes either way for this long is closed.
    websocket_idle_timeout: Annotated[Duration, Field(gt=0)] = 3600.0
    max_header_size: Annotated[Size, Field(gt=0)] = 8 * 1024
    max_headers: int = Field(default=100, gt=0)
    #: The backend's `Server` header: replaced by `Server: aiogate` (as nginx and Envoy do, so
    #: the backends' software and versions are not advertised), or passed as it is.
    server_header: Literal["replace", "pass"] = "replace"
    #: Header names with `_`: drop them before forwarding, answer 400, or forward them.
    underscore_headers: Literal["drop", "reject", "allow"] = "drop"
    #: `%2F`, `%5C` or `\\` in a request path: refused (400) or made a `/` before routing.
    escaped_slashes: Literal["reject", "unescape"] = "reject"
    #: `;` in a request path: refused (400), or kept as an ordinary character.
    path_parameters: Literal["reject", "allow"] = "reject"
    #: HTTPS on `listen` (absent: plain HTTP); the admin listener stays plain HTTP.
    tls: ServerTlsConfig | None = None

    @property
    def path_flags(self) -> int:
        """Both path settings as `normalize_path` flags; read per request, so a reload applies."""
        return (UNESCAPE_SLASHES if self.escaped_slashes == "unescape" else 0) | (
            ALLOW_PATH_PARAMETERS if self.path_parameters == "allow" else 0
        )

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]


class AdminConfig(Model):
    listen: ListenAddress = "127.0.0.1:9901"
    token: SecretStr | None = None

    @field_validator("token", mode="before")
    @classmethod
    def _empty_is_off(cls, value: Any) -> Any:
        # `token: ${env:AIOGATE_ADMIN_TOKEN:-}` must be able to switch the admin API off.
        return None if value == "" else value

    @field_validator("token")
    @classmethod
    def _not_published(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_not_published(value.get_secret_value())
        return value

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


LogLevel = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)]


class LoggingConfig(Model):
    level: LogLevel = "info"
    #: `ecs` / `otel`: JSON lines with Elastic Common Schema / OpenTelemetry field names.
    format: Literal["json", "console", "ecs", "otel"] = "json"
    levels: Mapping[str, LogLevel] = Field(default_factory=dict)
    access_log: bool = True
    #: Share of access lines written for responses below 400; error lines are always written.
    access_log_sample: SampleRatio = 1.0


class RedisConfig(Model):
    url: str
    timeout: Annotated[Duration, Field(gt=0)] = 0.25

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            fail("must start with redis://, rediss:// or unix://")
        return value


class GatewayConfig(Model):
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    logging: LoggingConfig = LoggingConfig()
    redis: RedisConfig | None = None
    auth: AuthConfig = AuthConfig()
    rate_limits: tuple[RateLimitRule, ...] = ()
    #: Named limit sets; a consumer's tier selects one in place of the route's `rate_limit`.
    rate_limit_tiers: Mapping[str, RateLimitRules] = Field(default_factory=dict)
    rate_limiting: RateLimitingConfig = RateLimitingConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    upstreams: tuple[UpstreamConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    tracing: TracingConfig = TracingConfig()
    #: Applied on every route, before the route's own `ip_rules` (both must admit a client).
    ip_rules: IpRulesConfig = IpRulesConfig()
    reload: ReloadConfig = ReloadConfig()
    #: The CORS policy of every route without its own `cors:` (a route's replaces it whole).
    cors: CorsConfig | None = None
    #: Routes and upstreams from etcd instead of this file (absent: the file's).
    config_source: ConfigSourceConfig | None = None

    _upstreams_by_name: dict[str, UpstreamConfig] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> GatewayConfig:
        self._upstreams_by_name = {upstream.name: upstream for upstream in self.upstreams}
        if info.context and info.context.get(SKIP_REFERENCE_CHECKS):
            return self
        issues = reference_issues(
            list(enumerate(self.upstreams)),
            list(enumerate(self.routes)),
            Sections.of(self.auth, redis=self.redis is not None, mtls=_mtls(self.server)),
        )
        if issues:
            fail("; ".join(f"{format_path(path)}: {message}" for path, message in issues))
        return self

    def upstream_by_name(self, name: str) -> UpstreamConfig:
        """The upstream called ``name``; KeyError if there is none."""
        return self._upstreams_by_name[name]


def _mtls(server: ServerConfig) -> bool:
    """The listener verifies client certificates: `auth: {type: mtls}` can work."""
    return server.tls is not None and server.tls.client_ca_file is not None
