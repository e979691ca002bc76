"""Auth bypass through encoded separators and path parameters, against the real daemon.

`/public/..%2Fadmin` was routed to the open `/public` route and forwarded as is, and nginx
(which decodes `%2F` before matching) served the JWT-protected `/admin` with 200. The same for
backslashes, and for `;` path parameters, which Tomcat/Spring/Jetty strip per segment. Raw
sockets throughout: a client library would normalise these targets before sending them.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, free_port, wait_until
from wire import Reply, access_line, assert_gateway_error, new_id, request, seen_count, seen_with

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "auth"))
from keys import SECRET, token

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from needs import needs_tool

ENV = {"TEST_JWT_SECRET": SECRET}

# Each spelling the attack run found; every one names /admin to an upstream that decodes
# `%2F`/`%5C`, treats `\` as a separator, or strips `;...` from a segment.
SLASH_ATTACKS = [
    "/public/..%2Fadmin",
    "/public/..%2fadmin",
    "/public/%2e%2e%2fadmin",
    "/public/%2E%2e%2Fadmin",
    "/public/..%5cadmin",
    "/public/..%5Cadmin",
    "/public/..\\admin",
    "/public/x/..%2F..%2Fadmin",
]
PARAMETER_ATTACKS = [
    "/public/..;/admin",
    "/public/%2e%2e;/admin",
    "/admin;x",
    "/admin;jsessionid=x",
]


def attack_config(public_url: str, admin_url: str, **server: Any) -> dict[str, Any]:
    """An open `/public` route and a JWT-protected `/admin` route, on separate upstreams."""
    config: dict[str, Any] = {
        "logging": {"level": "info"},
        "auth": {"jwt": {"algorithms": ["HS256"], "secret": "${env:TEST_JWT_SECRET}"}},
        "upstreams": [
            {"name": "public-svc", "backends": [{"url": public_url}]},
            {"name": "admin-svc", "backends": [{"url": admin_url}]},
        ],
        "routes": [
            {"path": "/public", "upstream": "public-svc", "name": "public"},
            {"path": "/admin", "upstream": "admin-svc", "name": "admin", "auth": {"type": "jwt"}},
        ],
    }
    if server:
        config["server"] = dict(server)
    return config


def backend_config(backends: BackendThread, **server: Any) -> dict[str, Any]:
    return attack_config(backends.url("backend-1"), backends.url("backend-2"), **server)


@pytest.fixture(scope="module")
def strict(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Defaults: escaped_slashes: reject, path_parameters: reject."""
    gw = Gateway(backend_config(backends), tmp_path_factory.mktemp("strict"), ENV).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def lenient(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = backend_config(backends, escaped_slashes="unescape", path_parameters="allow")
    gw = Gateway(config, tmp_path_factory.mktemp("lenient"), ENV).start()
    yield gw
    gw.stop()


def send(gw: Gateway, target: str, *headers: tuple[str, str]) -> tuple[Reply, str]:
    rid = new_id()
    return request(gw.port, "GET", target, [("X-Request-ID", rid), *headers]), rid


def bearer() -> tuple[str, str]:
    return ("Authorization", f"Bearer {token()}")


def assert_refused(gw: Gateway, backends: BackendThread, target: str, why: str) -> None:
    """400 bad_request naming the reason, and not one byte of it reached any backend."""
    before = seen_count(backends)
    reply, rid = send(gw, target, bearer())
    body = assert_gateway_error(reply, 400, "bad_request")
    assert why in body["message"], body
    assert body["request_id"] == rid
    assert seen_with(backends, rid) == []
    assert seen_count(backends) == before
    line = access_line(gw, rid)
    assert (line["status"], line["route"], line["upstream"]) == (400, "", "")


# -- defaults: refused -------------------------------------------------------------------------


@pytest.mark.parametrize("target", SLASH_ATTACKS)
def test_encoded_slash_or_backslash_is_refused_by_default(
    strict: Gateway, backends: BackendThread, target: str
) -> None:
    assert_refused(strict, backends, target, "encoded slash or backslash")


@pytest.mark.parametrize("target", PARAMETER_ATTACKS)
def test_path_parameters_are_refused_by_default(
    strict: Gateway, backends: BackendThread, target: str
) -> None:
    assert_refused(strict, backends, target, "';'")


def test_ordinary_and_encoded_data_still_pass(strict: Gateway, backends: BackendThread) -> None:
    """The refusals are narrow: `%3B` and a double-encoded `%252F` are data, forwarded as is."""
    for target, forwarded in [
        ("/public/a", "/public/a"),
        ("/public/a%3bb", "/public/a%3Bb"),
        ("/public/..%252Fadmin", "/public/..%252Fadmin"),
    ]:
        reply, rid = send(strict, target)
        assert reply.status == 200, (target, reply.status, reply.body[:200])
        (seen,) = seen_with(backends, rid)
        assert (seen["backend"], seen["raw_path"]) == ("backend-1", forwarded), target
    reply, _ = send(strict, "/admin")
    assert_gateway_error(reply, 401)


# -- escaped_slashes: unescape -----------------------------------------------------------------


@pytest.mark.parametrize("target", SLASH_ATTACKS)
def test_unescape_routes_by_the_decoded_path(
    lenient: Gateway, backends: BackendThread, target: str
) -> None:
    """Each spelling is /admin to the gateway too: its auth applies (401), nothing is sent."""
    before = seen_count(backends)
    reply, rid = send(lenient, target)
    assert_gateway_error(reply, 401, "unauthorized")
    assert seen_count(backends) == before
    line = access_line(lenient, rid)
    assert (line["route"], line["path"]) == ("admin", "/admin")


@pytest.mark.parametrize("target", SLASH_ATTACKS)
def test_unescape_forwards_exactly_the_routed_path(
    lenient: Gateway, backends: BackendThread, target: str
) -> None:
    reply, rid = send(lenient, target, bearer())
    assert reply.status == 200, (reply.status, reply.body[:200])
    (seen,) = seen_with(backends, rid)
    assert (seen["backend"], seen["raw_path"]) == ("backend-2", "/admin")
    assert access_line(lenient, rid)["path"] == seen["raw_path"]


def test_path_parameters_allow_keeps_them_literal(
    lenient: Gateway, backends: BackendThread
) -> None:
    """`allow`: `;` is an ordinary character; routed and forwarded the same, byte for byte."""
    for target, backend, route in [
        ("/public/..;/admin", "backend-1", "public"),
        ("/public/a;b=c", "backend-1", "public"),
    ]:
        reply, rid = send(lenient, target)
        assert reply.status == 200, (target, reply.status)
        (seen,) = seen_with(backends, rid)
        assert (seen["backend"], seen["raw_path"]) == (backend, target)
        assert access_line(lenient, rid)["route"] == route
    # `admin;x` is not the segment `admin` to the gateway: no route, nothing forwarded.
    reply, _ = send(lenient, "/admin;x")
    assert_gateway_error(reply, 404)


# -- the settings are read per request, so a reload changes them ------------------------------


def test_reload_switches_the_path_settings(backends: BackendThread, tmp_path: Path) -> None:
    gw = Gateway(backend_config(backends), tmp_path, ENV).start()
    try:
        assert_refused(gw, backends, "/public/..%2Fadmin", "encoded slash")
        gw.write(backend_config(backends, escaped_slashes="unescape"))
        gw.signal(signal.SIGHUP)
        gw.wait_event("config_reloaded")
        reply, _ = send(gw, "/public/..%2Fadmin")
        assert_gateway_error(reply, 401)
        # Unescaping slashes does not let path parameters in.
        assert_refused(gw, backends, "/public/..;/admin", "';'")
    finally:
        gw.stop()


# -- end to end with a real nginx upstream -----------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format seen '$http_x_request_id $request_uri';
    access_log {tmp}/access.log seen;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port};
        location /admin {{ return 200 "ADMIN"; }}
        location /public {{ return 200 "PUBLIC"; }}
        location / {{ return 404 "NONE"; }}
    }}
}}
"""


class Nginx:
    """A real nginx on a free loopback port: the upstream that decodes `%2F` in matching."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        tmp.mkdir()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=self.port))
        nginx = shutil.which("nginx") or "nginx"
        # -e: nginx opens its compiled-in error log before reading the config otherwise.
        self.proc = subprocess.Popen(
            [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._up, 10.0, "nginx listening")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _up(self) -> bool:
        assert self.proc.poll() is None, (self.tmp / "error.log").read_text()
        try:
            return request(self.port, "GET", "/public", timeout=1.0).status == 200
        except OSError:
            return False

    def uris(self, request_id: str) -> list[str]:
        log = self.tmp / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line.split(" ", 1)[1] for line in lines if line.startswith(request_id + " ")]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)  # graceful; the master reaps its worker
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    server = Nginx(tmp_path / "nginx")
    yield server
    server.stop()


