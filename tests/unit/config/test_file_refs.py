"""`${file:PATH}` and `${cred:NAME}`: secrets read from files (and systemd credentials)."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_testing import MINIMAL_UPSTREAM, Errors, LoadText, WriteConfig

from aiogate.config import ConfigError, load_config, loaded_source
from aiogate.config._yaml import MAX_SECRET_FILE


def token_of(load_text: LoadText, text: str, env: dict[str, str] | None = None) -> str:
    cfg = load_text(text, env=env)
    assert cfg.admin.token is not None
    return cfg.admin.token.get_secret_value()


def test_file_content_replaces_the_reference(load_text: LoadText, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    assert token_of(load_text, f"admin: {{token: '${{file:{tmp_path}/token}}'}}\n") == "s3cret"
    # Inside a longer value, next to an env reference, several times.
    (tmp_path / "user").write_text("bob")
    cfg = load_text(
        "redis: {url: 'redis://${file:user}:${file:token}@${env:H}:6379/0'}\n", env={"H": "h"}
    )
    assert cfg.redis is not None
    assert cfg.redis.url == "redis://bob:s3cret@h:6379/0"


@pytest.mark.parametrize(
    ("content", "value"),
    [
        (b"abc", "abc"),
        (b"abc\n", "abc"),
        (b"abc\r\n", "abc"),
        (b"abc\n\n", "abc\n"),  # only one newline goes
        (b"a\nb\n", "a\nb"),  # a PEM or a multi-line value keeps its inner newlines
        (b" abc \n", " abc "),  # no other whitespace is stripped
    ],
)
def test_one_trailing_newline_is_removed(
    load_text: LoadText, tmp_path: Path, content: bytes, value: str
) -> None:
    pad = "0123456789abcdef" * 2  # an HMAC secret has at least 32 bytes
    (tmp_path / "secret").write_bytes(pad.encode() + content)
    cfg = load_text("auth: {jwt: {algorithms: [HS256], secret: '${file:secret}'}}\n")
    assert cfg.auth.jwt is not None
    assert cfg.auth.jwt.secret is not None
    assert cfg.auth.jwt.secret.get_secret_value() == pad + value


def test_a_file_holding_only_a_newline_is_empty(load_text: LoadText, tmp_path: Path) -> None:
    (tmp_path / "token").write_bytes(b"\n")
    assert load_text("admin: {token: '${file:token}'}\n").admin.token is None  # API off


def test_a_relative_path_starts_at_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    (conf / "secrets").mkdir(parents=True)
    (conf / "secrets" / "admin").write_text("from-etc\n")
    (conf / "aiogate.yaml").write_text("admin: {token: '${file:secrets/admin}'}\n")
    elsewhere = tmp_path / "cwd"
    (elsewhere / "secrets").mkdir(parents=True)
    (elsewhere / "secrets" / "admin").write_text("from-cwd\n")
    monkeypatch.chdir(elsewhere)
    token = load_config(Path("../etc/aiogate.yaml"), env={}).admin.token
    assert token is not None
    assert token.get_secret_value() == "from-etc"


def test_missing_unreadable_and_too_big_files_are_errors_at_the_value(
    errors: Errors, tmp_path: Path
) -> None:
    (tmp_path / "big").write_bytes(b"x" * (MAX_SECRET_FILE + 1))
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    found = errors(
        """\
admin:
  token: "${file:nope}"
auth:
  jwt: {algorithms: [HS256], secret: "${file:big}"}
  api_key:
    keys:
      - {key: "${file:folder}", consumer: a}
      - {key: "${file:binary}", consumer: b}
      - {key: "${file:}", consumer: c}
      - {key: "${file:nope", consumer: d}
"""
    )
    nope = tmp_path / "nope"
    assert found == [
        f"2:10: admin.token: cannot read file 'nope' ({nope}): No such file or directory",
        f"4:38: auth.jwt.secret: file 'big' ({tmp_path / 'big'}) is larger than 1024 KiB",
        f"7:15: auth.api_key.keys[0].key: cannot read file 'folder' ({tmp_path / 'folder'}): "
        "Is a directory",
        f"8:15: auth.api_key.keys[1].key: file 'binary' ({tmp_path / 'binary'}) is not valid UTF-8",
        "9:15: auth.api_key.keys[2].key: empty file reference '${file:}' (give a path)",
        "10:15: auth.api_key.keys[3].key: unterminated '${file:' reference (missing '}')",
    ]


def test_exactly_the_size_limit_is_fine(load_text: LoadText, tmp_path: Path) -> None:
    (tmp_path / "limit").write_bytes(b"y" * MAX_SECRET_FILE + b"\n")  # the newline is extra
    # 1 MiB + "\n" is one byte over: the limit counts the file, newline included.
    with pytest.raises(ConfigError):
        load_text("admin: {token: '${file:limit}'}\n")
    (tmp_path / "limit").write_bytes(b"y" * MAX_SECRET_FILE)
    assert len(token_of(load_text, "admin: {token: '${file:limit}'}\n")) == MAX_SECRET_FILE


def test_credentials_come_from_credentials_directory(load_text: LoadText, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "admin-token").write_text("cred-value\n")
    text = "admin: {token: '${cred:admin-token}'}\n"
    assert token_of(load_text, text, {"CREDENTIALS_DIRECTORY": str(creds)}) == "cred-value"


def test_credential_errors(errors: Errors, tmp_path: Path) -> None:
    text = "admin:\n  token: '${cred:admin-token}'\n"
    (unset,) = errors(text)
    assert unset.startswith("2:10: admin.token: credential 'admin-token' needs ")
    assert "CREDENTIALS_DIRECTORY, which is not set" in unset
    assert "LoadCredential=" in unset
    (missing,) = errors(text, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert missing == (
        f"2:10: admin.token: cannot read credential 'admin-token' "
        f"({tmp_path / 'admin-token'}): No such file or directory"
    )
    (bad,) = errors("admin: {token: '${cred:../etc/passwd}'}\n", env={"CREDENTIALS_DIRECTORY": "/"})
    assert "invalid credential name '../etc/passwd'" in bad


def test_errors_never_show_what_a_file_holds(
    errors: Errors, write_config: WriteConfig, tmp_path: Path
) -> None:
    # A validator quoting the value it rejects must not print a file's content.
    (tmp_path / "listen").write_text("not-an-address-TOPSECRET\n")
    (tmp_path / "size").write_text("huge-TOPSECRET\n")
    found = errors(
        MINIMAL_UPSTREAM
        + "server: {listen: '${file:listen}', max_body_size: '${file:size}'}\n"
        + "routes: [{path: /a, upstream: '${file:size}'}]\n"
    )
    assert len(found) == 3
    assert not any("TOPSECRET" in line for line in found), found


def test_file_content_is_not_substituted_again(load_text: LoadText, tmp_path: Path) -> None:
    (tmp_path / "t").write_text("${env:X}${file:t}")
    assert token_of(load_text, "admin: {token: '${file:t}'}\n", {"X": "no"}) == "${env:X}${file:t}"


def test_the_loaded_bytes_are_remembered(write_config: WriteConfig) -> None:
    path = write_config("admin: {listen: '127.0.0.1:9901'}\n")
    cfg = load_config(path, env={})
    path.write_text("changed: after loading\n")
    assert loaded_source(cfg) == b"admin: {listen: '127.0.0.1:9901'}\n"
    # A config given as bytes (PUT /admin/config) did not come from the file.
    assert loaded_source(load_config(path, env={}, raw=b"admin: {}\n")) is None
