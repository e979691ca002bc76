"""Active (http, tcp, script) and passive health checks against the real daemon."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ctlbackend import CtlGroup, ctl_group_fixtures
from gateway import Gateway, wait_until
from pool_support import backend_of, backend_view, call, pool_config

FAST = {"interval": "200ms", "timeout": "500ms", "unhealthy_threshold": 2, "healthy_threshold": 2}


group, _fresh = ctl_group_fixtures(2, prefix="h")


def _healthy(gw: Gateway, url: str) -> bool:
    return bool(backend_view(gw, url)["healthy"])


def test_http_check_removes_and_restores(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, health_check={"type": "http", **FAST}))
    wait_until(lambda: group[1].hits["/health"] >= 1, 5, "first check")
    group[1].health_status = 503
    flipped = time.monotonic()
    event = gw.wait_event("backend_health_changed", 1, timeout=5)[0]
    detection = time.monotonic() - flipped
    assert (event["upstream"], event["backend"], event["from"], event["to"]) == (
        "pool", group[1].url, "healthy", "unhealthy",
    )  # fmt: skip
    # interval x threshold = 0.4 s (+ jitter and one interval of phase)
    assert detection < 1.5, detection
    before = group[1].traffic
    assert {backend_of(gw) for _ in range(10)} == {"h0"}
    assert group[1].traffic == before
    view = backend_view(gw, group[1].url)
    assert view["last_check"]["ok"] is False
    assert view["last_check"]["detail"] == "http 503"
    group[1].health_status = 200
    event = gw.wait_event("backend_health_changed", 2, timeout=5)[1]
    assert (event["from"], event["to"]) == ("unhealthy", "healthy")
    assert {backend_of(gw) for _ in range(10)} == {"h0", "h1"}
    print(f"\nhttp check: failure detected in {detection:.2f}s (interval 0.2s x 2)")


def test_http_check_method_statuses_and_host(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    check = {
        "type": "http",
        **FAST,
        "method": "HEAD",
        "expected_statuses": [204],
        "path": "/health",
    }
    gw = make_gateway(pool_config(group, count=1, health_check=check))
    # the backend answers 200, not the expected 204: unhealthy
    gw.wait_event("backend_health_changed", 1, timeout=5)
    status, data, _, _ = call(gw)
    assert (status, data["error"]) == (503, "no_healthy_backend")


def test_tcp_check_follows_a_backend_that_goes_down(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, health_check={"type": "tcp", **FAST}))
    group[1].down()
    gw.wait_event("backend_health_changed", 1, timeout=5)
    assert {backend_of(gw) for _ in range(10)} == {"h0"}
    group[1].up()
    gw.wait_event("backend_health_changed", 2, timeout=5)
    assert {backend_of(gw) for _ in range(10)} == {"h0", "h1"}


def test_script_check(
    group: CtlGroup, make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    flag = tmp_path / f"ok-{group[1].port}"
    flag.touch()
    (tmp_path / f"ok-{group[0].port}").touch()
    check = {"type": "script", **FAST, "command": ["test", "-e", f"{tmp_path}/ok-{{port}}"]}
    gw = make_gateway(pool_config(group, health_check=check))
    wait_until(lambda: backend_view(gw, group[1].url)["last_check"] is not None, 5, "a check")
    flag.unlink()
    event = gw.wait_event("backend_health_changed", 1, timeout=5)[0]
    assert event["backend"] == group[1].url
    assert event["to"] == "unhealthy"
    assert backend_view(gw, group[1].url)["last_check"]["detail"] == "script exit 1"
    assert gw.events("health_check_output")  # the script's output goes to the log
    flag.touch()
    gw.wait_event("backend_health_changed", 2, timeout=5)


@pytest.mark.parametrize("inherit", [False, True])
def test_script_check_environment(
    group: CtlGroup, make_gateway: Callable[..., Gateway], tmp_path: Path, inherit: bool
) -> None:
    """A script sees PATH, its `env` and AIOGATE_*; the gateway's secrets only on request."""
    seen = tmp_path / "env"
    script = f"env > {seen}.$$ && mv {seen}.$$ {seen}"
    check: dict[str, Any] = {"type": "script", **FAST, "command": ["sh", "-c", script],
                             "env": {"CHECK_MODE": "deep"}}  # fmt: skip
    if inherit:
        check["inherit_env"] = True
    make_gateway(
        pool_config(group, count=1, health_check=check), env={"JWT_SECRET": "s3cret-from-env"}
    )
    wait_until(seen.exists, 5, "a script check")
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert env["CHECK_MODE"] == "deep"
    assert env["AIOGATE_BACKEND_PORT"] == str(group[0].port)
    assert "PATH" in env
    assert ("JWT_SECRET" in env) is inherit


def test_no_healthy_backend_is_503_at_once(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, health_check={"type": "http", **FAST}))
    group[0].health_status = group[1].health_status = 500
    gw.wait_event("backend_health_changed", 2, timeout=5)
    status, data, _, took = call(gw)
    assert (status, data["error"]) == (503, "no_healthy_backend")
    assert took < 0.5
    assert group[0].traffic == group[1].traffic == 0


def test_health_survives_reload(group: CtlGroup, make_gateway: Callable[..., Gateway]) -> None:
    slow = {**FAST, "interval": "2s"}  # after the reload no check runs before our requests
    config = pool_config(group, health_check={"type": "http", **slow, "unhealthy_threshold": 1})
    gw = make_gateway(config)
    group[1].health_status = 503
    gw.wait_event("backend_health_changed", 1, timeout=8)
    config["routes"].append({"path": "/other", "upstream": "pool"})
    gw.write(config)
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_reloaded", 1)
    before = group[1].traffic
    assert {backend_of(gw) for _ in range(10)} == {"h0"}
    assert group[1].traffic == before
    assert backend_view(gw, group[1].url)["healthy"] is False


def test_passive_ejection_with_cap_and_backoff(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    passive = {"consecutive_failures": 3, "ejection_time": "1s", "max_ejection_percent": 50}
    gw = make_gateway(
        pool_config(group, passive_health_check=passive, circuit_breaker={"enabled": False})
    )
    group[1].status = 503
    statuses = Counter(call(gw)[0] for _ in range(20))
    assert group[1].traffic == 3  # ejected after 3 in a row
    assert statuses == {200: 17, 503: 3}
    event = gw.wait_event("backend_ejected")[0]
    assert (event["backend"], event["seconds"]) == (group[1].url, 1.0)
    assert backend_view(gw, group[1].url)["ejected"] is True
    # the cap: h0 failing too is never ejected while h1 is out (50% of 2 = 1)
    group[0].status = 503
    for _ in range(6):
        call(gw)
    assert len(gw.events("backend_ejected")) == 1
    group[0].status = 200
    # after the ejection h1 is back, fails again 3 times: the second ejection is twice as long
    wait_until(lambda: not backend_view(gw, group[1].url)["ejected"], 5, "ejection end")
    for _ in range(10):
        call(gw)
    second = gw.wait_event("backend_ejected", 2)[1]
    assert second["seconds"] == 2.0
    assert second["ejections"] == 2