# Skipped off CI on a machine without nginx; in CI (`make test` installs nginx-light) it runs.
@needs_tool("nginx", "nginx-light")
def test_bypass_is_closed_end_to_end_with_nginx(nginx: Nginx, tmp_path: Path) -> None:
    # The attack is real against this upstream: nginx alone serves /admin for it.
    for target in ("/public/..%2Fadmin", "/public/..%2fadmin", "/public/%2e%2e%2fadmin"):
        direct = request(nginx.port, "GET", target)
        assert (direct.status, direct.body) == (200, b"ADMIN"), target

    config = attack_config(nginx.url, nginx.url)
    (tmp_path / "strict").mkdir()
    gw = Gateway(config, tmp_path / "strict", ENV).start()
    try:
        refused = []
        for target in (*SLASH_ATTACKS, *PARAMETER_ATTACKS):
            reply, rid = send(gw, target)
            assert_gateway_error(reply, 400, "bad_request")
            assert b"ADMIN" not in reply.body
            refused.append(rid)
        reply, sentinel = send(gw, "/public/ok")
        assert (reply.status, reply.body) == (200, b"PUBLIC")
        # nginx logs in order: once the later request is logged, none of the refused was.
        wait_until(lambda: nginx.uris(sentinel) == ["/public/ok"], 10.0, "nginx access line")
        assert all(nginx.uris(rid) == [] for rid in refused)
    finally:
        gw.stop()

    config = attack_config(nginx.url, nginx.url, escaped_slashes="unescape")
    (tmp_path / "unescape").mkdir()
    gw = Gateway(config, tmp_path / "unescape", ENV).start()
    try:
        reply, _ = send(gw, "/public/..%2Fadmin")
        assert_gateway_error(reply, 401)  # routed as /admin: its JWT is required
        reply, rid = send(gw, "/public/..%2Fadmin", bearer())
        assert (reply.status, reply.body) == (200, b"ADMIN")
        wait_until(lambda: nginx.uris(rid) == ["/admin"], 10.0, "nginx access line")
    finally:
        gw.stop()
