from __future__ import annotations

import json
from pathlib import Path

from config_testing import LoadText, load_contract_example

from aiogate.config import REDACTED, GatewayConfig, load_config, redacted


def test_every_secret_is_redacted(load_text: LoadText, tmp_path: Path) -> None:
    cfg = load_contract_example(load_text, tmp_path)
    dump = redacted(cfg)
    text = json.dumps(dump)  # must be JSON-serialisable as is
    for secret in ("admin-token", "jwt-secret", "demo-key"):
        assert secret not in text
    assert dump["admin"]["token"] == REDACTED
    assert dump["auth"]["jwt"]["secret"] == REDACTED
    assert dump["auth"]["api_key"]["keys"][0]["key"] == REDACTED
    # Non-secrets keep their resolved values and the YAML spelling of keys.
    assert dump["server"]["max_body_size"] == 10 * 1024 * 1024
    assert dump["routes"][0]["auth"]["type"] == ["jwt"]
    assert dump["routes"][0]["upstream"] == "user-service"


def test_absent_secrets_stay_null_and_networks_are_text(load_text: LoadText) -> None:
    cfg = load_text(
        """\
server: {trusted_proxies: [10.0.0.0/8]}
redis: {url: "redis://user:hunter2@redis:6379/0"}
auth: {api_key: {keys: [{key_sha256: "%s", consumer: c}]}}
"""
        % ("ab" * 32)
    )
    dump = redacted(cfg)
    assert dump["admin"]["token"] is None
    assert dump["server"]["trusted_proxies"] == ["10.0.0.0/8"]
    assert dump["redis"]["url"] == f"redis://user:{REDACTED}@redis:6379/0"
    assert dump["auth"]["api_key"]["keys"][0] == {
        "key": None,
        "key_sha256": "ab" * 32,
        "consumer": "c",
        "tier": None,
    }
    assert "hunter2" not in json.dumps(dump)


def test_redis_url_without_password_is_unchanged() -> None:
    cfg = GatewayConfig.model_validate({"redis": {"url": "redis://127.0.0.1:6379/0"}})
    assert redacted(cfg)["redis"]["url"] == "redis://127.0.0.1:6379/0"


def test_numeric_secrets_are_text_and_redacted(load_text: LoadText) -> None:
    cfg = load_text("admin: {token: 123456}\nauth: {jwt: {secret: 98765}}\n")
    assert cfg.admin.token is not None
    assert cfg.admin.token.get_secret_value() == "123456"
    assert "123456" not in str(redacted(cfg))
    assert "98765" not in str(redacted(cfg))


def test_tracing_exporter_headers_are_redacted(tmp_path: Path) -> None:
    path = tmp_path / "tracing.yaml"
    path.write_text(
        "tracing:\n  enabled: true\n  endpoint: http://127.0.0.1:4318/v1/traces\n"
        "  headers: {Authorization: Bearer collector-secret}\n"
    )
    dumped = redacted(load_config(path, env={}))
    assert dumped["tracing"]["headers"] == {"Authorization": REDACTED}
    assert "collector-secret" not in json.dumps(dumped)
