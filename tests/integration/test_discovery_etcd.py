"""etcd service discovery against a real etcd and the real daemon.

Registrations are written the way a registrar writes them (the v3 JSON API, optionally under a
lease); the gateway must follow them without a restart and without failing requests.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, wait_until

from etcd_server import EtcdServer

PREFIX = "/services/svc/"


@pytest.fixture(scope="module")
def pool() -> Iterator[BackendThread]:
    thread = BackendThread(["d1", "d2", "d3"])
    thread.start()
    yield thread
    thread.stop()


def config(etcd_url: str, static: list[str] | None = None, **discovery: Any) -> dict[str, Any]:
    upstream: dict[str, Any] = {
        "name": "svc",
        "discovery": {"type": "etcd", "endpoints": [etcd_url], "prefix": PREFIX,
                      "timeout": "1s", "debounce": "50ms", "backoff": "100ms",
                      "max_backoff": "500ms", **discovery},
    }  # fmt: skip
    if static:
        upstream["backends"] = [{"url": url} for url in static]
    return {
        "logging": {"level": "info"},
        "upstreams": [upstream],
        "routes": [{"path": "/", "upstream": "svc"}],
    }


def get(gw: Gateway, path: str = "/echo", timeout: float = 10) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{gw.url}{path}", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def served_by(gw: Gateway, n: int = 12) -> set[str]:
    names = set()
    for _ in range(n):
        status, body = get(gw)
        if status == 200:
            names.add(body["backend"])
        else:
            names.add(f"status:{status}:{body.get('error')}")
    return names


def becomes(gw: Gateway, expected: set[str], timeout: float = 10) -> None:
    wait_until(lambda: served_by(gw) == expected, timeout, f"traffic to exactly {expected}")


def metric(gw: Gateway, name: str, labels: str = "") -> float | None:
    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def removal_logged(gw: Gateway, url: str) -> None:
    """The latest backend-set change removed `url`. Log lines are flushed every 100 ms, so the
    traffic can switch before the event is readable: wait for it, do not read it at once."""

    def logged() -> bool:
        changes = gw.events("discovery_backends_changed")
        return bool(changes) and changes[-1]["removed"] == [url]

    wait_until(logged, 10, f"a discovery_backends_changed event removing {url}")


def test_register_second_and_deregister(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(config(etcd_server.url))
    # Nothing registered yet: the upstream exists but has no backend.
    status, body = get(gw)
    assert (status, body["error"]) == (503, "no_healthy_backend")

    etcd_server.put(f"{PREFIX}d1", pool.url("d1"))
    becomes(gw, {"d1"})
    etcd_server.put(f"{PREFIX}d2", {"url": pool.url("d2"), "weight": 1, "zone": "a"})
    becomes(gw, {"d1", "d2"})
    etcd_server.delete(f"{PREFIX}d1")
    becomes(gw, {"d2"})

    removal_logged(gw, pool.url("d1"))
    changes = gw.events("discovery_backends_changed")
    assert changes[-1]["upstream"] == "svc"
    assert changes[-1]["removed"] == [pool.url("d1")]
    assert changes[-1]["added"] == []
    assert any(c["added"] == [pool.url("d2")] for c in changes)
    assert gw.events("discovery_connected")[0]["upstream"] == "svc"
    assert metric(gw, "aiogate_discovery_backends", 'upstream="svc"') == 1
    assert metric(gw, "aiogate_discovery_up") == 1
    # A bad registration is logged and ignored; the good ones keep serving.
    etcd_server.put(f"{PREFIX}bad", "ftp://nope")
    gw.wait_event("discovery_bad_value")
    assert served_by(gw) == {"d2"}


def test_lease_expiry_removes_the_backend(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(config(etcd_server.url, static=[pool.url("d3")]))
    lease = etcd_server.grant(2)
    etcd_server.put(f"{PREFIX}d1", pool.url("d1"), lease=lease)
    becomes(gw, {"d1", "d3"})
    # Never kept alive: etcd deletes the key when the lease runs out, and the watch says so.
    becomes(gw, {"d3"}, timeout=20)
    removal_logged(gw, pool.url("d1"))


def test_etcd_outage_keeps_last_known_backends(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    etcd_server.put(f"{PREFIX}d1", pool.url("d1"))
    gw = make_gateway(config(etcd_server.url, keepalive="1s"))
    # The first read happens before the first Runtime: ready means already routed.
    assert served_by(gw) == {"d1"}

    etcd_server.kill()
    gw.wait_event("discovery_disconnected")
    wait_until(lambda: metric(gw, "aiogate_discovery_up") == 0, 10, "discovery_up 0")
    assert served_by(gw) == {"d1"}

    etcd_server.start()  # same ports, same data
    gw.wait_event("discovery_connected", count=2, timeout=15)
    etcd_server.put(f"{PREFIX}d2", pool.url("d2"))
    becomes(gw, {"d1", "d2"})
    assert metric(gw, "aiogate_discovery_up") == 1


def test_changes_made_while_disconnected_are_found_on_reconnect(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    etcd_server.put(f"{PREFIX}d1", pool.url("d1"))
    etcd_server.put(f"{PREFIX}d2", pool.url("d2"))
    gw = make_gateway(config(etcd_server.url))
    becomes(gw, {"d1", "d2"})
    etcd_server.kill()
    gw.wait_event("discovery_disconnected")
    # Edit the data while the gateway cannot see it: start etcd, change, the gateway re-reads.
    etcd_server.start()
    etcd_server.delete(f"{PREFIX}d1")
    becomes(gw, {"d2"}, timeout=15)


def test_etcd_down_at_start_serves_static_then_discovers(
    tmp_path: Path, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    etcd = EtcdServer(tmp_path / "late")
    (tmp_path / "late").mkdir()
    gw = make_gateway(config(etcd.url, static=[pool.url("d3")]))
    assert served_by(gw) == {"d3"}
    assert metric(gw, "aiogate_discovery_up") == 0
    etcd.start()
    try:
        etcd.put(f"{PREFIX}d1", pool.url("d1"))
        becomes(gw, {"d1", "d3"}, timeout=15)
        gw.wait_event("discovery_connected")
    finally:
        etcd.stop()


def test_in_flight_request_survives_a_backend_set_change(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    etcd_server.put(f"{PREFIX}d1", pool.url("d1"))
    gw = make_gateway(config(etcd_server.url))
    assert served_by(gw) == {"d1"}
    result: dict[str, Any] = {}

    def slow() -> None:
        try:
            with urllib.request.urlopen(f"{gw.url}/slow/1.5", timeout=10) as resp:
                result["status"] = resp.status
                result["body"] = resp.read()
        except Exception as exc:  # reported by the assertion below
            result["error"] = repr(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    wait_until(lambda: any(r.get("raw_path") == "/slow/1.5" for r in pool.seen.requests), 5)
    etcd_server.put(f"{PREFIX}d2", pool.url("d2"))
    etcd_server.delete(f"{PREFIX}d1")
    gw.wait_event("discovery_applied")
    becomes(gw, {"d2"})
    thread.join(10)
    assert result.get("status") == 200, result


def test_sighup_keeps_discovered_backends(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    import signal

    etcd_server.put(f"{PREFIX}d1", pool.url("d1"))
    gw = make_gateway(config(etcd_server.url, static=[pool.url("d3")]))
    becomes(gw, {"d1", "d3"})
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_reloaded")
    assert served_by(gw) == {"d1", "d3"}
    # A reload that drops discovery stops the watch and the discovered backends with it.
    gw.write({**gw.config, "upstreams": [{"name": "svc", "backends": [{"url": pool.url("d3")}]}]})
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_reloaded", count=2)
    assert served_by(gw) == {"d3"}


# -- the client and the manager in-process, against the same real etcd ---------------------------


async def test_watch_from_a_compacted_revision_says_so(etcd_server: EtcdServer) -> None:
    from aiogate.discovery.etcd import EtcdClient, WatchCompacted

    for i in range(3):
        etcd_server.put(f"{PREFIX}k{i}", f"http://10.0.0.{i}")
    etcd_server.compact()
    client = EtcdClient([etcd_server.url], 2.0)
    try:
        _, kvs = await client.range_prefix(PREFIX)
        assert len(kvs) == 3
        with pytest.raises(WatchCompacted):
            async for _ in client.watch_prefix(PREFIX, 1):
                pass
    finally:
        await client.close()


async def test_a_burst_of_registrations_is_applied_together(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    import asyncio

    from aiogate import log
    from aiogate.config import load_config
    from aiogate.discovery import Discovery

    log.configure(level="warning")
    path = tmp_path / "c.yaml"
    path.write_text(
        f"upstreams:\n  - name: svc\n    discovery: {{endpoints: [{etcd_server.url}], "
        f"prefix: {PREFIX}, debounce: 300ms}}\nroutes:\n  - {{path: /, upstream: svc}}\n"
    )
    discovery = Discovery()
    rebuilds: list[int] = []
    all_in = asyncio.Event()

    class Rebuilder:
        async def rebuild(self, reason: str) -> object:
            assert reason == "discovery"
            rebuilds.append(len(discovery.found().get("svc", ())))
            if rebuilds[-1] == 5:
                all_in.set()
            return None

    await discovery.start(load_config(path))
    discovery.attach(Rebuilder())
    try:
        await asyncio.to_thread(
            lambda: [etcd_server.put(f"{PREFIX}i{i}", f"http://10.0.0.{i}") for i in range(5)]
        )
        await asyncio.wait_for(all_in.wait(), 10)
        assert len(rebuilds) <= 2  # debounced, not one rebuild per key
        merged = discovery.apply(load_config(path))
        assert len(merged.upstream_by_name("svc").backends) == 5
    finally:
        await discovery.close()


def test_with_workers_discovery_runs_once_per_host(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    """`workers: 2`: the supervisor watches etcd and sends the workers what it found."""
    settings = config(etcd_server.url)
    settings["server"] = {"workers": 2, "shutdown_timeout": "5s"}
    gw = make_gateway(settings)
    etcd_server.put(f"{PREFIX}d1", pool.url("d1"))
    becomes(gw, {"d1"})  # each request on a new connection: both workers follow
    etcd_server.put(f"{PREFIX}d2", pool.url("d2"))
    becomes(gw, {"d1", "d2"})
    etcd_server.delete(f"{PREFIX}d1")
    becomes(gw, {"d2"})
    removal_logged(gw, pool.url("d1"))
    # One watcher for the host (the supervisor's), not one per worker.
    assert len(gw.events("discovery_connected")) == 1
    assert len([c for c in gw.events("discovery_backends_changed") if c["removed"]]) == 1
