"""A Consul service as a discovery source: health-service blocking queries.

`GET /v1/health/service/NAME` answers every instance of the service with its node and checks;
with `?index=N&wait=W` Consul holds the request until the service's index passes N (or W
elapses) and answers with the current set and its `X-Consul-Index`. The loop follows Consul's
"Blocking Queries" rules: the index restarts from 0 when it goes backwards or is not > 0, and
calls whose index did not move are spaced out, so a misbehaving agent cannot make it spin.

Any failure (unreachable, 403 for the ACL token, 5xx, a body that is not a health answer) ends
`watch()`; the runner keeps the last set, logs, backs off and starts over with a fresh read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from .. import log
from ..config import BackendConfig, ConsulDiscoveryConfig
from .merge import BadValue, parse_backend
from .source import Backends

__all__ = ["ConsulError", "ConsulSource", "Instance", "backends_of", "next_index", "parse_index"]

#: The least time between two calls whose index did not move (Consul: "rate limit").
MIN_INTERVAL = 1.0


class ConsulError(Exception):
    """Consul could not be reached or answered something unusable (never holds the token)."""


def parse_index(header: str | None) -> int:
    """`X-Consul-Index` as an int; 0 when absent or not a number (treated as a reset)."""
    try:
        return int(header) if header is not None else 0
    except ValueError:
        return 0


def next_index(previous: int, returned: int) -> int:
    """The index for the next blocking call, by Consul's rules.

    Reset to 0 (a plain read, then blocking again from its index) when the returned index went
    backwards, e.g. after a snapshot restore, or when it is not > 0: blocking on such an index
    would miss updates for an unbounded time or not block at all.
    """
    if returned <= 0 or returned < previous:
        return 0
    return returned


@dataclass(frozen=True, slots=True)
class Instance:
    """One entry of a health-service answer, reduced to what a backend needs."""

    id: str
    address: str
    port: int
    weight: int
    status: str  # the worst of its checks: passing < warning < critical (maintenance too)


_SEVERITY = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 2}


def parse_entry(entry: Mapping[str, Any]) -> Instance:
    """One `[{Node, Service, Checks}]` item; raises ValueError when it cannot be a backend."""
    node, service = entry.get("Node"), entry.get("Service")
    if not isinstance(node, Mapping) or not isinstance(service, Mapping):
        raise ValueError("Node and Service must be objects")
    sid = str(service.get("ID") or service.get("Service") or "?")
    # An instance registered without an address is reached at its node's, as Consul's DNS does.
    address = service.get("Address") or node.get("Address")
    if not isinstance(address, str) or not address:
        raise ValueError(f"instance {sid} has neither a service nor a node address")
    port = service.get("Port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"instance {sid} has no usable port ({port!r})")
    checks = entry.get("Checks") or []
    statuses = [c.get("Status") for c in checks if isinstance(c, Mapping)]
    worst = max(statuses, key=lambda s: _SEVERITY.get(str(s), 2), default="passing")
    weights = service.get("Weights") or {}
    # Consul's DNS weighs a passing instance by Weights.Passing and a warning one by
    # Weights.Warning; the gateway does the same (both default to 1 in Consul).
    raw = weights.get("Warning" if worst == "warning" else "Passing", 1)
    weight = raw if isinstance(raw, int) and not isinstance(raw, bool) else 1
    return Instance(sid, address, port, weight, str(worst))


def _host(address: str) -> str:
    try:
        return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        return address  # a host name


def backends_of(instances: list[Instance], scheme: str) -> tuple[Backends, list[str]]:
    """The backend set (by URL, each URL once) and why instances were skipped."""
    found: dict[str, BackendConfig] = {}
    skipped: list[str] = []
    for inst in instances:
        if inst.weight < 1:
            skipped.append(f"instance {inst.id} has weight {inst.weight} (no traffic)")
            continue
        url = f"{scheme}://{_host(inst.address)}:{inst.port}"
        try:
            backend = parse_backend(json.dumps({"url": url, "weight": inst.weight}).encode())
        except BadValue as exc:
            skipped.append(f"instance {inst.id}: {exc}")
            continue
        found.setdefault(backend.url, backend)
    return tuple(found[url] for url in sorted(found)), skipped


class ConsulSource:
    """The instances of one Consul service (a `Source`)."""

    def __init__(
        self,
        upstream: str,
        config: ConsulDiscoveryConfig,
        *,
        min_interval: float = MIN_INTERVAL,
    ) -> None:
        self.upstream = upstream
        self.config = config
        self._min_interval = min_interval
        self._index = 0
        self._session: aiohttp.ClientSession | None = None
        self._log = log.get_logger("aiogate.discovery")

    # -- the Source interface ----------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.config.address

    def describe(self) -> Mapping[str, object]:
        return {"service": self.config.service, "index": self._index}

    async def watch(self) -> AsyncGenerator[Backends]:
        loop = asyncio.get_running_loop()
        self._index = 0  # every watch starts with a plain read
        while True:
            started = loop.time()
            previous = self._index
            returned, entries = await self.query(previous)
            self._index = next_index(previous, returned)
            yield self._backends(entries)
            if self._index in (0, previous):
                # Nothing moved (or a reset): do not ask again at once.
                await asyncio.sleep(max(0.0, started + self._min_interval - loop.time()))

    def failed(self, error: Exception) -> bool:
        return False  # one address: back off, then read again

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- Consul ---------------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.config.timeout, sock_connect=self.config.timeout
                ),
                # The agent is infrastructure, never reached through a proxy from the env.
                trust_env=False,
            )
        return self._session

    def _params(self, index: int) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.config.passing_only:
            params["passing"] = "true"
        if self.config.tag is not None:
            params["tag"] = self.config.tag
        if self.config.datacenter is not None:
            params["dc"] = self.config.datacenter
        if index > 0:
            params["index"] = str(index)
            params["wait"] = f"{self.config.wait:g}s"
        return params

    async def query(self, index: int) -> tuple[int, list[Mapping[str, Any]]]:
        """One health-service call: (X-Consul-Index, the entries). Blocks when `index` > 0."""
        url = f"{self.config.address}/v1/health/service/{quote(self.config.service, safe='')}"
        headers = {}
        if self.config.token is not None:
            headers["X-Consul-Token"] = self.config.token.get_secret_value()
        # Consul adds up to wait/16 to spread wake-ups; allow that and the usual timeout on top.
        limit = self.config.timeout + (self.config.wait * 17 / 16 if index > 0 else 0.0)
        try:
            async with self._http().get(
                url,
                params=self._params(index),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise ConsulError(_status_error(url, resp.status, text))
                returned = parse_index(resp.headers.get("X-Consul-Index"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConsulError(f"{url}: {type(exc).__name__}: {exc}") from exc
        return returned, _entries(url, text)

    def _backends(self, entries: list[Mapping[str, Any]]) -> Backends:
        instances = []
        for entry in entries:
            try:
                instance = parse_entry(entry)
            except ValueError as exc:
                self._bad(str(exc))
                continue
            # Consul already filtered with ?passing; this also covers an agent that did not.
            if self.config.passing_only and instance.status != "passing":
                continue
            instances.append(instance)
        backends, skipped = backends_of(instances, self.config.scheme)
        for reason in skipped:
            self._bad(reason)
        return backends

    def _bad(self, reason: str) -> None:
        self._log.warning(
            log.DISCOVERY_BAD_VALUE,
            upstream=self.upstream,
            key=self.config.service,
            error=reason,
        )


def _status_error(url: str, status: int, body: str) -> str:
    detail = body.strip()[:200] or "no body"
    if status == 403:
        # Consul says "ACL not found" (unknown token) or "Permission denied" (no right).
        return f"{url}: HTTP 403, the ACL token was refused ({detail}); check `token`"
    if status == 404:
        return f"{url}: HTTP 404 ({detail}); is `address` a Consul agent?"
    return f"{url}: HTTP {status} ({detail})"


def _entries(url: str, text: str) -> list[Mapping[str, Any]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConsulError(f"{url}: not JSON: {text[:200]!r}") from exc
    # Consul answers `null` for a service with no instances in some versions.
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ConsulError(f"{url}: expected a list of health entries, got {text[:200]!r}")
    return data
