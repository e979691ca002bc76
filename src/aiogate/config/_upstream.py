"""Upstreams: backend pools, balancing, health checks, retries and circuit breakers."""

from __future__ import annotations

import shlex
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, PrivateAttr, field_validator, model_validator

from ._base import Model, check_host, fail, string_list
from .units import Duration

__all__ = [
    "BackendConfig",
    "UpstreamTlsConfig",
    "CircuitBreakerConfig",
    "HealthCheckConfig",
    "RetriesConfig",
    "UpstreamConfig",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}


class CircuitBreakerConfig(Model):
    failure_threshold: int = Field(default=5, ge=1)
    success_threshold: int = Field(default=2, ge=1)
    timeout: Annotated[Duration, Field(gt=0)] = 60.0
    half_open_requests: int = Field(default=3, ge=1)


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
    interval: Annotated[Duration, Field(gt=0)] = 10.0
    timeout: Annotated[Duration, Field(gt=0)] = 5.0
    unhealthy_threshold: int = Field(default=3, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)
    command: Annotated[tuple[str, ...] | None, BeforeValidator(_command)] = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            fail(f"must start with '/', got '{value}'")
        return value

    @model_validator(mode="after")
    def _command_iff_script(self) -> HealthCheckConfig:
        if self.type == "script" and not self.command:
            fail("type 'script' needs a 'command'", "type")
        if self.type != "script" and self.command is not None:
            fail(f"'command' is only used with type 'script' (type is '{self.type}')", "command")
        return self


class RetriesConfig(Model):
    attempts: int = Field(default=0, ge=0)
    backoff: Annotated[Duration, Field(ge=0)] = 0.025
    max_backoff: Annotated[Duration, Field(ge=0)] = 0.25

    @model_validator(mode="after")
    def _ordered(self) -> RetriesConfig:
        if self.max_backoff < self.backoff:
            fail("must be >= backoff", "max_backoff")
        return self


class UpstreamTlsConfig(Model):
    """How `https://` backends are verified (the defaults are the safe ones)."""

    verify: bool = True
    ca_file: str | None = None
    server_name: str | None = None

    @field_validator("ca_file")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        # Checked at load time so a typo fails `aiogate check`, not the first request.
        if value is not None:
            try:
                with open(value, "rb"):
                    pass
            except OSError as exc:
                fail(f"cannot read '{value}': {exc.strerror or exc}")
        return value


Strategy = Literal["round_robin", "least_connections", "weighted_round_robin", "ip_hash", "random"]


class UpstreamConfig(Model):
    name: str = Field(min_length=1)
    strategy: Strategy = "round_robin"
    backends: tuple[BackendConfig, ...] = Field(min_length=1)
    health_check: HealthCheckConfig | None = None
    retries: RetriesConfig = RetriesConfig()
    timeout: Annotated[Duration, Field(gt=0)] = 30.0
    connect_timeout: Annotated[Duration, Field(gt=0)] = 5.0
    circuit_breaker: CircuitBreakerConfig | None = None
    max_idle_connections: int = Field(default=64, ge=0)
    keepalive_timeout: Annotated[Duration, Field(gt=0)] = 60.0
    tls: UpstreamTlsConfig = UpstreamTlsConfig()

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
