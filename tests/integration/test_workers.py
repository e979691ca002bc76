"""`server.workers: 2`: a supervising parent and two serving processes sharing the port."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import basic_config
from lifecycle_support import (
    established_on,
    http_status,
    metric_sum,
    metric_values,
    metrics_text,
    pid_alive,
)
from wire import request


def worker_pids(gw: Gateway) -> dict[int, int]:
    """worker index -> pid of its latest start."""
    return {e["worker"]: e["pid"] for e in gw.events("worker_started")}


def serving_pids(gw: Gateway) -> set[int]:
    return {e["pid"] for e in gw.events("gateway_started") if e.get("worker")}


def get_fresh_connection(url: str) -> int:
    """One request on its own connection, so SO_REUSEPORT may pick any worker."""
    request = urllib.request.Request(url, headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        resp.read()
        return int(resp.status)


@pytest.fixture(scope="module")
def workers_gw(
    backends: BackendThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = basic_config(backends, server={"workers": 2, "shutdown_timeout": "5s"})
    gw = Gateway(config, tmp_path_factory.mktemp("workers")).start()
    wait_until(lambda: len(serving_pids(gw)) == 2, 10, "both workers serving")
    # The parent logs its start once both workers are ready: its line can come a flush later.
    wait_until(lambda: len(gw.events("gateway_started")) == 3, 10, "the parent's start line")
    yield gw
    gw.stop()


def test_two_workers_serve_the_port(workers_gw: Gateway) -> None:
    gw = workers_gw
    assert gw.proc is not None
    pids = worker_pids(gw)
    assert sorted(pids) == [0, 1]
    assert len(set(pids.values())) == 2
    assert gw.proc.pid not in pids.values()
    assert serving_pids(gw) == set(pids.values())
    assert all(pid_alive(pid) for pid in pids.values())
    (parent,) = [e for e in gw.events("gateway_started") if not e.get("worker")]
    assert parent["pid"] == gw.proc.pid
    assert parent["workers"] == 2
    assert all(get_fresh_connection(f"{gw.url}/api/users") == 200 for _ in range(10))
    assert http_status(f"{gw.admin_url}/readyz") == 200


async def test_metrics_aggregate_every_worker(workers_gw: Gateway) -> None:
    gw = workers_gw
    before = metric_sum(gw, "aiogate_requests_total")
    sent = 0
    # 20 kept-alive connections at once: SO_REUSEPORT spreads them over both workers
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(index: int) -> int:
            async with session.get(f"{gw.url}/api/orders?i={index}") as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one(i) for i in range(20)))
        sent += len(statuses)
        assert set(statuses) == {200}
        held = {pid: established_on(pid, gw.port) for pid in worker_pids(gw).values()}
        assert all(count > 0 for count in held.values()), held
        statuses = await asyncio.gather(*(one(i) for i in range(20)))
        sent += len(statuses)
    assert metric_sum(gw, "aiogate_requests_total") == before + sent
    text = metrics_text(gw)
    assert metric_values(text, "aiogate_request_duration_seconds_count")
    labels = [lbl for lbl, _ in metric_values(text, "aiogate_requests_total")]
    assert any('route="/api/orders"' in lbl and 'status="200"' in lbl for lbl in labels)


def test_sighup_reloads_every_worker(workers_gw: Gateway) -> None:
    gw = workers_gw
    done = len(gw.events("config_reloaded"))
    gw.write(
        {**gw.config, "routes": [*gw.config["routes"], {"path": "/w", "upstream": "user-service"}]}
    )
    gw.signal(signal.SIGHUP)
    events = gw.wait_event("config_reloaded", done + 2)[done:]
    assert len(events) == 2
    assert {e["pid"] for e in events} == set(worker_pids(gw).values())
    assert {e["generation"] for e in events} == {2}
    # every worker serves the new route, whichever takes the connection
    assert all(get_fresh_connection(f"{gw.url}/w") == 200 for _ in range(10))
    # the parent counts the reload once (its counter is in the aggregated files too)
    text = metrics_text(gw)
    assert dict(metric_values(text, "aiogate_config_reloads_total")) == {'result="applied"': 1.0}


def test_readyz_stays_200_through_a_reload(workers_gw: Gateway) -> None:
    gw = workers_gw
    done = len(gw.events("config_reloaded"))
    gw.signal(signal.SIGHUP)
    while len(gw.events("config_reloaded")) < done + 2:
        assert http_status(f"{gw.admin_url}/readyz") == 200
    gw.wait_event("config_reloaded", done + 2)


def test_a_killed_worker_is_restarted(workers_gw: Gateway) -> None:
    gw = workers_gw
    victim = worker_pids(gw)[0]
    survivor = worker_pids(gw)[1]
    started = len(gw.events("worker_started"))
    os.kill(victim, signal.SIGKILL)
    (exited,) = gw.wait_event("worker_exited")
    assert exited["pid"] == victim
    assert exited["worker"] == 0
    assert exited["code"] == -signal.SIGKILL
    # the survivor keeps answering while the replacement starts
    assert all(get_fresh_connection(f"{gw.url}/api/users") == 200 for _ in range(10))
    gw.wait_event("worker_started", started + 1)
    replacement = worker_pids(gw)[0]
    assert replacement not in (victim, survivor)
    wait_until(lambda: replacement in serving_pids(gw), 10, "replacement serving")
    wait_until(lambda: http_status(f"{gw.admin_url}/readyz") == 200, 10, "ready again")
    assert worker_pids(gw)[1] == survivor
    assert all(get_fresh_connection(f"{gw.url}/api/users") == 200 for _ in range(10))
    # the restarted worker read the current file: it knows the route added by the reload
    assert all(get_fresh_connection(f"{gw.url}/w") == 200 for _ in range(10))


def test_a_worker_restarted_after_a_rejected_edit_serves_the_accepted_config(
    workers_gw: Gateway,
) -> None:
    """Regression: workers re-read the live file when restarted, so after an invalid edit
    (rejected by SIGHUP) a crashed worker died on it again and again (a restart loop)."""
    gw = workers_gw
    gw.path.write_text("bogus_key: 1\n")
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_rejected")
    victim = worker_pids(gw)[1]
    exits = len(gw.events("worker_exited"))
    started = len(gw.events("worker_started"))
    os.kill(victim, signal.SIGKILL)
    gw.wait_event("worker_started", started + 1)
    replacement = worker_pids(gw)[1]
    wait_until(lambda: replacement in serving_pids(gw), 10, "replacement serving")
    wait_until(lambda: http_status(f"{gw.admin_url}/readyz") == 200, 10, "ready again")
    assert len(gw.events("worker_exited")) == exits + 1  # only the one we killed
    assert pid_alive(replacement)
    # it serves the last accepted config (with the /w route of the earlier reload)
    assert all(get_fresh_connection(f"{gw.url}/w") == 200 for _ in range(10))
    gw.write(gw.config)  # leave a valid file behind


def test_sigterm_stops_every_worker(
    backends: BackendThread, tmp_path: Path, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(basic_config(backends, server={"workers": 2}))
    wait_until(lambda: len(serving_pids(gw)) == 2, 10, "both workers serving")
    pids = set(worker_pids(gw).values())
    assert gw.proc is not None
    signalled = time.monotonic()
    assert gw.stop() == 0
    assert time.monotonic() - signalled < 10
    assert not any(pid_alive(pid) for pid in pids)
    gw.wait_event("shutdown_complete", 3)  # both workers and the parent
    assert refused_or_closed(gw)
    assert "Traceback" not in "\n".join(gw.stderr)


def refused_or_closed(gw: Gateway) -> bool:
    return http_status(f"{gw.url}/api/users", timeout=1) is None


def test_admin_reload_is_rejected_when_the_workers_cannot_build_it(
    backends: BackendThread, tmp_path: Path, make_gateway: Callable[..., Gateway]
) -> None:
    """A file the parent validates but the workers cannot build (a CA file that is readable
    but no PEM bundle: only building the upstream's TLS context finds out) is rejected: the
    answer says so, every worker keeps the old config, and so does a worker restarted later."""
    token = "workers-admin-token"
    config = basic_config(backends, server={"workers": 2}, admin={"token": token})
    gw = make_gateway(config)
    wait_until(lambda: len(serving_pids(gw)) == 2, 10, "both workers serving")
    bad_ca = tmp_path / "not-a-ca.pem"
    bad_ca.write_text("this is not a certificate\n")
    gw.write(
        {
            **gw.config,
            "upstreams": [
                *gw.config["upstreams"],
                {
                    "name": "tls-service",
                    "backends": [{"url": "https://127.0.0.1:9"}],
                    "tls": {"ca_file": str(bad_ca)},
                },
            ],
            "routes": [*gw.config["routes"], {"path": "/tls", "upstream": "tls-service"}],
        }
    )
    reply = request(gw.admin_port, "POST", "/admin/reload", [("Authorization", f"Bearer {token}")])
    assert reply.status >= 400, reply.body
    body = reply.json()
    assert body["status"] == "rejected"
    pids = set(worker_pids(gw).values())
    assert len(body["errors"]) == 2
    assert {int(e.split(":")[0].split()[1]) for e in body["errors"]} == pids  # "worker <pid>: …"
    assert all("no certificate" in e for e in body["errors"])  # the workers' own reasons
    # the workers' own lines and the parent's, which carries both reasons
    rejected = gw.wait_event("config_rejected", 3)
    assert gw.events("config_reloaded") == []
    assert sorted(len(e["errors"]) for e in rejected) == [1, 1, 2]
    # every worker still serves the old config, whichever takes the connection
    assert all(http_status(f"{gw.url}/tls") == 404 for _ in range(10))
    assert all(get_fresh_connection(f"{gw.url}/api/users") == 200 for _ in range(10))
    text = metrics_text(gw)
    assert dict(metric_values(text, "aiogate_config_reloads_total")) == {'result="rejected"': 1.0}
    # the accepted copy did not advance: a restarted worker loads the config its sibling runs
    victim = worker_pids(gw)[0]
    started = len(gw.events("worker_started"))
    os.kill(victim, signal.SIGKILL)
    gw.wait_event("worker_started", started + 1)
    replacement = worker_pids(gw)[0]
    wait_until(lambda: replacement in serving_pids(gw), 10, "replacement serving")
    assert all(http_status(f"{gw.url}/tls") == 404 for _ in range(10))
