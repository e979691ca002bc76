"""Reload (SIGHUP, POST /admin/reload) and graceful shutdown of the real `aiogate run` process."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import basic_config
from lifecycle_support import async_wait_until, http_status, metric_sum, refused, routes_with

ISSUE = re.compile(r"^(?P<file>/\S+):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")
SLOW_ROUTE = {"path": "/slow", "upstream": "user-service", "name": "slow"}


def invalid_yaml(gw: Gateway) -> str:
    """A config with an unknown key on line 4 and a bad duration on line 3 (col 21)."""
    return (
        "server:\n"
        f'  listen: "{gw.config["server"]["listen"]}"\n'
        "  shutdown_timeout: 5 parsecs\n"
        "  bogus_key: 1\n"
        "admin:\n"
        f'  listen: "{gw.config["admin"]["listen"]}"\n'
        "upstreams:\n"
        "  - name: only\n"
        "    backends: [{url: 'http://127.0.0.1:9'}]\n"
        "routes:\n"
        "  - {path: /only, upstream: only}\n"
    )


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


# -- SIGHUP -----------------------------------------------------------------------------------
def test_sighup_applies_a_new_route(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(basic_config(backends))
    assert http_status(f"{gw.url}/fresh") == 404

    gw.write(routes_with(gw.config, {"path": "/fresh", "upstream": "order-service"}))
    gw.signal(signal.SIGHUP)
    (event,) = gw.wait_event("config_reloaded")

    assert event["generation"] == 2
    assert event["path"] == str(gw.path)
    assert event["level"] == "info"
    assert event["restart_required"] == []
    assert http_status(f"{gw.url}/fresh") == 200
    assert backends.seen.last()["backend"] == "backend-2"
    assert http_status(f"{gw.url}/api/users") == 200  # the old routes came along
    assert gw.events("config_rejected") == []


def test_sighup_with_an_invalid_file_keeps_the_running_config(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(basic_config(backends))
    gw.path.write_text(invalid_yaml(gw))
    gw.signal(signal.SIGHUP)
    (event,) = gw.wait_event("config_rejected")

    assert event["level"] == "error"
    assert event["generation"] == 1
    issues = [ISSUE.match(error) for error in event["errors"]]
    assert all(issues), event["errors"]
    where = {(int(m["line"]), int(m["col"])): m["message"] for m in issues if m}
    assert all(m["file"] == str(gw.path) for m in issues if m)
    assert "invalid duration" in where[(3, 21)]
    assert "unknown key" in where[(4, 3)]
    # the old config keeps serving: its routes answer, the rejected file's do not
    assert http_status(f"{gw.url}/api/users") == 200
    assert http_status(f"{gw.url}/only") == 404
    assert gw.events("config_reloaded") == []

    # a later valid file is applied as generation 2 (the rejection did not use one up)
    gw.write(gw.config)
    gw.signal(signal.SIGHUP)
    assert gw.wait_event("config_reloaded")[0]["generation"] == 2
    assert gw.proc is not None
    assert gw.proc.poll() is None


async def test_admin_reload_endpoint(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    config = basic_config(backends, admin={"token": "${env:LIFECYCLE_ADMIN_TOKEN}"})
    gw = make_gateway(config, env={"LIFECYCLE_ADMIN_TOKEN": "t0ken-for-tests"})
    url = f"{gw.admin_url}/admin/reload"
    good = {"Authorization": "Bearer t0ken-for-tests"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url) as resp:
            assert resp.status == 401
            assert "Bearer" in resp.headers["WWW-Authenticate"]
        async with session.post(url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401

        gw.write(routes_with(gw.config, {"path": "/via-admin", "upstream": "user-service"}))
        async with session.post(url, headers=good) as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "applied", "generation": 2, "errors": []}
        async with session.get(f"{gw.url}/via-admin") as resp:
            assert resp.status == 200

        gw.path.write_text(invalid_yaml(gw))
        async with session.post(url, headers=good) as resp:
            body = await resp.json()
            assert resp.status == 422
        assert body["status"] == "rejected"
        assert body["generation"] == 2
        assert len(body["errors"]) >= 2
        assert all(ISSUE.match(error) for error in body["errors"]), body["errors"]
        async with session.get(f"{gw.url}/via-admin") as resp:
            assert resp.status == 200  # still generation 2
    assert len(gw.wait_event("config_rejected")) == 1  # log lines are flushed every 100 ms
    assert len(gw.events("config_reloaded")) == 1


# -- reload under load ------------------------------------------------------------------------
async def test_ten_reloads_under_load_fail_no_request(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    base = basic_config(backends)
    base["routes"].append(SLOW_ROUTE)
    gw = make_gateway(base)
    # config B: /api/users balanced over both backends, and a route A does not have
    config_a = gw.config
    config_b = {
        **config_a,
        "upstreams": [
            *config_a["upstreams"],
            {
                "name": "both",
                "backends": [
                    {"url": backends.url("backend-1")},
                    {"url": backends.url("backend-2")},
                ],
            },
        ],
        "routes": [{"path": "/api/users", "upstream": "both"}, *config_a["routes"][1:]],
    }
    expected = {"/api/users": {"backend-1", "backend-2"}, "/api/orders": {"backend-2"}}

    stop = asyncio.Event()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if index < 3 and n % 2:  # a few slow requests in flight at any time
                path, allowed = "/slow/0.5", {"backend-1"}
            else:
                path = "/api/users" if n % 3 else "/api/orders"
                allowed = expected[path]
            try:
                status, body = await get_json(session, f"{gw.url}{path}?c={index}&n={n}")
            except (aiohttp.ClientError, ValueError) as exc:
                failures.append(f"{path}: {exc!r}")
                continue
            if status != 200 or body.get("backend") not in allowed:
                failures.append(f"{path}: {status} {body}")
            else:
                outcomes["slow" if path.startswith("/slow") else "fast"] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        load = [asyncio.create_task(client(i, session)) for i in range(20)]
        started = time.monotonic()
        for number in range(1, 11):
            gw.write(config_b if number % 2 else config_a)
            gw.signal(signal.SIGHUP)
            await async_wait_until(
                lambda n=number: len(gw.events("config_reloaded")) >= n, 10, f"reload {number}"
            )
            # pace the ten reloads over ~3 s while the load keeps running
            await asyncio.sleep(max(0.0, started + number * 0.3 - time.monotonic()))
        stop.set()
        await asyncio.gather(*load)
        elapsed = time.monotonic() - started

    reloads = gw.events("config_reloaded")
    print(
        f"\nreload under load: {outcomes['fast']} fast + {outcomes['slow']} slow requests OK, "
        f"{len(failures)} failed, {len(reloads)} reloads in {elapsed:.2f}s"
    )
    assert failures == []
    assert len(reloads) == 10
    assert [e["generation"] for e in reloads] == list(range(2, 12))
    assert gw.events("config_rejected") == []
    assert outcomes["fast"] > 200
    assert outcomes["slow"] >= 6
    # every request got its access line; the metrics agree
    requests = outcomes["fast"] + outcomes["slow"]
    wait_until(lambda: len(gw.events("request")) >= requests, 5, "access lines")
    assert metric_sum(gw, "aiogate_requests_total") == requests
    assert gw.stop() == 0


async def test_request_in_flight_during_reload_completes(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    base = basic_config(backends)
    base["routes"].append(SLOW_ROUTE)
    gw = make_gateway(base)
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(get_json(session, f"{gw.url}/slow/2"))
        await async_wait_until(
            lambda: metric_sum(gw, "aiogate_active_connections") >= 1, 5, "request in flight"
        )
        # the new config drops the route the request is on, and its upstream's pool
        gw.write({**gw.config, "routes": gw.config["routes"][:1]})
        gw.signal(signal.SIGHUP)
        await async_wait_until(lambda: bool(gw.events("config_reloaded")), 10, "reload")
        assert not slow.done()
        async with session.get(f"{gw.url}/slow/0") as resp:
            assert resp.status == 404  # new requests see the new config at once
        status, body = await slow
    assert status == 200
    assert body == {"backend": "backend-1", "slept": "2"}


# -- graceful shutdown ------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_graceful_shutdown_drains_in_flight_requests(
    backends: BackendThread, make_gateway: Callable[..., Gateway], sig: signal.Signals
) -> None:
    base = basic_config(backends, server={"shutdown_timeout": "10s"})
    base["routes"].append(SLOW_ROUTE)
    gw = make_gateway(base)
    assert gw.proc is not None
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(get_json(session, f"{gw.url}/slow/2"))
        await async_wait_until(
            lambda: metric_sum(gw, "aiogate_active_connections") >= 1, 5, "request in flight"
        )
        signalled = time.monotonic()
        gw.signal(sig)
        # draining: the admin listener still answers, not ready
        await async_wait_until(
            lambda: http_status(f"{gw.admin_url}/readyz") == 503, 3, "readyz 503"
        )
        assert http_status(f"{gw.admin_url}/healthz") == 200
        # the proxy stops accepting new connections while the old request runs
        await async_wait_until(lambda: refused(gw.port), 3, "proxy port closed")
        assert not slow.done()
        status, body = await slow
        assert time.monotonic() - signalled < 5
    assert status == 200
    assert body["slept"] == "2"
    code = await asyncio.to_thread(gw.proc.wait, 10)
    assert code == 0
    assert time.monotonic() - signalled < 10
    (started,) = gw.wait_event("shutdown_started")
    gw.wait_event("shutdown_complete")
    assert started["in_flight"] == 1
    assert "Traceback" not in "\n".join(gw.stderr)


@pytest.mark.parametrize(
    ("shutdown_timeout", "low", "high"),
    [("1500ms", 1.4, 2.6), ("0s", 0.0, 1.0)],
    ids=["1500ms", "zero"],
)
async def test_shutdown_timeout_bounds_the_drain(
    backends: BackendThread,
    make_gateway: Callable[..., Gateway],
    shutdown_timeout: str,
    low: float,
    high: float,
) -> None:
    """Regression: aiohttp's Server.shutdown(t) waited t, cancelled, then waited t again (2x the
    drain, past systemd's TimeoutStopSec), and `shutdown_timeout: 0` meant "wait forever"."""
    base = basic_config(backends, server={"shutdown_timeout": shutdown_timeout})
    base["routes"].append(SLOW_ROUTE)
    gw = make_gateway(base)
    assert gw.proc is not None
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(get_json(session, f"{gw.url}/slow/5"))
        await async_wait_until(
            lambda: metric_sum(gw, "aiogate_active_connections") >= 1, 5, "request in flight"
        )
        signalled = time.monotonic()
        gw.signal(signal.SIGTERM)
        code = await asyncio.to_thread(gw.proc.wait, 10)
        took = time.monotonic() - signalled
        # the cut-off request fails on the client side (connection closed): never a hang
        result = (await asyncio.gather(slow, return_exceptions=True))[0]
    print(f"\nshutdown_timeout {shutdown_timeout} with /slow/5 in flight: exit after {took:.2f}s")
    assert code == 0
    assert low <= took < high, took
    assert isinstance(result, aiohttp.ClientError) or result[0] != 200
    gw.wait_event("shutdown_complete")
    (cut,) = gw.wait_event("request")
    assert cut["status"] == 499  # recorded as cut off, not lost
    assert "Traceback" not in "\n".join(gw.stderr)


def test_sigterm_after_a_reload_still_logs_shutdown(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    """Regression: loggers bound before a reload wrote into the replaced log sink, whose
    buffer was never flushed at exit, so `shutdown_started`/`shutdown_complete` were lost."""
    gw = make_gateway(basic_config(backends))
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_reloaded")
    assert gw.stop() == 0
    gw.wait_event("shutdown_started", timeout=5)
    gw.wait_event("shutdown_complete", timeout=5)
