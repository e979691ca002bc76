"""Upstreams: backend pools, balancing, health checks, retries and circuit breakers."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..tlscontext import client_context
from ._base import HTTP_TOKEN, Model, ReadableFile, check_host, fail, string_list
from ._discovery import DiscoveryConfig
from .units import Duration

__all__ = [
    "BackendConfig",
    "UpstreamTlsConfig",
    "CircuitBreakerConfig",
    "FallbackResponseConfig",
    "HealthCheckConfig",
    "PassiveHealthConfig",
    "RetriesConfig",
    "UpstreamConfig",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _statuses(value: Any) -> Any:
    """`[502, 503]`, or ranges as strings: `["200-399"]`."""
    if isinstance(value, int | str):
        value = [value]
    if not isinstance(value, list | tuple):
        return value
    out: list[Any] = []
    for item in value:
        if isinstance(item, str) and "-" in item:
            low, _, high = item.partition("-")
            try:
                out.extend(range(int(low), int(high) + 1))
            except ValueError:
                fail(f"invalid status range '{item}'")
        else:
            out.append(item)
    return tuple(out)


_Status = Annotated[int, Field(ge=100, le=599)]
_StatusRange = Annotated[str, Field(pattern=r"^\d{3}-\d{3}$")]
Statuses = Annotated[
    tuple[_Status, ...],
    BeforeValidator(
        _statuses, json_schema_input_type=_Status | _StatusRange | list[_Status | _StatusRange]
    ),
]


class FallbackResponseConfig(Model):
    """What a client gets instead of the JSON 503 while every backend's circuit is open."""

    status: int = Field(default=503, ge=200, le=599)
    body: str = ""
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            if not HTTP_TOKEN.fullmatch(name):
                fail(f"invalid header name '{name}'")
            if any(c in header for c in "\r\n\0"):
                fail(f"header '{name}' has CR, LF or NUL in its value")
        return value


class CircuitBreakerConfig(Model):
    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1)
    success_threshold: int = Field(default=2, ge=1)
    timeout: Annotated[Duration, Field(gt=0)] = 60.0
    half_open_requests: int = Field(default=3, ge=1)
    fallback: FallbackResponseConfig | None = None


