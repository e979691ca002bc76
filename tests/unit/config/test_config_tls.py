"""`server.tls` and upstream client certificates: validated at load time, with positions."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from config_testing import MINIMAL_UPSTREAM, Errors, LoadText

from aiogate.config import GatewayConfig
from aiogate.reload import restart_only_changes


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    other = ca.issue_cert("localhost")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key", "other_key")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    other.private_key_pem.write_to_path(paths["other_key"])
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    paths["junk"] = str(junk)
    return paths


def server_tls(files: dict[str, str], extra: str = "", key: str = "key") -> str:
    return f"""\
server:
  tls:
    cert_file: {files["cert"]}
    key_file: {files[key]}
{extra}"""


def test_tls_listener_settings_load(load_text: LoadText, files: dict[str, str]) -> None:
    config = load_text(
        server_tls(files, f"    client_ca_file: {files['ca']}\n    min_version: 1.3\n")
        + MINIMAL_UPSTREAM
    )
    tls = config.server.tls
    assert tls is not None
    assert tls.min_version == "1.3"  # an unquoted YAML float is accepted
    assert tls.require_client_cert is False
    assert GatewayConfig().server.tls is None  # absent: plain HTTP


def test_unusable_certificate_files_are_errors_with_positions(
    errors: Errors, files: dict[str, str]
) -> None:
    assert errors(server_tls(files, key="other_key") + MINIMAL_UPSTREAM) == [
        f"3:16: server.tls.cert_file: cannot use certificate {files['cert']} with key"
        f" {files['other_key']}: key values mismatch"
    ]
    assert errors(server_tls({**files, "cert": files["junk"]}) + MINIMAL_UPSTREAM) == [
        f"3:16: server.tls.cert_file: cannot use certificate {files['junk']} with key"
        f" {files['key']}: not a valid PEM certificate and key"
    ]
    assert errors(server_tls(files, "    require_client_cert: true\n") + MINIMAL_UPSTREAM) == [
        "5:26: server.tls.require_client_cert: needs client_ca_file (the CA that signs client"
        " certificates)"
    ]
    assert errors(server_tls(files, "    min_version: 1.1\n") + MINIMAL_UPSTREAM) == [
        "5:18: server.tls.min_version: invalid value '1.1' (expected '1.2' or '1.3')"
    ]


def test_mtls_routes_need_client_certificate_verification(
    errors: Errors, load_text: LoadText, files: dict[str, str]
) -> None:
    routes = "routes:\n  - {path: /m, upstream: user-service, auth: {type: mtls}}\n"
    message = (
        "type 'mtls' needs 'server.tls.client_ca_file' (a TLS listener that verifies client"
        " certificates)"
    )
    assert errors(MINIMAL_UPSTREAM + routes) == [f"6:53: routes[0].auth.type: {message}"]
    assert errors(server_tls(files) + MINIMAL_UPSTREAM + routes) == [
        f"10:53: routes[0].auth.type: {message}"
    ]
    config = load_text(
        server_tls(files, f"    client_ca_file: {files['ca']}\n") + MINIMAL_UPSTREAM + routes
    )
    assert config.routes[0].auth is not None
    assert config.routes[0].auth.types == ("mtls",)


def test_upstream_client_certificate(
    errors: Errors, load_text: LoadText, files: dict[str, str]
) -> None:
    def upstream(tls: str) -> str:
        return (
            "upstreams:\n  - name: u\n    backends: [{url: 'https://127.0.0.1:9'}]\n"
            f"    tls: {{{tls}}}\n"
        )

    config = load_text(
        upstream(f"client_cert_file: {files['cert']}, client_key_file: {files['key']}")
    )
    assert config.upstreams[0].tls.client_cert_file == files["cert"]
    assert errors(upstream(f"client_cert_file: {files['cert']}")) == [
        "4:10: upstreams[0].tls.client_key_file: client_cert_file and client_key_file go together"
    ]
    (mismatch,) = errors(
        upstream(f"client_cert_file: {files['cert']}, client_key_file: {files['other_key']}")
    )
    assert "upstreams[0].tls.client_cert_file: cannot use client certificate" in mismatch
    assert mismatch.endswith("key values mismatch")


def test_tls_on_or_off_needs_a_restart_but_new_files_do_not(
    load_text: LoadText, files: dict[str, str], tmp_path: Path
) -> None:
    plain = load_text(MINIMAL_UPSTREAM)
    tls = load_text(server_tls(files) + MINIMAL_UPSTREAM)
    ca = load_text(server_tls(files, f"    client_ca_file: {files['ca']}\n") + MINIMAL_UPSTREAM)
    assert restart_only_changes(plain, tls) == ["server.tls"]
    assert restart_only_changes(tls, plain) == ["server.tls"]
    assert restart_only_changes(tls, ca) == []  # applied by the reload, like new files
