"""Routing and path normalisation, over the wire against the real daemon and real backends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway
from gwconfigs import basic_config
from wire import (
    access_line,
    assert_gateway_error,
    new_id,
    request,
    seen_count,
    seen_with,
)


def routing_config(backends: BackendThread) -> dict[str, Any]:
    config = basic_config(backends)
    config["routes"] = [
        *config["routes"],
        {"path": "/public", "upstream": "user-service", "name": "public"},
        {"path": "/admin", "upstream": "order-service", "name": "admin"},
        {"path": "/files/special", "upstream": "order-service", "name": "files-static"},
        {"path": "/files/{name}", "upstream": "user-service", "name": "files-param"},
        {"path": "/assets/{*rest}", "upstream": "order-service", "name": "assets-rest"},
        {"path": "/assets", "upstream": "user-service", "name": "assets-plain"},
        {"path": "/only-get", "methods": ["GET"], "upstream": "user-service", "name": "only-get"},
    ]
    return config


@pytest.fixture(scope="module")
def rgw(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(routing_config(backends), tmp_path_factory.mktemp("routing")).start()
    yield gw
    gw.stop()


def routed(
    gw: Gateway, backends: BackendThread, method: str, target: str, **kw: Any
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Send one request; (reply, what the backend saw, the access line)."""
    rid = new_id()
    headers = [("X-Request-ID", rid), *kw.pop("headers", [])]
    reply = request(gw.port, method, target, headers, **kw)
    assert reply.status == 200, (target, reply.status, reply.body[:300])
    seen = seen_with(backends, rid)
    assert len(seen) == 1, seen
    return reply, seen[0], access_line(gw, rid)


# -- basic routing --------------------------------------------------------------------------


def test_users_go_to_backend_1(gateway: Gateway, backends: BackendThread) -> None:
    reply, seen, line = routed(gateway, backends, "GET", "/api/users")
    assert reply.json()["backend"] == "backend-1"
    assert seen["backend"] == "backend-1"
    assert seen["raw_path"] == "/api/users"
    assert line["route"] == "/api/users"
    assert line["upstream"] == "user-service"
    assert line["backend"] == backends.url("backend-1")


def test_orders_go_to_backend_2(gateway: Gateway, backends: BackendThread) -> None:
    reply, seen, line = routed(gateway, backends, "GET", "/api/orders")
    assert reply.json()["backend"] == "backend-2"
    assert seen["backend"] == "backend-2"
    assert line["upstream"] == "order-service"


def test_prefix_matches_whole_segments_only(gateway: Gateway, backends: BackendThread) -> None:
    _, seen, _ = routed(gateway, backends, "GET", "/api/users/42")
    assert (seen["backend"], seen["raw_path"]) == ("backend-1", "/api/users/42")

    before = seen_count(backends)
    rid = new_id()
    reply = request(gateway.port, "GET", "/api/usersx", [("X-Request-ID", rid)])
    body = assert_gateway_error(reply, 404, "no_route")
    assert body["request_id"] == rid
    assert reply.header("X-Request-ID") == rid
    assert seen_count(backends) == before


def test_no_route_at_all_is_404(gateway: Gateway) -> None:
    assert_gateway_error(request(gateway.port, "GET", "/nothing/here"), 404, "no_route")
    assert_gateway_error(request(gateway.port, "GET", "/"), 404)


def test_method_not_allowed_is_405_with_allow(gateway: Gateway, backends: BackendThread) -> None:
    before = seen_count(backends)
    reply = request(gateway.port, "PATCH", "/api/users", body=b"{}")
    assert_gateway_error(reply, 405, "method_not_allowed")
    allow = {m.strip() for m in (reply.header("Allow") or "").split(",")}
    assert allow == {"GET", "POST", "PUT", "DELETE", "HEAD"}
    assert seen_count(backends) == before


def test_head_is_served_by_a_get_route(rgw: Gateway, backends: BackendThread) -> None:
    rid = new_id()
    reply = request(rgw.port, "HEAD", "/only-get/x", [("X-Request-ID", rid)])
    assert reply.status == 200
    assert reply.body == b""
    assert int(reply.header("Content-Length") or 0) > 0  # describes the GET body
    (seen,) = seen_with(backends, rid)
    assert seen["method"] == "HEAD"
    assert access_line(rgw, rid)["route"] == "only-get"
    reply = request(rgw.port, "POST", "/only-get", body=b"x")
    assert_gateway_error(reply, 405)
    assert {m.strip() for m in (reply.header("Allow") or "").split(",")} == {"GET", "HEAD"}


def test_most_specific_route_wins(rgw: Gateway, backends: BackendThread) -> None:
    # Longer over shorter: /api/orders/{id}/items (backend-1) beats /api/orders (backend-2).
    _, seen, line = routed(rgw, backends, "GET", "/api/orders/7/items")
    assert (seen["backend"], line["route"]) == ("backend-1", "order-items")
    _, seen, line = routed(rgw, backends, "GET", "/api/orders/7")
    assert (seen["backend"], line["route"]) == ("backend-2", "/api/orders")
    # Static over {param}.
    _, seen, line = routed(rgw, backends, "GET", "/files/special")
    assert (seen["backend"], line["route"]) == ("backend-2", "files-static")
    # {param} matches one segment (and, as a prefix, what follows).
    _, seen, line = routed(rgw, backends, "GET", "/files/report.pdf")
    assert (seen["backend"], line["route"]) == ("backend-1", "files-param")
    assert seen["raw_path"] == "/files/report.pdf"
    # {*rest} takes the rest of the path, over the plain prefix it extends. (The bare
    # `/assets` also goes to `{*rest}` with an empty rest, by the router's design, which
    # leaves a plain `/assets` route beside it unreachable; not asserted either way here.)
    _, seen, line = routed(rgw, backends, "GET", "/assets/css/site.css")
    assert (seen["backend"], line["route"]) == ("backend-2", "assets-rest")
    assert seen["raw_path"] == "/assets/css/site.css"


