"""Routes and upstreams from an etcd key (`config_source:`), against a real etcd and daemon.

The key's value is written the way an operator or a deploy tool writes it (the v3 JSON API);
the gateway must validate and apply each change like a reload, keep the last good config when
a value is invalid or etcd is gone, and merge the file with etcd's value on SIGHUP.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, wait_until

from etcd_server import EtcdServer

KEY = "/aiogate/config"


@pytest.fixture(scope="module")
def pool() -> Iterator[BackendThread]:
    thread = BackendThread(["f1", "e1", "e2", "e3"])
    thread.start()
    yield thread
    thread.stop()


def file_config(etcd: EtcdServer, pool: BackendThread, **extra: Any) -> dict[str, Any]:
    return {
        "logging": {"level": "info"},
        "config_source": {"etcd": {"endpoints": [etcd.url], "key": KEY, "timeout": "1s",
                                   "backoff": "100ms", "max_backoff": "500ms"}},
        "upstreams": [{"name": "filesvc", "backends": [{"url": pool.url("f1")}]}],
        "routes": [{"path": "/file", "upstream": "filesvc"}],
        **extra,
    }  # fmt: skip


def etcd_value(pool: BackendThread, path: str, backend: str) -> str:
    """A value as an operator writes it: YAML (the line numbers matter to the error test)."""
    return (
        "upstreams:\n"
        f"  - name: svc-{backend}\n"
        f"    backends: [{{url: '{pool.url(backend)}'}}]\n"
        "routes:\n"
        f"  - path: {path}\n"
        f"    upstream: svc-{backend}\n"
    )


def get(gw: Gateway, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{gw.url}{path}", data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def served(gw: Gateway, path: str) -> str:
    """Which backend answered `path`, or `status:<code>`."""
    status, body = get(gw, path)
    return str(body["backend"]) if status == 200 else f"status:{status}"


def becomes(gw: Gateway, path: str, expected: str, timeout: float = 10) -> None:
    wait_until(lambda: served(gw, path) == expected, timeout, f"{path} -> {expected}")


def reloads(gw: Gateway, source: str) -> list[dict[str, Any]]:
    return [e for e in gw.events("config_reloaded") if e.get("source") == source]


def test_etcd_routes_serve_change_reject_outage(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    etcd_server.put(KEY, etcd_value(pool, "/one", "e1"))
    gw = make_gateway(file_config(etcd_server, pool))
    # Read before the first Runtime: ready means etcd's routes serve, the file's are replaced.
    assert served(gw, "/one/x") == "e1"
    assert served(gw, "/file/x") == "status:404"

    etcd_server.put(KEY, etcd_value(pool, "/two", "e2"))
    becomes(gw, "/two/x", "e2")
    assert served(gw, "/one/x") == "status:404"
    wait_until(lambda: len(reloads(gw, "etcd")) == 1, 10, "config_reloaded from etcd")
    assert reloads(gw, "etcd")[0]["routes"] == 1

    # Invalid: rejected with positions in the etcd document; the last good config stays.
    bad = etcd_value(pool, "/three", "e3").replace("upstream: svc-e3", "upstream: nope")
    etcd_server.put(KEY, bad)
    rejected = gw.wait_event("config_rejected")[-1]
    assert rejected["source"] == "etcd"
    assert rejected["errors"] == [
        f"etcd:{KEY}:6:15: routes[0].upstream: unknown upstream 'nope' (known: svc-e3)"
    ]
    assert served(gw, "/two/x") == "e2"
    assert served(gw, "/three/x") == "status:404"

    # etcd gone: serving goes on with the last good config; back: watching resumes.
    etcd_server.kill()
    gw.wait_event("config_source_disconnected")
    assert served(gw, "/two/x") == "e2"
    etcd_server.start()
    etcd_server.put(KEY, etcd_value(pool, "/four", "e3"))
    becomes(gw, "/four/x", "e3", timeout=15)
    assert served(gw, "/two/x") == "status:404"
    assert len(gw.events("config_source_connected")) >= 2

    # Deleted: back to the file's routes and upstreams.
    etcd_server.delete(KEY)
    becomes(gw, "/file/x", "f1")
    assert served(gw, "/four/x") == "status:404"
    gw.wait_event("config_source_deleted")


def test_sighup_merges_the_file_with_the_last_good_etcd_value(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    etcd_server.put(KEY, etcd_value(pool, "/one", "e1"))
    gw = make_gateway(file_config(etcd_server, pool))
    assert served(gw, "/one/x") == "e1"
    etcd_server.put(KEY, "routes: [{path: /bad, upstream: missing}]\n")
    gw.wait_event("config_rejected")

    # The file changes a section of its own (and its routes, which etcd's replace).
    config = file_config(etcd_server, pool, routes=[{"path": "/other", "upstream": "filesvc"}])
    config["server"] = {**gw.config["server"], "max_body_size": 10}
    config["admin"] = gw.config["admin"]
    gw.write(config)
    gw.signal(signal.SIGHUP)
    wait_until(lambda: len(reloads(gw, "file")) == 1, 10, "config_reloaded from the file")
    assert served(gw, "/one/x") == "e1"  # the last good etcd value, not the rejected one
    assert served(gw, "/other/x") == "status:404"
    assert get(gw, "/one/x", body=b"x" * 100)[0] == 413  # the file's new limit applies


def test_etcd_down_at_start_then_applied_when_it_comes(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    etcd_server.put(KEY, etcd_value(pool, "/one", "e1"))
    etcd_server.kill()
    gw = make_gateway(file_config(etcd_server, pool))
    assert served(gw, "/file/x") == "f1"  # started from the file alone
    gw.wait_event("config_source_disconnected")
    etcd_server.start()
    becomes(gw, "/one/x", "e1", timeout=15)
    assert served(gw, "/file/x") == "status:404"


# -- server.workers > 1: the supervisor watches etcd for the host, the workers follow ----------

WORKERS = {"workers": 2, "shutdown_timeout": "5s"}


def worker_pids(gw: Gateway) -> set[int]:
    return {e["pid"] for e in gw.events("gateway_started") if e.get("worker")}


def everywhere(gw: Gateway, path: str, expected: str) -> None:
    """Every worker serves `path` from `expected`: fresh connections (urllib closes each one),
    which SO_REUSEPORT spreads over both."""
    becomes(gw, path, expected)
    assert {served(gw, path) for _ in range(20)} == {expected}


def etcd_watchers(etcd: EtcdServer) -> float:
    """The watchers etcd holds open (its own gauge): one per process that watches the key."""
    with urllib.request.urlopen(f"{etcd.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("etcd_debugging_mvcc_watcher_total "):
            return float(line.split()[1])
    raise AssertionError("etcd_debugging_mvcc_watcher_total not in etcd's metrics")


def source_copy(worker: int) -> Path:
    """The supervisor's copy of etcd's value, as a worker's environment names it."""
    for entry in Path(f"/proc/{worker}/environ").read_bytes().split(b"\0"):
        name, _, value = entry.partition(b"=")
        if name == b"AIOGATE_SOURCE_FILE":
            return Path(value.decode())
    raise AssertionError("AIOGATE_SOURCE_FILE not in the worker's environment")


