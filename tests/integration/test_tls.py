"""TLS and mTLS on the proxy listener, against the real daemon with real TLS peers.

Certificates come from `trustme` (a throwaway CA per test module); clients are the stdlib's
`http.client`/`ssl`, curl and `openssl s_client`, so the handshake is a real one each time.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from backend import BackendThread
from cryptography import x509
from gateway import Gateway, free_port, wait_until
from gwconfigs import basic_config
from metrics_support import scrape
from wire import access_line, new_id, seen_with

from needs import needs_tool

FAILURES = "aiogate_tls_handshake_failures_total"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pki(ca: trustme.CA, tmp_path: Path) -> Pki:
    return Pki(ca, tmp_path)


class Pki:
    """The files a gateway config points at, and client certificates to present."""

    def __init__(self, ca: trustme.CA, folder: Path) -> None:
        self.ca = ca
        self.folder = folder
        self.ca_file = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file = folder / "cert.pem"
        self.key_file = folder / "key.pem"
        self.server = self.issue_server("first.gw.test")

    def issue_server(self, common_name: str) -> trustme.LeafCert:
        """A server certificate written over the configured files (what a rotation does)."""
        cert = self.ca.issue_cert("localhost", "127.0.0.1", common_name=common_name)
        cert.private_key_pem.write_to_path(str(self.key_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        return cert

    def tls(self, **extra: Any) -> dict[str, Any]:
        return {"cert_file": str(self.cert_file), "key_file": str(self.key_file), **extra}

    def client_context(self, client: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if client is not None:
            client.configure_cert(context)
        return context


def subject_of(cert: trustme.LeafCert) -> str:
    pem = cert.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).subject.rfc4514_string()


def served_common_name(port: int, context: ssl.SSLContext) -> str:
    """The CN of the certificate a new connection is given."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return common_name(tls)


def common_name(tls: ssl.SSLSocket) -> str:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    attrs = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        x509.NameOID.COMMON_NAME
    )
    return str(attrs[0].value)