def test_proxy_port_healthz_is_answered_by_the_gateway(
    rgw: Gateway, backends: BackendThread
) -> None:
    before = seen_count(backends)
    rid = new_id()
    reply = request(rgw.port, "GET", "/healthz", [("X-Request-ID", rid)])
    assert reply.status == 200
    assert reply.json() == {"status": "ok"}
    assert reply.header("X-Request-ID") == rid
    assert seen_count(backends) == before


# -- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/../admin",
        "/public/./../admin",
    ],
)
def test_dot_dot_never_reaches_public_upstream_as_admin(
    rgw: Gateway, backends: BackendThread, target: str
) -> None:
    """The traversal is resolved before routing: it is routed AND forwarded as /admin."""
    rid = new_id()
    reply = request(rgw.port, "GET", target, [("X-Request-ID", rid)])
    seen = seen_with(backends, rid)
    if reply.status == 200:
        (entry,) = seen
        assert entry["backend"] == "backend-2", entry  # /admin's upstream, never /public's
        assert entry["raw_path"] == "/admin"
        assert access_line(rgw, rid)["route"] == "admin"
    else:  # rejecting the request outright would be safe too
        assert_gateway_error(reply, 400)
        assert seen == []


def test_encoded_slash_is_refused_by_default(rgw: Gateway, backends: BackendThread) -> None:
    """`/public/..%2Fadmin` is /admin to nginx: refused (see test_path_attacks.py)."""
    rid = new_id()
    reply = request(rgw.port, "GET", "/public/..%2Fadmin", [("X-Request-ID", rid)])
    assert_gateway_error(reply, 400, "bad_request")
    assert seen_with(backends, rid) == []


def test_escape_above_root_is_clamped(rgw: Gateway, backends: BackendThread) -> None:
    _, seen, _ = routed(rgw, backends, "GET", "/../../admin")
    assert (seen["backend"], seen["raw_path"]) == ("backend-2", "/admin")


def test_dot_segments_are_routed_and_forwarded_resolved(
    gateway: Gateway, backends: BackendThread
) -> None:
    _, seen, line = routed(gateway, backends, "GET", "/api/users/../orders?x=1")
    assert seen["backend"] == "backend-2"
    assert seen["raw_path"] == "/api/orders?x=1"
    assert line["path"] == "/api/orders"
    assert line["route"] == "/api/orders"


def test_empty_segments_are_merged(gateway: Gateway, backends: BackendThread) -> None:
    _, seen, line = routed(gateway, backends, "GET", "//api//users///42")
    assert seen["backend"] == "backend-1"
    assert seen["raw_path"] == "/api/users/42"
    assert line["path"] == "/api/users/42"


def test_unreserved_escapes_are_decoded_before_routing(
    gateway: Gateway, backends: BackendThread
) -> None:
    # %61 = 'a', %2D = '-', %7E = '~': same resource as the plain spelling.
    _, seen, line = routed(gateway, backends, "GET", "/%61pi/users/x%2Dy%7Ez")
    assert seen["backend"] == "backend-1"
    assert seen["raw_path"] == "/api/users/x-y~z"
    assert line["route"] == "/api/users"


def test_reserved_escapes_stay_encoded(gateway: Gateway, backends: BackendThread) -> None:
    _, seen, _ = routed(gateway, backends, "GET", "/api/users/a%3fb%20c")
    assert seen["raw_path"] == "/api/users/a%3Fb%20c"


def test_absolute_form_target_is_routed_by_its_path(
    gateway: Gateway, backends: BackendThread
) -> None:
    _, seen, _ = routed(gateway, backends, "GET", "http://gw.test/api/orders/../users/1")
    assert (seen["backend"], seen["raw_path"]) == ("backend-1", "/api/users/1")


@pytest.mark.parametrize("target", ["/api/users/%00", "/api/users/%zz", "/api/users/%4"])
def test_unnormalisable_paths_are_400(
    gateway: Gateway, backends: BackendThread, target: str
) -> None:
    before = seen_count(backends)
    assert_gateway_error(request(gateway.port, "GET", target), 400, "bad_request")
    assert seen_count(backends) == before


def test_what_the_backend_sees_is_what_was_routed(rgw: Gateway, backends: BackendThread) -> None:
    for target in ["/api/users/./a/../b", "/files/%73pecial", "/assets/./x/../y/"]:
        _, seen, line = routed(rgw, backends, "GET", target)
        assert seen["raw_path"] == line["path"], (target, seen, line)
    # `/files/%73pecial` is `/files/special`: the static route, not the {param} one.
    _, seen, line = routed(rgw, backends, "GET", "/files/%73pecial")
    assert line["route"] == "files-static"
