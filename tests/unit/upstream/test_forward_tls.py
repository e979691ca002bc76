"""https backends: the pool speaks TLS, verifies certificates, and honours `tls:` settings."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from upstream_testing import deadline

from aiogate.config import UpstreamConfig
from aiogate.upstream.forward import ConnectionPool, Origin, UpstreamConnectError
from aiogate.upstream.pool import UpstreamPool


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"tls ok {request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    assert site._server is not None
    port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield port
    await runner.cleanup()


async def test_https_request_with_a_trusted_ca(ca: trustme.CA, tls_server: int) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    pool = ConnectionPool(Origin("https", "127.0.0.1", tls_server), ssl_context=context)
    try:
        for _ in range(2):  # the second exchange reuses the TLS connection
            response = await pool.request("GET", "/x", [("Host", "localhost")], None,
                                          deadline=deadline())  # fmt: skip
            assert response.status == 200
            assert await response.read() == b"tls ok /x"
            response.release()
        assert pool.idle == 1
    finally:
        await pool.close()


async def test_untrusted_certificate_is_a_connect_error(tls_server: int) -> None:
    pool = ConnectionPool(Origin("https", "127.0.0.1", tls_server))  # system trust store only
    try:
        with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await pool.request("GET", "/", [], None, deadline=deadline())
    finally:
        await pool.close()


async def test_tls_settings_from_config(ca: trustme.CA, tls_server: int, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    for tls in ({"ca_file": str(ca_file)}, {"verify": False}):
        config = UpstreamConfig.model_validate(
            {"name": "secure", "backends": [{"url": f"https://127.0.0.1:{tls_server}"}],
             "tls": tls}
        )  # fmt: skip
        upstream = UpstreamPool(config)
        try:
            backend = upstream.choose("127.0.0.1")
            response = await backend.connections.request(
                "GET", "/cfg", [("Host", "localhost")], None, deadline=deadline()
            )
            assert await response.read() == b"tls ok /cfg"
            response.release()
        finally:
            await upstream.close()


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="cannot read"):
        UpstreamConfig.model_validate(
            {"name": "s", "backends": [{"url": "https://example.test"}],
             "tls": {"ca_file": str(tmp_path / "missing.pem")}}
        )  # fmt: skip


def test_plain_origin_schemes_only() -> None:
    with pytest.raises(ValueError, match="unsupported upstream scheme"):
        ConnectionPool(Origin("ftp", "127.0.0.1", 21))
