from __future__ import annotations

import pytest
from config_testing import MINIMAL_UPSTREAM, Errors, LoadText, WriteConfig

from aiogate.config import load_config


def test_substitutes_inside_a_scalar(load_text: LoadText) -> None:
    cfg = load_text(
        """
        server:
          listen: "${env:HOST}:8080"
          max_body_size: ${env:MAX}
          workers: ${env:WORKERS}
          header_timeout: ${env:HT}
        logging:
          access_log: ${env:ACCESS}
        """,
        env={"HOST": "127.0.0.1", "MAX": "1MiB", "WORKERS": "4", "HT": "2s", "ACCESS": "false"},
    )
    assert cfg.server.listen == "127.0.0.1:8080"
    assert cfg.server.host == "127.0.0.1"
    assert cfg.server.max_body_size == 1024 * 1024
    assert cfg.server.workers == 4
    assert cfg.server.header_timeout == 2.0
    assert cfg.logging.access_log is False


def test_several_references_in_one_value(load_text: LoadText) -> None:
    cfg = load_text(
        'admin: {listen: "${env:H}:${env:P}"}\n',
        env={"H": "[::1]", "P": "9000"},
    )
    assert (cfg.admin.host, cfg.admin.port) == ("::1", 9000)


def test_default_syntax(load_text: LoadText) -> None:
    cfg = load_text(
        """
        admin:
          token: ${env:AIOGATE_ADMIN_TOKEN:-}
        server:
          listen: ${env:LISTEN:-0.0.0.0:9999}
        """
    )
    assert cfg.admin.token is None
    assert cfg.server.port == 9999
    cfg = load_text("admin: {token: '${env:T:-x}'}\n", env={"T": "secret"})
    assert cfg.admin.token is not None
    assert cfg.admin.token.get_secret_value() == "secret"


def test_value_is_not_substituted_again(load_text: LoadText) -> None:
    cfg = load_text("admin: {token: '${env:T}'}\n", env={"T": "${env:OTHER}"})
    assert cfg.admin.token is not None
    assert cfg.admin.token.get_secret_value() == "${env:OTHER}"


def test_other_placeholders_stay_verbatim(load_text: LoadText) -> None:
    cfg = load_text(
        MINIMAL_UPSTREAM
        + """\
routes:
  - path: /a
    upstream: user-service
    transformations:
      response:
        add_headers: {X-Response-Time: "${latency}", X-Env: "${ENV}"}
"""
    )
    transform = cfg.routes[0].transformations
    assert transform is not None
    assert transform.response is not None
    assert transform.response.add_headers == {"X-Response-Time": "${latency}", "X-Env": "${ENV}"}


def test_unset_variable_is_an_error_at_its_value(errors: Errors) -> None:
    assert errors(
        """\
server:
  listen: "${env:HOST}:8080"
  max_body_size: ${env:MAX}
admin:
  token: ${env:AIOGATE_ADMIN_TOKEN}
"""
    ) == [
        "2:11: server.listen: environment variable HOST is not set "
        "(set it, or give a default: ${env:HOST:-default})",
        "3:18: server.max_body_size: environment variable MAX is not set "
        "(set it, or give a default: ${env:MAX:-default})",
        "5:10: admin.token: environment variable AIOGATE_ADMIN_TOKEN is not set "
        "(set it, or give a default: ${env:AIOGATE_ADMIN_TOKEN:-default})",
    ]


def test_unset_upstream_reference_is_reported_once(errors: Errors) -> None:
    # The raw `${env:UP}` would otherwise also be "an unknown upstream".
    issues = errors(
        MINIMAL_UPSTREAM
        + """\
routes:
  - path: /a
    upstream: ${env:UP}
"""
    )
    assert issues == [
        "7:15: routes[0].upstream: environment variable UP is not set "
        "(set it, or give a default: ${env:UP:-default})"
    ]


def test_malformed_references(errors: Errors) -> None:
    assert errors(
        """\
admin:
  token: "${env:1BAD}"
  listen: "${env:HOST"
"""
    ) == [
        "2:10: admin.token: malformed environment reference '${env:1BAD}'",
        "3:11: admin.listen: unterminated '${env:' reference (missing '}')",
    ]


def test_keys_are_not_substituted(errors: Errors) -> None:
    assert errors("server:\n  ${env:K}: 1\n", env={"K": "workers"}) == [
        '2:3: server["${env:K}"]: unknown key'
    ]


def test_environ_is_the_default(write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOGATE_TEST_WORKERS", "3")
    path = write_config("server: {workers: '${env:AIOGATE_TEST_WORKERS}'}\n")
    assert load_config(path).server.workers == 3
