"""Consul service discovery with the real daemon, against the Consul double or a real agent.

Instances are registered the way a registrar does (the agent API, one TTL check each, health
flipped with /v1/agent/check/pass|warn|fail), so the same tests run unchanged against a real
agent: `AIOGATE_TEST_CONSUL=http://127.0.0.1:8500` (tests that kill the agent or change its
ACLs then skip). The gateway must follow the service without a restart.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, wait_until
from wire import request

from consul_double import ConsulEnv

ADMIN_TOKEN = "admin-token-for-consul-tests"
CONSUL_TOKEN = "consul-acl-token-never-shown-7f3a"


@pytest.fixture(scope="module")
def pool() -> Iterator[BackendThread]:
    thread = BackendThread(["d1", "d2", "d3"])
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def service() -> str:
    """A service name of this test's own (a real agent keeps others' registrations)."""
    return f"aiogate-test-{uuid.uuid4().hex[:8]}"


def config(consul: ConsulEnv, service: str, **discovery: Any) -> dict[str, Any]:
    return {
        "logging": {"level": "info"},
        "admin": {"token": "${env:AIOGATE_TEST_ADMIN}"},
        "upstreams": [{
            "name": "svc",
            "discovery": {"type": "consul", "address": consul.url, "service": service,
                          "token": "${env:CONSUL_TOKEN:-}", "timeout": "1s", "wait": "10s",
                          "backoff": "100ms", "max_backoff": "500ms", **discovery},
        }],
        "routes": [{"path": "/", "upstream": "svc"}],
    }  # fmt: skip


def env(token: str | None = None) -> dict[str, str]:
    found = {"AIOGATE_TEST_ADMIN": ADMIN_TOKEN}
    token = token or os.environ.get("AIOGATE_TEST_CONSUL_TOKEN")
    if token:
        found["CONSUL_TOKEN"] = token
    return found


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
        names.add(body["backend"] if status == 200 else f"status:{status}:{body.get('error')}")
    return names


def becomes(gw: Gateway, expected: set[str], timeout: float = 10) -> None:
    wait_until(lambda: served_by(gw) == expected, timeout, f"traffic to exactly {expected}")


def metric(gw: Gateway, name: str, labels: str = "") -> float | None:
    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def port(pool: BackendThread, name: str) -> int:
    return pool.ports[name]


def ts(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


def applied_after_answer(consul: ConsulEnv, gw: Gateway, service: str, ids: list[str]) -> float:
    """Seconds from the double's first answer listing exactly `ids` to the gateway's
    `discovery_applied` that followed it (both stamped with this machine's clock)."""
    double = consul.need_double()
    answer = next(t for t, name, _, got in double.answers if name == service and got == ids)

    def applied() -> list[float]:
        return [ts(e) for e in gw.events("discovery_applied") if ts(e) >= answer - 0.002]

    wait_until(lambda: bool(applied()), 10, "a discovery_applied after the answer")
    return min(applied()) - answer


def test_instances_appear_flip_and_go_within_a_second(
    consul: ConsulEnv,
    service: str,
    pool: BackendThread,
    make_gateway: Callable[..., Gateway],
) -> None:
    gw = make_gateway(config(consul, service), env())
    # Nothing registered yet: the upstream exists but has no backend.
    status, body = get(gw)
    assert (status, body["error"]) == (503, "no_healthy_backend")

    # No Service.Address: the instance is reached at its node's address (127.0.0.1).
    consul.agent.register("d1", service, port(pool, "d1"))
    becomes(gw, {"d1"})
    consul.agent.register("d2", service, port(pool, "d2"), address="127.0.0.1")
    becomes(gw, {"d1", "d2"})
    consul.agent.set_status("d1", "critical")  # passing_only (default): out
    becomes(gw, {"d2"})
    consul.agent.set_status("d1", "passing")
    becomes(gw, {"d1", "d2"})
    consul.agent.deregister("d2")
    becomes(gw, {"d1"})

    changes = gw.events("discovery_backends_changed")
    assert any(c["added"] == [pool.url("d1")] for c in changes)
    assert gw.events("discovery_connected")[0]["service"] == service
    wait_until(lambda: metric(gw, "aiogate_discovery_backends", 'upstream="svc"') == 1, 10)
    assert metric(gw, "aiogate_discovery_up") == 1
    if consul.double is not None:
        # The contract: a change reaches the pool within 1 s of Consul's answer.
        for ids in (["d1"], ["d1", "d2"], ["d2"]):
            delay = applied_after_answer(consul, gw, service, ids)
            print(f"consul answer -> discovery_applied for {ids}: {delay * 1000:.0f} ms")
            assert delay < 1.0, (ids, delay)
        # Blocking queries, not polling: every call after the first carried an index.
        queries = consul.double.health_queries(service)
        assert all(q.get("passing") == "true" for q in queries)
        assert all("index" in q and q["wait"] == "10s" for q in queries[1:])


def test_consul_outage_keeps_the_last_set_and_recovers(
    consul: ConsulEnv,
    service: str,
    pool: BackendThread,
    make_gateway: Callable[..., Gateway],
) -> None:
    double = consul.need_double()
    consul.agent.register("d1", service, port(pool, "d1"))
    # At debug level every failed attempt is logged (later ones at debug).
    gw = make_gateway({**config(consul, service), "logging": {"level": "debug"}}, env())
    # The first read happens before the first Runtime: ready means already routed.
    assert served_by(gw) == {"d1"}

    double.kill()
    down = gw.wait_event("discovery_disconnected")[0]
    assert down["upstream"] == "svc"
    assert down["endpoint"] == consul.url
    assert down["backends"] == 1
    wait_until(lambda: metric(gw, "aiogate_discovery_up") == 0, 10, "discovery_up 0")
    assert served_by(gw) == {"d1"}
    # Retried while down (with back-off), logged as a warning once, not once per attempt.
    wait_until(lambda: len(gw.events("discovery_disconnected")) >= 3, 10, "retries")
    warnings = [e for e in gw.events("discovery_disconnected") if e["level"] == "warning"]
    assert len(warnings) == 1

    double.restart()  # same port, same registrations
    gw.wait_event("discovery_connected", count=2, timeout=15)
    consul.agent.register("d2", service, port(pool, "d2"))
    becomes(gw, {"d1", "d2"})
    assert metric(gw, "aiogate_discovery_up") == 1


def test_consul_down_at_start_serves_nothing_then_discovers(
    consul: ConsulEnv,
    service: str,
    pool: BackendThread,
    make_gateway: Callable[..., Gateway],
) -> None:
    double = consul.need_double()
    double.kill()
    gw = make_gateway(config(consul, service), env())
    status, body = get(gw)
    assert (status, body["error"]) == (503, "no_healthy_backend")
    double.restart()
    consul.agent.register("d3", service, port(pool, "d3"))
    becomes(gw, {"d3"}, timeout=15)


def test_a_refused_token_is_logged_retried_and_never_shown(
    consul: ConsulEnv,
    service: str,
    pool: BackendThread,
    make_gateway: Callable[..., Gateway],
) -> None:
    double = consul.need_double()
    consul.agent.register("d1", service, port(pool, "d1"))
    double.require_token("the-right-token")
    gw = make_gateway(config(consul, service), env(CONSUL_TOKEN))
    down = gw.wait_event("discovery_disconnected")[0]
    assert down["level"] == "warning"
    assert "HTTP 403, the ACL token was refused (ACL not found)" in down["error"]
    # Retried with back-off, sending the configured token each time.
    wait_until(lambda: len(double.health_queries(service)) >= 3, 10, "retries")
    assert {token for name, _, token in double.queries if name == service} == {CONSUL_TOKEN}
    status, _ = get(gw)
    assert status == 503

    # The operator fixes the ACL: the next retry succeeds, no restart needed.
    double.require_token(CONSUL_TOKEN)
    becomes(gw, {"d1"})
    gw.wait_event("discovery_connected")

    bearer = [("Authorization", f"Bearer {ADMIN_TOKEN}")]
    reply = request(gw.admin_port, "GET", "/admin/config", bearer)
    assert reply.status == 200
    assert "redacted" in json.loads(reply.body)["upstreams"][0]["discovery"]["token"]
    assert CONSUL_TOKEN not in reply.body.decode()
    assert not any(CONSUL_TOKEN in line for line in gw.lines)


def test_tag_passing_and_datacenter_filters(
    consul: ConsulEnv,
    service: str,
    pool: BackendThread,
    make_gateway: Callable[..., Gateway],
) -> None:
    consul.agent.register("d1", service, port(pool, "d1"), tags=("blue",))
    consul.agent.register("d2", service, port(pool, "d2"), tags=("green",))
    consul.agent.register("d3", service, port(pool, "d3"), tags=("blue",), status="warning")
    blue = make_gateway(config(consul, service, tag="blue", datacenter="dc1"), env())
    assert served_by(blue) == {"d1"}  # d3 is blue but only warning
    every = make_gateway(config(consul, service, passing_only=False), env())
    assert served_by(every) == {"d1", "d2", "d3"}
    consul.agent.set_status("d3", "passing")
    becomes(blue, {"d1", "d3"})
    if consul.double is not None:
        tagged = [q for q in consul.double.health_queries(service) if "tag" in q]
        assert tagged
        assert all(q["tag"] == "blue" and q["dc"] == "dc1" for q in tagged)


def test_an_unknown_datacenter_is_an_error_kept_retrying(
    consul: ConsulEnv,
    service: str,
    pool: BackendThread,
    make_gateway: Callable[..., Gateway],
) -> None:
    consul.agent.register("d1", service, port(pool, "d1"))
    gw = make_gateway(config(consul, service, datacenter="nowhere-dc"), env())
    down = gw.wait_event("discovery_disconnected")[0]
    assert "HTTP 500" in down["error"]
    assert "No path to datacenter" in down["error"]
    assert get(gw)[0] == 503


def test_check_reports_bad_consul_config_at_its_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "upstreams:\n"
        "  - name: a\n"
        "    discovery: {type: consul, address: 'ftp://x:8500', service: orders}\n"
        "  - name: b\n"
        "    discovery: {type: consul, service: orders, wait: 20m, passing_only: maybe}\n"
        "  - name: c\n"
        "    discovery: {type: consull, service: orders}\n"
        "routes:\n"
        "  - {path: /, upstream: a}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "aiogate", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "Traceback" not in out
    assert f"{path}:3:40: upstreams[0].discovery.address: invalid Consul address" in out
    assert f"{path}:5:54: upstreams[1].discovery.wait: must be at most 10m" in out
    assert f"{path}:5:73: upstreams[1].discovery.passing_only:" in out
    assert f"{path}:7:23: upstreams[2].discovery.type: invalid value 'consull'" in out
