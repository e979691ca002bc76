"""`reload: {watch: true}`: the real daemon reloads when its config file changes on disk."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import basic_config
from lifecycle_support import http_status, metric_values, metrics_text, routes_with

WATCH = {"watch": True, "debounce": "100ms"}
NEW_ROUTE = {"path": "/fresh", "upstream": "order-service", "name": "fresh"}


def watching(backends: BackendThread, **extra: Any) -> dict[str, Any]:
    return basic_config(backends, reload=dict(WATCH), **extra)


def quiet_for(seconds: float) -> None:
    """Let a debounce window (100 ms) pass many times over before asserting nothing happened."""
    time.sleep(seconds)


def test_an_edit_is_applied_within_seconds(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(watching(backends))
    (started,) = gw.wait_event("config_watch_started")
    assert started["path"] == str(gw.path)
    assert started["debounce"] == 0.1
    assert http_status(f"{gw.url}/fresh") == 404

    gw.write(routes_with(gw.config, NEW_ROUTE))  # write + rename, like an editor
    (event,) = gw.wait_event("config_reloaded", timeout=5)
    assert event["generation"] == 2
    assert event["changes"]["routes"]["added"] == ["fresh"]
    assert gw.events("config_file_changed")[0]["path"] == str(gw.path)
    assert http_status(f"{gw.url}/fresh") == 200

    # an in-place rewrite (no rename) is seen too
    gw.path.write_text(gw.path.read_text().replace("/fresh", "/fresher"))
    gw.wait_event("config_reloaded", 2, timeout=5)
    assert http_status(f"{gw.url}/fresher") == 200
    assert http_status(f"{gw.url}/fresh") == 404


def test_an_invalid_save_is_rejected_and_the_old_config_serves(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(watching(backends))
    gw.wait_event("config_watch_started")
    gw.path.with_suffix(".tmp").write_text("routes:\n  - path: /x\n    upstream: nowhere\n")
    gw.path.with_suffix(".tmp").replace(gw.path)
    (rejected,) = gw.wait_event("config_rejected", timeout=5)
    assert any("nowhere" in error for error in rejected["errors"])
    assert any(error.startswith(f"{gw.path}:3:") for error in rejected["errors"])
    assert not gw.events("config_reloaded")
    assert http_status(f"{gw.url}/api/users") == 200
    assert http_status(f"{gw.admin_url}/readyz") == 200

    gw.write(routes_with(gw.config, NEW_ROUTE))  # fixing the file applies it
    gw.wait_event("config_reloaded", timeout=5)
    assert http_status(f"{gw.url}/fresh") == 200


def test_a_burst_of_saves_is_one_reload(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(watching(backends))
    gw.wait_event("config_watch_started")
    for n in range(10):  # faster than the 100 ms debounce
        gw.write(routes_with(gw.config, {**NEW_ROUTE, "path": f"/burst{n}", "name": f"b{n}"}))
        time.sleep(0.02)
    gw.wait_event("config_reloaded", timeout=5)
    quiet_for(1.0)
    reloads = gw.events("config_reloaded")
    assert len(reloads) <= 2, reloads  # one, or two if the burst straddled a quiet window
    assert http_status(f"{gw.url}/burst9") == 200
    assert http_status(f"{gw.url}/burst8") == 404


def test_identical_bytes_do_not_reload(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(watching(backends))
    gw.wait_event("config_watch_started")
    gw.write(gw.config)  # a save without changes: new inode, same bytes
    quiet_for(1.0)
    assert not gw.events("config_file_changed")
    assert not gw.events("config_reloaded")


def test_watching_is_off_by_default(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(basic_config(backends))
    gw.write(routes_with(gw.config, NEW_ROUTE))
    quiet_for(1.5)
    assert not gw.events("config_watch_started")
    assert not gw.events("config_reloaded")
    assert http_status(f"{gw.url}/fresh") == 404
    gw.signal(signal.SIGHUP)  # SIGHUP is unaffected
    gw.wait_event("config_reloaded")
    assert http_status(f"{gw.url}/fresh") == 200


def test_watching_can_be_switched_on_and_off_by_a_reload(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(basic_config(backends))
    gw.write({**gw.config, "reload": WATCH})
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_watch_started")
    gw.write(routes_with({**gw.config, "reload": {"watch": False}}, NEW_ROUTE))
    gw.wait_event("config_watch_stopped", timeout=5)  # applied by the watcher, then it stops
    assert http_status(f"{gw.url}/fresh") == 200
    gw.write({**gw.config, "reload": {"watch": False}})
    quiet_for(1.0)
    assert len(gw.events("config_reloaded")) == 2
    assert http_status(f"{gw.url}/fresh") == 200


def test_the_folder_disappearing_does_not_stop_the_daemon(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(watching(backends))
    gw.wait_event("config_watch_started")
    folder = gw.path.parent
    moved = folder.with_name(folder.name + "-moved")
    folder.rename(moved)
    gw.wait_event("config_watch_failed", timeout=5)
    assert http_status(f"{gw.url}/api/users") == 200
    shutil.rmtree(moved)
    folder.mkdir()
    gw.write(routes_with(gw.config, NEW_ROUTE))
    gw.wait_event("config_reloaded", timeout=10)
    assert http_status(f"{gw.url}/fresh") == 200
    assert gw.stop() == 0


def test_with_workers_the_parent_watches_and_reloads_every_worker(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(watching(backends, server={"workers": 2, "shutdown_timeout": "5s"}))
    assert gw.proc is not None
    wait_until(
        lambda: len([e for e in gw.events("gateway_started") if e.get("worker")]) == 2,
        10,
        "both workers serving",
    )
    (started,) = gw.wait_event("config_watch_started")
    assert started["pid"] == gw.proc.pid  # workers never watch
    gw.write(routes_with(gw.config, NEW_ROUTE))
    events = gw.wait_event("config_reloaded", 2, timeout=10)
    workers = {e["pid"] for e in gw.events("worker_started")}
    assert {e["pid"] for e in events} == workers
    for _ in range(10):
        assert http_status(f"{gw.url}/fresh") == 200
    text = metrics_text(gw)
    assert dict(metric_values(text, "aiogate_config_reloads_total")) == {'result="applied"': 1.0}
    assert len(gw.events("config_watch_started")) == 1


class SilentEtcd:
    """A TCP listener that accepts and never answers: the daemon's start, which waits up to
    the discovery `timeout` for a first read from etcd, is held there. It runs `on_connect`
    once, at the first connection; the config has been loaded by then, the watcher not started.
    """

    def __init__(self, on_connect: Callable[[], None]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._on_connect = on_connect
        self._held: list[socket.socket] = []
        self.connected = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # closed by the test
            while True:
                conn, _ = self._listener.accept()
                self._held.append(conn)
                if not self.connected.is_set():
                    self._on_connect()
                    self.connected.set()

    def close(self) -> None:
        self._listener.close()
        for conn in self._held:
            conn.close()


def test_a_save_between_loading_and_watching_is_applied(
    backends: BackendThread, tmp_path: Path
) -> None:
    # Regression: the watcher took the file as it found it at start as its baseline, so a
    # save made while the daemon was starting (after it had read the file) was never applied.
    holder: list[Gateway] = []

    def save_while_starting() -> None:
        gw = holder[0]
        gw.write(routes_with(gw.config, NEW_ROUTE))

    etcd = SilentEtcd(save_while_starting)
    held = {"name": "held", "discovery": {"type": "etcd", "prefix": "/held/", "timeout": "5s",
            "endpoints": [f"http://127.0.0.1:{etcd.port}"]}}  # fmt: skip
    config = watching(backends)
    config["upstreams"] = [*config["upstreams"], held]
    gw = Gateway(config, tmp_path)
    holder.append(gw)
    try:
        gw.start(timeout=30)
        assert etcd.connected.is_set()  # the save happened before the daemon was ready
        (event,) = gw.wait_event("config_reloaded", timeout=10)
        assert event["changes"]["routes"]["added"] == ["fresh"]
        assert http_status(f"{gw.url}/fresh") == 200
    finally:
        gw.stop()
        etcd.close()
