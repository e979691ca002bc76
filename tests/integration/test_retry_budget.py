"""The retry budget under a backend's death: a killed backend must cost no request.

Two backends run as their own processes (backend.py's app), so one can be killed abruptly
(SIGKILL: its sockets are torn down by the kernel mid-exchange, as in a crash). Concurrent
clients send idempotent GETs through a gateway with one retry per request; one backend is killed
in the middle of the load. Requests in flight on it, requests sent on its dead keep-alive
connections and requests that find its port closed must all be retried on the other backend.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway import Gateway, free_port, wait_until
from metrics_support import scrape

HERE = Path(__file__).resolve().parent
CLIENTS = 30
LOAD_SECONDS = 4.0
KILL_AFTER = 1.5
#: Each request spends a little time in the backend, so some are in flight at the kill.
PATH = "/slow/0.005"

# One backend.py app on a given port, in a process of its own (a thread cannot be killed).
_BACKEND = """
import sys
sys.path.insert(0, sys.argv[3])
from aiohttp import web
from backend import Seen, make_app
web.run_app(make_app(sys.argv[2], Seen()), host="127.0.0.1", port=int(sys.argv[1]),
            print=None, access_log=None)
"""


class BackendProcess:
    """backend.py's app in its own process, on a port chosen up front."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BACKEND, str(self.port), name, str(HERE)],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._listening, 15, f"backend {name} on port {self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"backend {self.name} exited with {self.proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """Abruptly: no graceful close, the kernel resets or closes its connections."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def pair() -> Iterator[list[BackendProcess]]:
    backends: list[BackendProcess] = []
    try:
        backends.extend(BackendProcess(name) for name in ("k0", "k1"))
        yield backends
    finally:
        for backend in backends:
            backend.kill()


class Load:
    """`CLIENTS` threads, each on its own keep-alive connection, until `stop` is set."""

    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self.stop = threading.Event()
        self.results: list[tuple[float, int, str]] = []  # (sent at, status, backend or error)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(15)

    def _client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self._gw.port, timeout=10)
            sent = time.monotonic()
            try:
                conn.request("GET", PATH)
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
                who = str(json.loads(raw).get("backend", "")) if status == 200 else raw.decode()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # The gateway closed the connection or sent something unreadable: a failure.
                status, who = 0, repr(exc)
                conn.close()
                conn = None
            with self._lock:
                self.results.append((sent, status, who))
        if conn is not None:
            conn.close()


def _config(backends: list[BackendProcess]) -> dict[str, Any]:
    return {
        "logging": {"level": "info"},
        "upstreams": [
            {
                "name": "pair",
                "backends": [{"url": b.url} for b in backends],
                # Defaults otherwise: circuit breaker on, no active health check.
                "retries": {"attempts": 1},
                "timeout": "5s",
            }
        ],
        "routes": [{"path": "/slow", "upstream": "pair"}],
    }


def test_a_killed_backend_costs_no_request(
    pair: list[BackendProcess], make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(_config(pair))
    with Load(gw) as load:
        time.sleep(KILL_AFTER)
        pair[0].kill()
        killed = time.monotonic()
        time.sleep(LOAD_SECONDS - KILL_AFTER)
    results = load.results
    failures = [(status, who) for _, status, who in results if status != 200]
    after = [who for sent, status, who in results if sent > killed + 0.5 and status == 200]
    retries = gw.events("retry")
    refused = scrape(gw).value("aiogate_upstream_retries_total", reason="budget_exhausted")
    print(
        f"\nretry budget: {len(results)} requests, {len(failures)} failed, "
        f"{len(retries)} retries ({sorted({e['reason'] for e in retries})}), "
        f"{refused:g} refused by the budget"
    )
    assert len(results) > CLIENTS * 10, "the load did not run"
    # Before the kill both backends served; after it, the survivor serves every request.
    assert {who for sent, status, who in results if sent < killed and status == 200} == {
        "k0",
        "k1",
    }
    assert after
    assert set(after) == {"k1"}
    # Only k0 failed, and every failure was retried on k1 (the one not tried yet).
    assert retries
    assert {e["backend"] for e in retries} == {pair[0].url}
    assert failures == [], failures[:5]