class BackendConfig(Model):
    url: str
    weight: int = Field(default=1, ge=1)

    # Derived once here so the proxy never re-parses the URL per request.
    _scheme: str = PrivateAttr(default="")
    _host: str = PrivateAttr(default="")
    _port: int = PrivateAttr(default=0)
    _base_path: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _split_url(self) -> BackendConfig:
        hint = "expected http://host[:port][/prefix] or https://..."
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError as exc:
            fail(f"invalid URL '{self.url}': {exc}", "url")
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            fail(f"invalid backend URL '{self.url}' ({hint})", "url")
        if parts.username is not None or parts.password is not None:
            fail("credentials in a backend URL are not supported", "url")
        if parts.query or parts.fragment or "?" in self.url or "#" in self.url:
            fail(f"a backend URL takes no query or fragment: '{self.url}'", "url")
        try:
            check_host(parts.hostname)
        except ValueError as exc:
            fail(f"{exc} in '{self.url}'", "url")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = port if port is not None else _DEFAULT_PORTS[parts.scheme]
        self._base_path = parts.path.rstrip("/")
        return self

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def host(self) -> str:
        """The host to connect to; IPv6 literals come without brackets."""
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_path(self) -> str:
        """``""`` or ``"/prefix"`` (never a trailing slash), prepended to forwarded paths."""
        return self._base_path

    @property
    def authority(self) -> str:
        """``host:port`` for the Host header and metrics, the port omitted when default."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        if self._port == _DEFAULT_PORTS[self._scheme]:
            return host
        return f"{host}:{self._port}"


def _command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            fail(f"cannot split command: {exc}")
    return string_list(value, "argument")


class HealthCheckConfig(Model):
    type: Literal["http", "tcp", "script"] = "http"
    path: str = "/health"
    method: Literal["GET", "HEAD", "OPTIONS"] = "GET"
    #: Statuses that count as healthy; empty = any 2xx or 3xx.
    expected_statuses: Statuses = ()
    #: Host header of http checks; default: the backend's authority.
    host: str | None = None
    interval: Annotated[Duration, Field(gt=0)] = 10.0
    #: Each wait is interval +/- this share of it, so checks of many gateways do not align.
    jitter: float = Field(default=0.1, ge=0, le=0.5)
    timeout: Annotated[Duration, Field(gt=0)] = 5.0
    unhealthy_threshold: int = Field(default=3, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)
    command: Annotated[tuple[str, ...] | None, BeforeValidator(_command)] = None
    #: Extra environment of a script check. By default a script sees only PATH and LANG (and
    #: the AIOGATE_BACKEND_* variables), not the gateway's environment and its secrets.
    env: Mapping[str, str] = Field(default_factory=dict)
    #: Give the script the gateway's whole environment (with `env` on top).
    inherit_env: bool = False

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            fail(f"must start with '/', got '{value}'")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        for name, text in value.items():
            if not name or "=" in name or "\0" in name:
                fail(f"invalid environment variable name '{name}'", name)
            if "\0" in text:
                fail("must not contain a NUL character", name)
        return value

    @model_validator(mode="after")
    def _command_iff_script(self) -> HealthCheckConfig:
        if self.type == "script" and not self.command:
            fail("type 'script' needs a 'command'", "type")
        if self.type != "script" and self.command is not None:
            fail(f"'command' is only used with type 'script' (type is '{self.type}')", "command")
        for key in ("env", "inherit_env"):
            if self.type != "script" and key in self.model_fields_set:
                fail(f"'{key}' is only used with type 'script' (type is '{self.type}')", key)
        return self


class PassiveHealthConfig(Model):
    """Outlier ejection from real traffic: consecutive failures take a backend out for a while."""

    consecutive_failures: int = Field(default=5, ge=1)
    #: Upstream statuses that count as failures (connect errors and timeouts always do).
    statuses: Statuses = (502, 503, 504)
    #: First ejection; the n-th consecutive one lasts n times as long, up to max_ejection_time.
    ejection_time: Annotated[Duration, Field(gt=0)] = 30.0
    max_ejection_time: Annotated[Duration, Field(gt=0)] = 300.0
    #: Never more than this share of the backends ejected at once (at least one may be).
    max_ejection_percent: int = Field(default=50, ge=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> PassiveHealthConfig:
        if self.max_ejection_time < self.ejection_time:
            fail("must be >= ejection_time", "max_ejection_time")
        return self


class RetriesConfig(Model):
    attempts: int = Field(default=0, ge=0)
    #: Full jitter: the n-th retry waits uniform(0, min(max_delay, base_delay * 2**n)).
    base_delay: Annotated[Duration, Field(ge=0)] = Field(
        default=0.025, validation_alias=AliasChoices("base_delay", "backoff")
    )
    max_delay: Annotated[Duration, Field(ge=0)] = Field(
        default=0.25, validation_alias=AliasChoices("max_delay", "max_backoff")
    )
    #: Upstream statuses retried (idempotent methods only, like timeouts).
    on_statuses: Statuses = (502, 503, 504)
    on_timeout: bool = True
    #: Retries in flight may be at most this share of the requests in flight (Envoy's
    #: `budget_percent`), or `min_retry_concurrency` when that is more: no retry storms.
    budget: float = Field(default=0.2, ge=0, le=1)
    min_retry_concurrency: int = Field(default=3, ge=0)
    #: Deprecated and ignored: the starting balance of the former token-bucket budget. Still
    #: accepted so that existing files load.
    budget_reserve: int | None = Field(default=None, ge=0)

    @model_validator(mode="wrap")
    @classmethod
    def _ordered(cls, data: Any, handler: ModelWrapValidatorHandler[RetriesConfig]) -> Any:
        model = handler(data)
        if model.max_delay < model.base_delay:
            # Word the error with the spelling the file used (`backoff`/`max_backoff` too).
            keys = data if isinstance(data, dict) else {}
            low = "backoff" if "backoff" in keys else "base_delay"
            high = "max_backoff" if "max_backoff" in keys else "max_delay"
            fail(f"must be >= {low}", high)
        return model

    @property
    def backoff(self) -> float:
        return self.base_delay

    @property
    def max_backoff(self) -> float:
        return self.max_delay


class UpstreamTlsConfig(Model):
    """How `https://` backends are verified (the defaults are the safe ones)."""

    verify: bool = True
    ca_file: ReadableFile | None = None
    server_name: str | None = None
    #: A client certificate (PEM) and its key, presented to backends that ask for one (mTLS).
    client_cert_file: ReadableFile | None = None
    client_key_file: ReadableFile | None = None

    @model_validator(mode="after")
    def _client_pair(self) -> UpstreamTlsConfig:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            missing = "client_key_file" if self.client_key_file is None else "client_cert_file"
            fail("client_cert_file and client_key_file go together", missing)
        if self.client_cert_file is not None:
            try:
                client_context(cert_file=self.client_cert_file, key_file=self.client_key_file)
            except ValueError as exc:
                fail(str(exc), "client_cert_file")
        return self


Strategy = Literal[
    "round_robin", "least_connections", "weighted_round_robin", "ip_hash", "random", "p2c_ewma"
]


class UpstreamConfig(Model):
    name: str = Field(min_length=1)
    strategy: Strategy = "round_robin"
    #: Backends registered in etcd, added to the static ones (see docs/discovery.md).
    #: Declared before `backends` so that the check of `backends` can see it.
    discovery: DiscoveryConfig | None = None
    #: May be empty (or omitted) when `discovery` supplies the backends.
    backends: tuple[BackendConfig, ...] = Field(default=None, validate_default=True)
    health_check: HealthCheckConfig | None = None
    passive_health_check: PassiveHealthConfig | None = None
    retries: RetriesConfig = RetriesConfig()
    timeout: Annotated[Duration, Field(gt=0)] = 30.0
    connect_timeout: Annotated[Duration, Field(gt=0)] = 5.0
    #: Longest wait for the response head once the request is out; None = only `timeout`.
    read_timeout: Annotated[Duration | None, Field(gt=0)] = None
    circuit_breaker: CircuitBreakerConfig | None = None
    #: A recovered or new backend's weight ramps from 10% to 100% over this long.
    slow_start: Annotated[Duration, Field(ge=0)] = 0.0
    max_idle_connections: int = Field(default=64, ge=0)
    #: Requests in flight per backend; a backend at its limit takes no more (None = no limit).
    max_connections: int | None = Field(default=None, ge=1)
    keepalive_timeout: Annotated[Duration, Field(gt=0)] = 60.0
    tls: UpstreamTlsConfig = UpstreamTlsConfig()

    @field_validator("backends", mode="before")
    @classmethod
    def _backends_or_discovery(cls, value: Any, info: ValidationInfo) -> Any:
        # Without discovery an upstream with no backends could never serve. A `discovery`
        # that failed validation is absent from info.data: it is reported on its own.
        static_only = "discovery" in info.data and info.data["discovery"] is None
        if value is None:
            if static_only:
                fail("missing required key")
            return ()
        if static_only and isinstance(value, list | tuple) and not value:
            fail("must have at least 1 item")
        return value

    @model_validator(mode="after")
    def _unique_backends(self) -> UpstreamConfig:
        # Metrics and breakers are keyed by backend; two equal entries would share them.
        seen: dict[tuple[str, str, str], int] = {}
        for index, backend in enumerate(self.backends):
            key = (backend.scheme, backend.authority, backend.base_path)
            first = seen.setdefault(key, index)
            if first != index:
                fail(f"duplicate backend (same as backends[{first}])", "backends", index, "url")
        return self
