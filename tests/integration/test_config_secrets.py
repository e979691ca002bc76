"""Secrets from files and systemd credentials, on the real daemon; none shown by /admin/config."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

from backend import BackendThread
from gateway import Gateway
from gwconfigs import basic_config
from wire import request

ADMIN_TOKEN = "cred-admin-token-7f3a"
JWT_SECRET = "file-jwt-secret-91bc-0123456789abcdef"
URL_USER, URL_PASSWORD, QUERY_PASSWORD = "jwks-user-e1", "jwks-pw-e2", "jwks-qpass-e3"
BEARER, API_KEY = "upstream-bearer-c4", "upstream-apikey-d5"
NEVER_SHOWN = (ADMIN_TOKEN, JWT_SECRET, URL_USER, URL_PASSWORD, QUERY_PASSWORD, BEARER, API_KEY)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(secret: str, claims: dict[str, Any]) -> str:
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"exp": int(time.time()) + 600, **claims}).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def secrets_config(backends: BackendThread) -> dict[str, Any]:
    config = basic_config(backends)
    config["admin"] = {"token": "${cred:admin-token}"}
    jwks = f"https://{URL_USER}:{URL_PASSWORD}@127.0.0.1:9/jwks?password={QUERY_PASSWORD}"
    config["auth"] = {
        "jwt": {"algorithms": ["HS256", "RS256"], "secret": "${file:secrets/jwt}", "jwks_url": jwks}
    }
    config["routes"] = [
        *config["routes"],
        {"path": "/private", "upstream": "user-service", "auth": {"type": "jwt"},
         "transformations": {"request": {"add_headers": {
             "Authorization": f"Bearer {BEARER}", "X-Api-Key": API_KEY, "X-Gateway": "aiogate"}}}},
    ]  # fmt: skip
    return config


def test_secrets_from_files_and_credentials_work_and_are_never_shown(
    backends: BackendThread, tmp_path: Path
) -> None:
    (tmp_path / "secrets").mkdir()  # relative to the config file's folder
    (tmp_path / "secrets" / "jwt").write_text(JWT_SECRET + "\n")
    creds = tmp_path / "credentials"  # what systemd's LoadCredential= provides
    creds.mkdir()
    (creds / "admin-token").write_text(ADMIN_TOKEN + "\n")
    gw = Gateway(secrets_config(backends), tmp_path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    gw.start()
    try:
        # The JWT secret came from the file, without its trailing newline.
        good = hs256(JWT_SECRET, {"sub": "alice"})
        assert (
            request(gw.port, "GET", "/private", [("Authorization", f"Bearer {good}")]).status == 200
        )
        bad = hs256(JWT_SECRET + "\n", {"sub": "alice"})
        assert (
            request(gw.port, "GET", "/private", [("Authorization", f"Bearer {bad}")]).status == 401
        )

        # The admin token came from the credential, and the dump shows no secret at all.
        bearer = [("Authorization", f"Bearer {ADMIN_TOKEN}")]
        reply = request(gw.admin_port, "GET", "/admin/config", bearer)
        assert reply.status == 200, reply.body
        text = reply.body.decode()
        for secret in NEVER_SHOWN:
            assert secret not in text, secret
        config = json.loads(text)
        added = config["routes"][-1]["transformations"]["request"]["add_headers"]
        assert added["X-Gateway"] == "aiogate"
        assert "redacted" in added["Authorization"]
        assert "redacted" in added["X-Api-Key"]
        assert config["auth"]["jwt"]["jwks_url"].endswith(
            "@127.0.0.1:9/jwks?password=***redacted***"
        )

        # A reload (which re-reads the files) logs no secret either.
        (tmp_path / "secrets" / "jwt").write_text("rotated-jwt-secret-f6-0123456789abcdef\n")
        assert request(gw.admin_port, "POST", "/admin/reload", bearer).status == 200
        gw.wait_event("config_reloaded")
        rotated = hs256("rotated-jwt-secret-f6-0123456789abcdef", {"sub": "alice"})
        assert (
            request(gw.port, "GET", "/private", [("Authorization", f"Bearer {rotated}")]).status
            == 200
        )
    finally:
        gw.stop()
    logs = "\n".join(gw.lines + gw.stderr)
    for secret in (*NEVER_SHOWN, "rotated-jwt-secret-f6-0123456789abcdef"):
        assert secret not in logs, secret
