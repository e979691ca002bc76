from __future__ import annotations

import json
from pathlib import Path

from config_testing import ENV, MINIMAL_UPSTREAM, LoadText, load_contract_example

from aiogate.config import REDACTED, GatewayConfig, load_config, redacted
from aiogate.config.diff import diff_summary
from aiogate.config.redact import redact_data, redact_url


def test_every_secret_is_redacted(load_text: LoadText, tmp_path: Path) -> None:
    cfg = load_contract_example(load_text, tmp_path)
    dump = redacted(cfg)
    text = json.dumps(dump)  # must be JSON-serialisable as is
    for secret in ENV.values():
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
    # The whole userinfo: a user name alone may be a token (https://TOKEN@host).
    assert dump["redis"]["url"] == f"redis://{REDACTED}@redis:6379/0"
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
    cfg = load_text(
        "admin: {token: 123456}\nauth: {jwt: {secret: 98765432109876543210987654321098}}\n"
    )
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


# -- rules that cover any key, present or future ----------------------------------------------
SECRETS = ("pw-in-url", "user-in-url", "bearer-abc", "cookie-val", "proxy-val", "key-val",
           "token-val", "secret-val", "resp-auth", "fallback-key", "qpass")  # fmt: skip


def test_urls_anywhere_lose_userinfo_and_password_query(load_text: LoadText) -> None:
    cfg = load_text(
        """\
tracing:
  enabled: true
  endpoint: "http://user-in-url:pw-in-url@127.0.0.1:4318/v1/traces"
redis: {url: "redis://:pw-in-url@127.0.0.1:6379/0"}
auth:
  jwt:
    algorithms: [RS256]
    jwks_url: "https://user-in-url@issuer.example/jwks?PassWord=qpass&x=1"
upstreams:
  - name: svc
    backends:
      - url: "http://127.0.0.1:9001"
routes:
  - {path: /a, upstream: svc}
"""
    )
    dump = redacted(cfg)
    text = json.dumps(dump)
    for secret in ("pw-in-url", "user-in-url", "qpass"):
        assert secret not in text
    assert dump["tracing"]["endpoint"] == f"http://{REDACTED}@127.0.0.1:4318/v1/traces"
    assert dump["redis"]["url"] == f"redis://{REDACTED}@127.0.0.1:6379/0"
    jwks = dump["auth"]["jwt"]["jwks_url"]
    assert jwks == f"https://{REDACTED}@issuer.example/jwks?PassWord={REDACTED}&x=1"
    assert dump["upstreams"][0]["backends"][0]["url"] == "http://127.0.0.1:9001"


def test_redact_url_leaves_other_text_alone() -> None:
    for text in ("http://127.0.0.1:9001/x?a=1&passwords=2", "ops@example.com", "plain",
                 "${latency}", "http://[::1]:80/?password", ""):  # fmt: skip
        assert redact_url(text) == text
    assert redact_url("http://h/?a=1&password=p&PASSWORD=q") == (
        f"http://h/?a=1&password={REDACTED}&PASSWORD={REDACTED}"
    )
    assert redact_url("http://h/?pass%77ord=p") == f"http://h/?pass%77ord={REDACTED}"


def test_credential_headers_the_gateway_adds_are_redacted(load_text: LoadText) -> None:
    cfg = load_text(
        MINIMAL_UPSTREAM
        + """\
routes:
  - path: /a
    upstream: user-service
    transformations:
      request:
        add_headers:
          Authorization: "Bearer bearer-abc"
          cookie: "sid=cookie-val"
          X-Api-Key: key-val
          X-Upstream-TOKEN: token-val
          X-Client-Secret: secret-val
          X-Gateway: aiogate
          X-Keyring: visible
        rename_headers: {Authorization: X-Original-Auth}
      response:
        add_headers: {authorization: resp-auth, X-Response-Time: "${latency}"}
"""
    )
    route = redacted(cfg)["routes"][0]["transformations"]
    added = route["request"]["add_headers"]
    assert added == {
        "Authorization": REDACTED, "cookie": REDACTED,
        "X-Api-Key": REDACTED, "X-Upstream-TOKEN": REDACTED, "X-Client-Secret": REDACTED,
        "X-Gateway": "aiogate", "X-Keyring": "visible",
    }  # fmt: skip
    # rename_headers maps names to names: nothing secret to hide, shown as written.
    assert route["request"]["rename_headers"] == {"Authorization": "X-Original-Auth"}
    assert route["response"]["add_headers"] == {
        "authorization": REDACTED,
        "X-Response-Time": "${latency}",
    }
    text = json.dumps(redacted(cfg))
    for secret in SECRETS:
        assert secret not in text


def test_any_header_map_and_secret_named_key_is_covered() -> None:
    # Keys no model has today (a health check's headers, a discovery token): the rules apply.
    data = {
        "upstreams": [
            {
                "health_check": {"headers": {"X-Health-Key": "key-val", "Accept": "*/*"}},
                "fallback": {"headers": {"Set-Cookie": "a=b", "x-api-key": "fallback-key"}},
                "backends": [{"url": "http://user-in-url:pw-in-url@127.0.0.1:9001"}],
                "request_headers": {"Proxy-Authorization": "Basic proxy-val"},
                "discovery": {"token": "token-val", "address": "http://u:pw-in-url@h:8500",
                              "client_secret": "secret-val", "forward_token": True,
                              "password": "", "max_token_size": 8192},
            }
        ],
        "tracing": {"exporter_headers": {"Authorization": "Bearer bearer-abc"}},
    }  # fmt: skip
    dump = redact_data(data)
    upstream = dump["upstreams"][0]
    assert upstream["health_check"]["headers"] == {"X-Health-Key": REDACTED, "Accept": "*/*"}
    assert upstream["fallback"]["headers"] == {"Set-Cookie": "a=b", "x-api-key": REDACTED}
    assert upstream["backends"] == [{"url": f"http://{REDACTED}@127.0.0.1:9001"}]
    assert upstream["request_headers"] == {"Proxy-Authorization": REDACTED}
    assert upstream["discovery"] == {
        "token": REDACTED, "address": f"http://{REDACTED}@h:8500",
        "client_secret": REDACTED, "forward_token": True, "password": "",
        "max_token_size": 8192,
    }  # fmt: skip
    assert dump["tracing"]["exporter_headers"] == {"Authorization": REDACTED}
    text = json.dumps(dump)
    for secret in SECRETS:
        assert secret not in text


def test_reload_changes_summary_never_holds_secret_values(load_text: LoadText) -> None:
    template = """\
admin: {token: "%(v)s-token"}
redis: {url: "redis://:%(v)s-pw@127.0.0.1:6379/0"}
auth: {jwt: {algorithms: [HS256], secret: "%(v)s-jwt-0123456789abcdef0123456789abcdef"}}
upstreams:
  - name: svc
    backends: [{url: "http://127.0.0.1:9001"}]
    health_check: {path: "/health?password=%(v)s-hc"}
routes:
  - path: /a
    upstream: svc
    transformations: {request: {add_headers: {Authorization: "%(v)s-auth"}}}
"""
    old = load_text(template % {"v": "old"})
    new = load_text(template % {"v": "new"})
    summary = diff_summary(old, new)
    assert summary["upstreams"]["changed"] == ["svc"]
    assert summary["routes"]["changed"] == ["/a"]
    assert set(summary["sections_changed"]) == {"admin", "redis", "auth"}
    text = json.dumps(summary)
    for value in ("old-", "new-"):
        assert value not in text