def get(
    port: int, path: str, context: ssl.SSLContext, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    # The server certificate names localhost and 127.0.0.1; check_hostname stays on.
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def handshake_fails(port: int, context: ssl.SSLContext) -> None:
    """The server refuses the handshake: in TLS 1.3 the client learns it on its first read."""
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        exchange(port, context)


def exchange(port: int, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /api/users HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        answer = tls.recv(1024)
        if not answer:
            raise ConnectionResetError("closed without an answer")
        return answer


def failures(gw: Gateway, reason: str) -> float:
    return scrape(gw).value(FAILURES, reason=reason)


def wait_failure(gw: Gateway, reason: str, before: float = 0.0) -> None:
    wait_until(lambda: failures(gw, reason) > before, 10, f"{FAILURES}{{reason={reason}}}")


# -- HTTPS ------------------------------------------------------------------------------------


def test_https_request_is_proxied_with_forwarded_proto(
    make_gateway: Any, backends: BackendThread, pki: Pki
) -> None:
    gw = make_gateway(basic_config(backends, server={"tls": pki.tls()}))
    rid = new_id()
    status, _, body = get(gw.port, "/api/users", pki.client_context(), {"X-Request-ID": rid})
    assert status == 200, body
    (seen,) = seen_with(backends, rid)
    assert seen["headers"]["X-Forwarded-Proto"] == "https"
    assert "proto=https" in seen["headers"]["Forwarded"]
    assert access_line(gw, rid)["status"] == 200


@needs_tool("curl", "curl")
def test_curl_over_https_with_keep_alive(
    make_gateway: Any, backends: BackendThread, pki: Pki
) -> None:
    gw = make_gateway(basic_config(backends, server={"tls": pki.tls()}))
    url = f"https://localhost:{gw.port}/api/users"
    result = subprocess.run(
        ["curl", "-sS", "--cacert", str(pki.ca_file), "-o", "/dev/null", "-o", "/dev/null",
         "-w", "%{http_code} %{num_connects}\n", url, url],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Two requests, the second on the first one's connection.
    assert result.stdout.split() == ["200", "1", "200", "0"], result.stdout


def test_plaintext_request_to_tls_port_is_closed_and_counted(
    make_gateway: Any, backends: BackendThread, pki: Pki
) -> None:
    gw = make_gateway(basic_config(backends, server={"tls": pki.tls()}))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /api/users HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        assert sock.recv(1024) == b""  # closed, no answer (and certainly no traceback)
    wait_failure(gw, "plain_http")
    assert get(gw.port, "/api/users", pki.client_context())[0] == 200
    assert not [line for line in gw.stderr if "Traceback" in line]


def test_handshake_that_never_finishes_is_closed_after_header_timeout(
    make_gateway: Any, backends: BackendThread, pki: Pki
) -> None:
    gw = make_gateway(basic_config(backends, server={"tls": pki.tls(), "header_timeout": "1s"}))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        assert sock.recv(1024) == b""  # the gateway gave up (the socket timeout did not fire)
    wait_failure(gw, "timeout")


@needs_tool("openssl", "openssl")
def test_tls_1_1_and_weak_ciphers_are_refused(
    make_gateway: Any, backends: BackendThread, pki: Pki
) -> None:
    gw = make_gateway(basic_config(backends, server={"tls": pki.tls()}))

    def s_client(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-CAfile",
             str(pki.ca_file), *args],
            input="", capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    assert s_client("-tls1_2", "-cipher", "ECDHE+AESGCM").returncode == 0
    assert s_client("-tls1_2", "-cipher", "AES128-SHA").returncode != 0  # no forward secrecy
    assert s_client("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA").returncode != 0  # not AEAD
    assert s_client("-tls1_1").returncode != 0
    wait_failure(gw, "protocol")


def test_websocket_over_tls_with_a_client_certificate(
    make_gateway: Any, pki: Pki, tmp_path: Path
) -> None:
    """wss://: the WebSocket tunnel runs on the TLS transport; mtls auth admits the handshake."""
    from wsbackend import WsBackend

    backend = WsBackend().start()
    try:
        config = {
            "server": {"tls": pki.tls(client_ca_file=str(pki.ca_file))},
            "upstreams": [{"name": "ws", "backends": [{"url": backend.url}]}],
            "routes": [{"path": "/ws", "upstream": "ws", "auth": {"type": "mtls"}}],
        }
        gw = make_gateway(config)
        client = pki.ca.issue_cert("ws-client@example.test", common_name="ws-client")
        big = b"\x00\xff" * 300_000

        async def go(context: ssl.SSLContext) -> bytes:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(f"wss://localhost:{gw.port}/ws", ssl=context) as ws,
            ):
                await ws.send_bytes(big)
                return bytes((await ws.receive(timeout=30)).data)

        assert asyncio.run(go(pki.client_context(client))) == big
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            asyncio.run(go(pki.client_context()))  # no certificate: 401 before the upgrade
        assert refused.value.status == 401
    finally:
        backend.stop()


# -- mTLS -------------------------------------------------------------------------------------


def mtls_config(backends: BackendThread, pki: Pki, *, require: bool) -> dict[str, Any]:
    config = basic_config(
        backends,
        server={"tls": pki.tls(client_ca_file=str(pki.ca_file), require_client_cert=require)},
    )
    config["routes"].append(
        {"path": "/secure", "upstream": "user-service", "auth": {"type": "mtls"},
         "transformations": {"request": {"add_headers": {
             "X-Client-Subject": "${tls.client_subject}", "X-Consumer": "${consumer}"}}}},
    )  # fmt: skip
    config["routes"].append(
        {"path": "/public", "upstream": "user-service",
         "transformations": {"request": {"add_headers": {
             "X-Client-Subject": "${tls.client_subject}"}}}},
    )  # fmt: skip
    return config


def test_mtls_required_rejects_clients_without_a_good_certificate(
    make_gateway: Any, backends: BackendThread, pki: Pki
) -> None:
    gw = make_gateway(mtls_config(backends, pki, require=True))
    client = pki.ca.issue_cert("client-a@example.test", common_name="client-a")
    expired = pki.ca.issue_cert(
        "old@example.test",
        common_name="old",
        not_before=datetime.datetime(2019, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
    )
    untrusted = trustme.CA().issue_cert("x@example.test", common_name="stranger")

    handshake_fails(gw.port, pki.client_context())
    wait_failure(gw, "no_client_cert")
    handshake_fails(gw.port, pki.client_context(untrusted))
    wait_failure(gw, "client_cert_untrusted")
    handshake_fails(gw.port, pki.client_context(expired))
    wait_failure(gw, "client_cert_expired")

    rid = new_id()
    status, _, body = get(gw.port, "/secure", pki.client_context(client), {"X-Request-ID": rid})
    assert status == 200, body
    (seen,) = seen_with(backends, rid)
    assert seen["headers"]["X-Client-Subject"] == subject_of(client)
    assert seen["headers"]["X-Consumer"] == subject_of(client)
    assert access_line(gw, rid)["consumer"] == subject_of(client)
    assert not [line for line in gw.stderr if "Traceback" in line]


def test_mtls_optional_certificate_decides_on_mtls_routes_only(
    make_gateway: Any, backends: BackendThread, pki: Pki
) -> None:
    gw = make_gateway(mtls_config(backends, pki, require=False))
    client = pki.ca.issue_cert("client-b@example.test", common_name="client-b")

    status, _, body = get(gw.port, "/secure", pki.client_context())
    assert status == 401, body
    assert json.loads(body)["error"] == "unauthorized"

    rid = new_id()
    status, _, _ = get(gw.port, "/public", pki.client_context(), {"X-Request-ID": rid})
    assert status == 200
    (seen,) = seen_with(backends, rid)
    assert seen["headers"]["X-Client-Subject"] == ""  # no certificate: empty, not an error

    rid = new_id()
    status, _, _ = get(gw.port, "/secure", pki.client_context(client), {"X-Request-ID": rid})
    assert status == 200
    assert access_line(gw, rid)["consumer"] == subject_of(client)


def test_each_client_certificate_has_its_own_user_rate_limit(
    make_gateway: Any, backends: BackendThread, pki: Pki
) -> None:
    config = mtls_config(backends, pki, require=True)
    config["routes"][-2]["rate_limit"] = {"requests": 1, "window": "1h", "dimension": "user"}
    gw = make_gateway(config)
    alice = pki.client_context(pki.ca.issue_cert("alice@example.test", common_name="alice"))
    bob = pki.client_context(pki.ca.issue_cert("bob@example.test", common_name="bob"))
    assert get(gw.port, "/secure", alice)[0] == 200
    assert get(gw.port, "/secure", alice)[0] == 429  # the same certificate: the same bucket
    assert get(gw.port, "/secure", bob)[0] == 200  # another subject: its own bucket


def test_mtls_route_needs_a_listener_that_verifies_client_certificates(
    make_gateway: Any, backends: BackendThread, pki: Pki, tmp_path: Path
) -> None:
    config = mtls_config(backends, pki, require=False)
    config["server"] = {"listen": "127.0.0.1:0", "tls": pki.tls()}
    gw = Gateway(config, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "aiogate", "check", "--config", str(gw.path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "type 'mtls' needs 'server.tls.client_ca_file'" in result.stdout + result.stderr
    assert f"{gw.path}:" in result.stdout + result.stderr


# -- rotation ---------------------------------------------------------------------------------


def test_sighup_rotates_the_certificate_without_dropping_connections(
    make_gateway: Any, backends: BackendThread, pki: Pki
) -> None:
    gw = make_gateway(basic_config(backends, server={"tls": pki.tls()}))
    context = pki.client_context()
    kept = http.client.HTTPSConnection("127.0.0.1", gw.port, context=context, timeout=10)
    kept.request("GET", "/api/users")
    assert kept.getresponse().read()
    assert kept.sock is not None
    assert common_name(kept.sock) == "first.gw.test"

    pki.issue_server("second.gw.test")
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_reloaded")

    kept.request("GET", "/api/users")  # the open connection survived the reload
    response = kept.getresponse()
    assert response.status == 200
    assert response.read()
    assert common_name(kept.sock) == "first.gw.test"
    assert served_common_name(gw.port, context) == "second.gw.test"

    # A bad PEM: the reload is rejected and the running certificate keeps serving.
    pki.cert_file.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    gw.signal(signal.SIGHUP)
    (rejected,) = gw.wait_event("config_rejected")
    assert "server.tls" in " ".join(rejected["errors"])
    assert served_common_name(gw.port, context) == "second.gw.test"

    # A key that belongs to another certificate: rejected too.
    other = pki.ca.issue_cert("localhost", common_name="third.gw.test")
    pki.issue_server("fourth.gw.test")
    other.private_key_pem.write_to_path(str(pki.key_file))
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_rejected", count=2)
    assert served_common_name(gw.port, context) == "second.gw.test"
    kept.request("GET", "/api/users")
    response = kept.getresponse()
    assert response.status == 200
    assert response.read()
    kept.close()


def test_turning_tls_off_needs_a_restart(
    make_gateway: Any, backends: BackendThread, pki: Pki
) -> None:
    config = basic_config(backends, server={"tls": pki.tls()})
    gw = make_gateway(config)
    gw.write({**gw.config, "server": {"listen": gw.config["server"]["listen"]}})
    gw.signal(signal.SIGHUP)
    (reloaded,) = gw.wait_event("config_reloaded")
    assert reloaded["restart_required"] == ["server.tls"]
    assert get(gw.port, "/api/users", pki.client_context())[0] == 200  # still HTTPS


def test_every_worker_serves_tls(make_gateway: Any, backends: BackendThread, pki: Pki) -> None:
    gw = make_gateway(basic_config(backends, server={"tls": pki.tls(), "workers": 2}))
    for _ in range(6):
        assert get(gw.port, "/api/users", pki.client_context())[0] == 200


# -- mTLS to backends -------------------------------------------------------------------------


class HttpsBackend:
    """An aiohttp HTTPS server that requires a client certificate from `ca`."""

    def __init__(self, ca: trustme.CA) -> None:
        self.port = free_port()
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.configure_cert(self.context)
        ca.configure_trust(self.context)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.subjects: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        ssl_object = request.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
        der = ssl_object.getpeercert(binary_form=True)
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        self.subjects.append(subject)
        return web.json_response({"client": subject})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.context)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> HttpsBackend:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def https_backend(ca: trustme.CA) -> Iterator[HttpsBackend]:
    with HttpsBackend(ca) as backend:
        yield backend


def test_upstream_mtls_presents_the_client_certificate(
    https_backend: HttpsBackend, make_gateway: Any, pki: Pki, tmp_path: Path
) -> None:
    client = pki.ca.issue_cert("gateway@example.test", common_name="aiogate")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    url = f"https://127.0.0.1:{https_backend.port}"
    tls = {"ca_file": str(pki.ca_file)}
    config = {
        "upstreams": [
            {"name": "with-cert", "backends": [{"url": url}],
             "tls": {**tls, "client_cert_file": str(tmp_path / "client.pem"),
                     "client_key_file": str(tmp_path / "client.key")}},
            {"name": "without-cert", "backends": [{"url": url}], "tls": tls},
        ],
        "routes": [
            {"path": "/with", "upstream": "with-cert"},
            {"path": "/without", "upstream": "without-cert"},
        ],
    }  # fmt: skip
    gw = make_gateway(config)
    with_cert = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    with_cert.request("GET", "/with")
    response = with_cert.getresponse()
    assert response.status == 200
    assert json.loads(response.read()) == {"client": subject_of(client)}
    with_cert.close()
    without = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    without.request("GET", "/without")
    response = without.getresponse()
    # The backend refused the handshake (with TLS 1.3 the gateway learns it on its first read).
    assert response.status == 502
    assert json.loads(response.read())["error"] in ("bad_gateway", "bad_upstream_response")
    without.close()


def test_upstream_client_certificate_and_key_must_match(
    make_gateway: Any, pki: Pki, tmp_path: Path
) -> None:
    one = pki.ca.issue_cert("a@example.test")
    two = pki.ca.issue_cert("b@example.test")
    one.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    two.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    config = {
        "upstreams": [
            {"name": "u", "backends": [{"url": "https://127.0.0.1:1"}],
             "tls": {"client_cert_file": str(tmp_path / "client.pem"),
                     "client_key_file": str(tmp_path / "client.key")}},
        ],
        "routes": [{"path": "/", "upstream": "u"}],
    }  # fmt: skip
    gw = Gateway(config, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "aiogate", "check", "--config", str(gw.path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "key values mismatch" in out, out
    assert "client_cert_file" in out


def test_repeated_handshake_failures_are_each_counted(
    make_gateway: Any, backends: BackendThread, pki: Pki
) -> None:
    """Many bad handshakes in a row: each is counted once and the listener keeps serving."""
    gw = make_gateway(mtls_config(backends, pki, require=True))
    client = pki.ca.issue_cert("client-c@example.test", common_name="client-c")
    for _ in range(20):
        handshake_fails(gw.port, pki.client_context())
    wait_until(lambda: failures(gw, "no_client_cert") >= 20, 10, "20 counted failures")
    assert get(gw.port, "/public", pki.client_context(client))[0] == 200
