"""A test double of the Consul agent HTTP API, and one client for it and for a real agent.

Debian ships no Consul, so tests talk to `ConsulDouble`: an aiohttp server on 127.0.0.1 (in a
thread of its own) written from Consul's API documentation. What it covers (docs/discovery.md,
"Which Consul behaviours the test double covers"):

- `GET /v1/health/service/NAME` answers `[{Node, Service, Checks}]` with `X-Consul-Index`;
  `passing` (a bare flag or a boolean) keeps instances whose every check (node and service)
  passes; `tag` (repeatable: all must match); `dc` (unknown: 500 "No path to datacenter").
- Blocking queries: with `index` below the service's index the answer is immediate; otherwise
  the request is held until the index passes it or `wait` (default 5m, at most 10m, plus up
  to wait/16 of jitter) elapses, then answered with the current index. An index is never 0
  unless a test asks for it (`zero_index`); `restore(index)` makes it go backwards as a
  snapshot restore does, waking held queries.
- ACLs (`require_token`): an unknown token is `403 ACL not found`; no token is the anonymous
  token under a deny-all policy: 200 with the instances filtered out and
  `X-Consul-Results-Filtered-By-ACLs: true`.
- The agent endpoints registrars use: `PUT /v1/agent/service/register` (with one TTL `Check`),
  `PUT /v1/agent/service/deregister/ID`, `PUT /v1/agent/check/{pass,warn,fail}/CHECK_ID`, and
  `GET /v1/status/leader`.
- `kill()` drops every connection and stops listening; `restart()` listens on the same port
  with the same data.

`ConsulAgent` registers and flips health through those agent endpoints, so the same test code
drives the double or a real agent (`AIOGATE_TEST_CONSUL=http://127.0.0.1:8500`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import threading
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from server_process import free_port

T = TypeVar("T")

_MAX_WAIT = 600.0
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_WAIT_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_wait(text: str) -> float:
    """Go's time.ParseDuration, as Consul reads `wait` ("55s", "1m30s", "100ms")."""
    if not text or _WAIT_PART.sub("", text):
        raise ValueError(f"invalid wait {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in _WAIT_PART.findall(text))


def parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool; a bare `?passing` (empty value) means true, as in Consul."""
    if value in ("", "1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(value)


@dataclass
class _Instance:
    id: str
    name: str
    address: str
    port: int
    tags: list[str]
    weights: dict[str, int]
    status: str
    create_index: int
    modify_index: int


@dataclass
class _State:
    node: str = "node1"
    node_address: str = "127.0.0.1"
    datacenter: str = "dc1"
    node_status: str = "passing"  # the node's serfHealth check
    index: int = 1  # the raft index: every write moves it on
    service_index: dict[str, int] = field(default_factory=dict)
    instances: dict[str, _Instance] = field(default_factory=dict)
    token: str | None = None  # None: ACLs off
    zero_index: bool = False
    restores: int = 0


class ConsulDouble:
    """The double; `start()`, drive it with the control methods or `ConsulAgent`, `stop()`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.state = _State()
        #: Every health query seen: (service, query parameters, token header or None).
        self.queries: list[tuple[str, dict[str, str], str | None]] = []
        #: Every health answer sent: (wall-clock time, service, index, instance IDs).
        self.answers: list[tuple[float, str, int, list[str]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Condition | None = None
        self._killed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ConsulDouble:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.call_soon(ready.set)
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="consul-double", daemon=True)
        self._thread.start()
        ready.wait(5)
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        self._loop.close()
        self._loop = None

    def kill(self) -> None:
        """As if the agent died: held queries and idle connections are dropped."""
        self._call(self._shutdown())

    def restart(self) -> None:
        """Listen again on the same port; registrations survive (they live in the servers)."""
        self._call(self._listen())

    # -- control -----------------------------------------------------------------------------
    def register(
        self,
        sid: str,
        name: str,
        port: int,
        *,
        address: str = "",
        tags: tuple[str, ...] = (),
        weights: dict[str, int] | None = None,
        status: str = "passing",
    ) -> None:
        def write(state: _State) -> None:
            old = state.instances.get(sid)
            state.instances[sid] = _Instance(
                sid, name, address, port, list(tags), weights or {"Passing": 1, "Warning": 1},
                status, old.create_index if old else state.index, state.index,
            )  # fmt: skip

        self._write(name, write)

    def deregister(self, sid: str) -> None:
        name = self.state.instances[sid].name
        self._write(name, lambda state: state.instances.pop(sid))

    def set_status(self, sid: str, status: str) -> None:
        inst = self.state.instances[sid]

        def write(state: _State) -> None:
            inst.status = status
            inst.modify_index = state.index

        self._write(inst.name, write)

    def set_node_status(self, status: str) -> None:
        names = {i.name for i in self.state.instances.values()}
        self._write(names, lambda state: setattr(state, "node_status", status))

    def require_token(self, token: str | None) -> None:
        """Turn ACLs on with one valid token (None: off)."""
        self.state.token = token

    def restore(self, index: int) -> None:
        """A snapshot restore: every index goes back to `index`; held queries answer."""

        async def go() -> None:
            self.state.index = index
            self.state.restores += 1
            self.state.service_index = dict.fromkeys(self.state.service_index, index)
            await self._notify()

        self._call(go())

    def answer_zero_index(self, on: bool = True) -> None:
        self.state.zero_index = on

    def health_queries(self, service: str) -> list[dict[str, str]]:
        return [params for name, params, _ in list(self.queries) if name == service]

    # -- internals ---------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _write(self, names: str | set[str], change: Any) -> None:
        async def go() -> None:
            self.state.index += 1
            change(self.state)
            for name in {names} if isinstance(names, str) else names:
                self.state.service_index[name] = self.state.index
            await self._notify()

        self._call(go())

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _listen(self) -> None:
        self._changed = self._changed or asyncio.Condition()
        self._killed = False
        app = web.Application()
        app.router.add_get("/v1/health/service/{name}", self._health_service)
        app.router.add_put("/v1/agent/service/register", self._agent_register)
        app.router.add_put("/v1/agent/service/deregister/{sid}", self._agent_deregister)
        app.router.add_put("/v1/agent/check/{verb:pass|warn|fail}/{cid}", self._agent_check)
        app.router.add_get("/v1/status/leader", self._leader)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _shutdown(self) -> None:
        self._killed = True
        await self._notify()  # held queries see `_killed` and drop their connection
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _service_index(self, name: str) -> int:
        if self.state.zero_index:
            return 0
        # An unknown service answers the highest index so far (never 0).
        return self.state.service_index.get(name, self.state.index)

    def _acl(self, request: web.Request) -> str | None:
        """'denied' (403), 'anonymous' (results filtered) or None (allowed)."""
        if self.state.token is None:
            return None
        given = request.headers.get("X-Consul-Token")
        if not given:
            return "anonymous"
        return None if given == self.state.token else "denied"

    async def _health_service(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        params = dict(request.query)
        self.queries.append((name, params, request.headers.get("X-Consul-Token")))
        acl = self._acl(request)
        if acl == "denied":
            return web.Response(status=403, text="ACL not found")
        dc = params.get("dc", self.state.datacenter)
        if dc != self.state.datacenter:
            return web.Response(status=500, text="No path to datacenter")
        try:
            passing = parse_bool(params["passing"]) if "passing" in params else False
            index = int(params.get("index", "0"))
            wait = min(parse_wait(params["wait"]) if "wait" in params else 300.0, _MAX_WAIT)
        except ValueError as exc:
            return web.Response(status=400, text=f"Invalid query parameter: {exc}")
        if index > 0:
            await self._block(name, index, wait + random.uniform(0, wait / 16))
        if self._killed:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never written: the connection is gone
        headers = {"X-Consul-Index": str(self._service_index(name)),
                   "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}  # fmt: skip
        body: list[dict[str, Any]] = []
        if acl == "anonymous":
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        else:
            tags = request.query.getall("tag", [])
            body = [self._entry(i) for i in self._matching(name, tags, passing)]
        response = web.json_response(body, headers=headers)
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionResetError:
            return response  # the client gave up on a held query: nothing was answered
        ids = [entry["Service"]["ID"] for entry in body]
        self.answers.append((time.time(), name, int(headers["X-Consul-Index"]), ids))
        return response

    async def _block(self, name: str, index: int, wait: float) -> None:
        """Hold while the service's index is <= `index`, up to `wait`; a kill or a restore
        answers at once (a client left with a higher index than the restored one would be
        held again on its next call: that is why clients must reset it)."""
        assert self._changed is not None
        restores = self.state.restores

        def done() -> bool:
            return (
                self._killed or self.state.restores != restores or self._service_index(name) > index
            )

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(done), wait)

    def _matching(self, name: str, tags: list[str], passing: bool) -> list[_Instance]:
        found = [i for i in self.state.instances.values() if i.name == name]
        found = [i for i in found if all(t in i.tags for t in tags)]
        if passing:
            found = [i for i in found if i.status == "passing"]
            found = [] if self.state.node_status != "passing" else found
        return sorted(found, key=lambda i: i.id)

    def _entry(self, inst: _Instance) -> dict[str, Any]:
        s = self.state
        node = {"ID": "a1b2c3d4-0000-0000-0000-000000000001", "Node": s.node,
                "Address": s.node_address, "Datacenter": s.datacenter,
                "TaggedAddresses": {"lan": s.node_address, "wan": s.node_address},
                "Meta": {}, "CreateIndex": 1, "ModifyIndex": 1}  # fmt: skip
        service = {"ID": inst.id, "Service": inst.name, "Tags": inst.tags,
                   "Address": inst.address, "Meta": {}, "Port": inst.port,
                   "Weights": inst.weights, "EnableTagOverride": False,
                   "CreateIndex": inst.create_index, "ModifyIndex": inst.modify_index}  # fmt: skip
        checks = [
            {"Node": s.node, "CheckID": "serfHealth", "Name": "Serf Health Status",
             "Status": s.node_status, "ServiceID": "", "ServiceName": ""},
            {"Node": s.node, "CheckID": f"service:{inst.id}", "Name": f"{inst.name} TTL",
             "Status": inst.status, "ServiceID": inst.id, "ServiceName": inst.name},
        ]  # fmt: skip
        return {"Node": node, "Service": service, "Checks": checks}

    async def _agent_register(self, request: web.Request) -> web.Response:
        if self._acl(request) is not None:
            return web.Response(status=403, text="Permission denied")
        body = await request.json()
        check = body.get("Check") or {}
        sid = body.get("ID") or body["Name"]
        await asyncio.to_thread(
            lambda: self.register(
                sid, body["Name"], int(body.get("Port", 0)), address=body.get("Address", ""),
                tags=tuple(body.get("Tags") or ()), weights=body.get("Weights"),
                status=check.get("Status", "critical"),
            )
        )  # fmt: skip
        return web.Response()

    async def _agent_deregister(self, request: web.Request) -> web.Response:
        if self._acl(request) is not None:
            return web.Response(status=403, text="Permission denied")
        sid = request.match_info["sid"]
        if sid not in self.state.instances:
            return web.Response(status=404, text=f'Unknown service ID "{sid}"')
        await asyncio.to_thread(self.deregister, sid)
        return web.Response()

    async def _agent_check(self, request: web.Request) -> web.Response:
        if self._acl(request) is not None:
            return web.Response(status=403, text="Permission denied")
        sid = request.match_info["cid"].removeprefix("service:")
        if sid not in self.state.instances:
            return web.Response(status=404, text="Unknown check")
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}
        await asyncio.to_thread(self.set_status, sid, status[request.match_info["verb"]])
        return web.Response()

    async def _leader(self, request: web.Request) -> web.Response:
        return web.json_response("127.0.0.1:8300")


class ConsulAgent:
    """Registers services the way a registrar does, on the double or on a real agent."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.registered: set[str] = set()

    def _put(self, path: str, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(f"{self.url}{path}", data=data, method="PUT")
        if self.token:
            request.add_header("X-Consul-Token", self.token)
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()

    def register(
        self,
        sid: str,
        name: str,
        port: int,
        *,
        address: str = "",
        tags: tuple[str, ...] = (),
        weights: dict[str, int] | None = None,
        status: str = "passing",
    ) -> None:
        """One instance with one TTL check (so its health is set from here), in `status`."""
        body: dict[str, Any] = {
            "ID": sid, "Name": name, "Port": port, "Address": address, "Tags": list(tags),
            "Check": {"CheckID": f"service:{sid}", "Name": f"{name} TTL", "TTL": "10m",
                      "Status": status},
        }  # fmt: skip
        if weights is not None:
            body["Weights"] = weights
        self._put("/v1/agent/service/register", body)
        self.registered.add(sid)

    def deregister(self, sid: str) -> None:
        self._put(f"/v1/agent/service/deregister/{sid}")
        self.registered.discard(sid)

    def set_status(self, sid: str, status: str) -> None:
        verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
        self._put(f"/v1/agent/check/{verb}/service:{sid}")

    def cleanup(self) -> None:
        for sid in list(self.registered):
            self.deregister(sid)


@dataclass
class ConsulEnv:
    """Where the Consul tests register services: the double, or a real agent."""

    url: str
    agent: ConsulAgent
    double: ConsulDouble | None

    def need_double(self) -> ConsulDouble:
        """For tests that kill the agent or change its ACLs: only the double can."""
        if self.double is None:
            import pytest

            pytest.skip("needs the Consul double (kills it or changes its ACLs)")
        return self.double