def workers_gateway(
    etcd: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway], **extra: Any
) -> Gateway:
    gw = make_gateway(file_config(etcd, pool, server=WORKERS, **extra))
    wait_until(lambda: len(worker_pids(gw)) == 2, 10, "both workers serving")
    return gw


def test_workers_follow_the_supervisors_one_watch(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    etcd_server.put(KEY, etcd_value(pool, "/one", "e1"))
    gw = workers_gateway(etcd_server, pool, make_gateway)
    pids = worker_pids(gw)
    # Read by the supervisor before the workers start: their first requests use it.
    assert {served(gw, "/one/x") for _ in range(20)} == {"e1"}
    assert served(gw, "/file/x") == "status:404"
    # One watch for the host, not one per worker.
    wait_until(lambda: etcd_watchers(etcd_server) == 1, 10, "the supervisor's watch")
    assert len(gw.events("config_source_connected")) == 1

    etcd_server.put(KEY, etcd_value(pool, "/two", "e2"))
    everywhere(gw, "/two/x", "e2")
    assert {served(gw, "/one/x") for _ in range(10)} == {"status:404"}
    wait_until(lambda: len(reloads(gw, "etcd")) == 2, 10, "both workers reloaded from etcd")
    assert {e["pid"] for e in reloads(gw, "etcd")} == pids

    # Invalid: the supervisor rejects it (once, with etcd's positions); no worker sees it.
    bad = etcd_value(pool, "/three", "e3").replace("upstream: svc-e3", "upstream: nope")
    etcd_server.put(KEY, bad)
    (rejected,) = gw.wait_event("config_rejected")
    assert rejected["source"] == "etcd"
    assert rejected["errors"] == [
        f"etcd:{KEY}:6:15: routes[0].upstream: unknown upstream 'nope' (known: svc-e3)"
    ]
    everywhere(gw, "/two/x", "e2")
    assert served(gw, "/three/x") == "status:404"
    assert len(reloads(gw, "etcd")) == 2
    assert len(gw.events("config_rejected")) == 1

    # etcd gone: both keep serving the last good config; back: the next value applies.
    etcd_server.kill()
    gw.wait_event("config_source_disconnected")
    everywhere(gw, "/two/x", "e2")
    etcd_server.start()
    etcd_server.put(KEY, etcd_value(pool, "/four", "e3"))
    everywhere(gw, "/four/x", "e3")
    wait_until(lambda: etcd_watchers(etcd_server) == 1, 10, "the supervisor's watch again")

    # Deleted: back to the file's routes and upstreams, on every worker.
    etcd_server.delete(KEY)
    everywhere(gw, "/file/x", "f1")
    assert {served(gw, "/four/x") for _ in range(10)} == {"status:404"}
    assert worker_pids(gw) == pids  # nothing was restarted to get there


def test_workers_sighup_and_restart_keep_the_last_good_etcd_value(
    etcd_server: EtcdServer, pool: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    etcd_server.put(KEY, etcd_value(pool, "/one", "e1"))
    gw = workers_gateway(etcd_server, pool, make_gateway)
    etcd_server.put(KEY, "routes: [{path: /bad, upstream: missing}]\n")
    gw.wait_event("config_rejected")
    # The workers' copy holds the last good value, readable by the gateway's user alone.
    copy = source_copy(min(worker_pids(gw)))
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert copy.read_text() == etcd_value(pool, "/one", "e1")

    # The file changes a section of its own: merged with the last good value, not the bad one.
    config = file_config(etcd_server, pool, routes=[{"path": "/other", "upstream": "filesvc"}])
    config["server"] = {**gw.config["server"], "max_body_size": 10}
    config["admin"] = gw.config["admin"]
    gw.write(config)
    gw.signal(signal.SIGHUP)
    wait_until(lambda: len(reloads(gw, "file")) == 2, 10, "both workers reloaded the file")
    everywhere(gw, "/one/x", "e1")
    assert served(gw, "/other/x") == "status:404"
    assert {get(gw, "/one/x", body=b"x" * 100)[0] for _ in range(10)} == {413}

    # A worker started afresh loads the same merge (the supervisor's copies), not the file's.
    (victim, *_) = sorted(worker_pids(gw))
    started = len(gw.events("gateway_started"))
    os.kill(victim, signal.SIGKILL)
    gw.wait_event("gateway_started", started + 1, timeout=15)
    everywhere(gw, "/one/x", "e1")
    assert {served(gw, "/file/x") for _ in range(10)} == {"status:404"}
    assert etcd_watchers(etcd_server) == 1
