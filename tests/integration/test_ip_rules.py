"""`ip_rules`: allow/deny by client IP, global and per route, on the real daemon."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import basic_config
from lifecycle_support import metric_values, metrics_text

OFFICE = "198.51.100.0/24"
BANNED = "203.0.113.0/24"


def get(gw: Gateway, path: str, client: str | None = None, **headers: str) -> tuple[int, Any]:
    """(status, parsed JSON body or None); `client` is sent as X-Forwarded-For."""
    if client is not None:
        headers["X-Forwarded-For"] = client
    request = urllib.request.Request(f"{gw.url}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status), None
    except urllib.error.HTTPError as exc:
        with exc:
            body, headers, code = exc.read(), exc.headers, exc.code
    assert headers["Content-Type"].startswith("application/json")
    assert headers["X-Request-ID"]
    return code, json.loads(body)


def ip_config(backends: BackendThread, **server: Any) -> dict[str, Any]:
    config = basic_config(backends, ip_rules={"deny": [BANNED]})
    config["routes"] = [
        *config["routes"],
        {"path": "/office", "upstream": "user-service", "name": "office",
         "ip_rules": {"allow": [OFFICE, "2001:db8::/32"], "deny": ["198.51.100.66"]}},
        {"path": "/keyed", "upstream": "user-service", "name": "keyed",
         "auth": {"type": "api_key"}, "ip_rules": {"allow": [OFFICE]}},
    ]  # fmt: skip
    config["auth"] = {"api_key": {"keys": [{"key": "k-alice", "consumer": "alice"}]}}
    config["server"] = server
    return config


@pytest.fixture(scope="module")
def gw(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """127.0.0.1 (the test client) is a trusted proxy: X-Forwarded-For names the client."""
    config = ip_config(backends, trusted_proxies=["127.0.0.1"])
    gateway = Gateway(config, tmp_path_factory.mktemp("iprules")).start()
    yield gateway
    gateway.stop()


@pytest.mark.parametrize(
    ("client", "path", "status", "rule"),
    [
        ("198.51.100.5", "/office", 200, None),  # in the route's allow list
        ("2001:db8::7", "/office", 200, None),
        ("198.51.100.66", "/office", 403, "deny"),  # deny wins over allow
        ("192.0.2.1", "/office", 403, "allow"),  # not in the allow list
        ("203.0.113.9", "/office", 403, "deny"),  # global deny applies on every route
        ("203.0.113.9", "/api/users", 403, "deny"),
        ("198.51.100.66", "/api/users", 200, None),  # a route's rules stay on that route
        ("192.0.2.1", "/api/users", 200, None),
        ("10.0.0.1, 198.51.100.5", "/office", 200, None),  # the rightmost untrusted hop
        ("198.51.100.5, 192.0.2.1", "/office", 403, "allow"),
    ],
)
def test_allow_and_deny(gw: Gateway, client: str, path: str, status: int, rule: str | None) -> None:
    code, body = get(gw, path, client)
    assert code == status
    if rule is not None:
        assert body["error"] == "forbidden"
        assert rule in body["message"]
        assert "/" not in body["message"]  # the rule type, never the list
        assert "198.51" not in body["message"]
        assert body["request_id"]


def test_without_forwarded_for_the_peer_is_the_client(gw: Gateway) -> None:
    assert get(gw, "/office")[0] == 403  # 127.0.0.1 is not in the office list
    assert get(gw, "/api/users")[0] == 200


def test_denied_before_auth(gw: Gateway) -> None:
    # No key from outside the office: 403, not 401 — credentials cannot be probed.
    code, body = get(gw, "/keyed", "192.0.2.1")
    assert code == 403
    assert body["error"] == "forbidden"
    assert get(gw, "/keyed", "198.51.100.5")[0] == 401
    assert get(gw, "/keyed", "198.51.100.5", **{"X-API-Key": "k-alice"})[0] == 200


def test_a_denied_request_never_reaches_the_backend(gw: Gateway, backends: BackendThread) -> None:
    code, body = get(gw, "/office", "192.0.2.44")
    assert code == 403
    with pytest.raises(KeyError):
        backends.seen.find(body["request_id"])


def test_metric_and_log_event(gw: Gateway) -> None:
    def rejected(route: str) -> float:
        samples = dict(metric_values(metrics_text(gw), "aiogate_ip_rejections_total"))
        return samples.get(f'route="{route}"', 0.0)

    before = rejected("office")
    for _ in range(3):
        assert get(gw, "/office", "192.0.2.77")[0] == 403
    assert rejected("office") == before + 3

    def logged(event: str) -> list[dict[str, Any]]:
        return [e for e in gw.events(event) if e.get("client_ip") == "192.0.2.77"]

    wait_until(lambda: len(logged("ip_rejected")) == 3 and len(logged("request")) == 3)
    events = logged("ip_rejected")
    assert {(e["route"], e["rule"], e["scope"]) for e in events} == {("office", "allow", "route")}
    assert {e["request_id"] for e in events} == {e["request_id"] for e in logged("request")}
    (access,) = {e["status"] for e in logged("request")}
    assert access == 403


def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    config = basic_config(backends, ip_rules={"deny": [BANNED]})
    config["routes"] = [
        {"path": "/local", "upstream": "user-service", "ip_rules": {"allow": ["127.0.0.0/8"]}},
        {"path": "/office", "upstream": "user-service", "ip_rules": {"allow": [OFFICE]}},
    ]
    gw = make_gateway(config)
    assert get(gw, "/local", "203.0.113.9")[0] == 200  # the spoofed address is not believed
    assert get(gw, "/office", "198.51.100.5")[0] == 403


def test_rules_change_with_a_reload(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(basic_config(backends))
    assert get(gw, "/api/users")[0] == 200
    gw.write({**gw.config, "ip_rules": {"deny": ["127.0.0.1"]}})
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_reloaded")
    code, body = get(gw, "/api/users")
    assert code == 403
    assert body["message"] == "client address is denied by an IP deny rule"
    (event,) = gw.wait_event("ip_rejected")
    assert (event["rule"], event["scope"], event["route"]) == ("deny", "global", "/api/users")
