"""`config_source:`: a source's routes/upstreams replace the file's; errors say where they are."""

from __future__ import annotations

import pytest
from config_testing import Errors, WriteConfig

from aiogate.cli import main
from aiogate.config import ConfigError, SourceValue, load_config

NAME = "etcd:/aiogate/config"

FILE = """\
server: {max_body_size: 1KiB}
config_source:
  etcd: {endpoints: ["http://127.0.0.1:2379"], key: /aiogate/config}
upstreams:
  - name: filesvc
    backends: [{url: "http://127.0.0.1:9001"}]
routes:
  - path: /file
    upstream: filesvc
"""

SOURCE = b"""\
upstreams:
  - name: svc
    backends: [{url: "http://127.0.0.1:9002"}]
routes:
  - path: /api
    upstream: svc
"""


def issues(write_config: WriteConfig, source: bytes, file: str = FILE) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(file), env={}, source=SourceValue(NAME, source))
    return [str(issue) for issue in info.value.issues]


def test_the_source_replaces_routes_and_upstreams_and_the_rest_stays(
    write_config: WriteConfig,
) -> None:
    config = load_config(write_config(FILE), env={}, source=SourceValue(NAME, SOURCE))
    assert [r.path for r in config.routes] == ["/api"]
    assert [u.name for u in config.upstreams] == ["svc"]
    assert config.server.max_body_size == 1024
    assert config.config_source is not None
    assert config.config_source.etcd.key == "/aiogate/config"


def test_a_section_the_source_leaves_out_stays_the_files(write_config: WriteConfig) -> None:
    only_routes = b"routes:\n  - path: /api\n    upstream: filesvc\n"
    config = load_config(write_config(FILE), env={}, source=SourceValue(NAME, only_routes))
    assert [r.path for r in config.routes] == ["/api"]
    assert [u.name for u in config.upstreams] == ["filesvc"]


def test_without_config_source_in_the_file_a_source_is_ignored(
    write_config: WriteConfig,
) -> None:
    plain = FILE.replace("config_source:\n  etcd: {endpoints", "x_unused:\n  etcd: {endpoints")
    plain = "\n".join(line for line in plain.splitlines() if "x_unused" not in line)
    plain = "\n".join(line for line in plain.splitlines() if "etcd:" not in line) + "\n"
    config = load_config(write_config(plain), env={}, source=SourceValue(NAME, SOURCE))
    assert [r.path for r in config.routes] == ["/file"]


def test_errors_in_the_source_are_located_in_the_source(write_config: WriteConfig) -> None:
    bad = SOURCE.replace(b"upstream: svc", b"upstream: nope").replace(
        b"backends: [{url: ", b"backends: [{weight: 0, url: "
    )
    assert issues(write_config, bad) == [
        f"{NAME}:3:25: upstreams[0].backends[0].weight: must be >= 1",
        f"{NAME}:6:15: routes[0].upstream: unknown upstream 'nope' (known: svc)",
    ]


def test_file_and_source_errors_come_together_file_first(write_config: WriteConfig) -> None:
    file = FILE.replace("max_body_size: 1KiB", "max_body_size: lots")
    bad = SOURCE.replace(b"path: /api", b"path: api")
    found = issues(write_config, bad, file)
    assert len(found) == 2
    assert found[0].startswith(f"{write_config(file)}:1:25: server.max_body_size: ")
    assert found[1].startswith(f"{NAME}:5:11: routes[0].path: ")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (b"routes: [\n", f"{NAME}:2:1: invalid YAML: "),
        (b"", f"{NAME}:1:1: the config source is empty; "),
        (b"- a\n", f"{NAME}:1:1: the config source is not a mapping; "),
        (b"routes: []\nserver: {workers: 4}\n", f"{NAME}:2:1: only routes and upstreams come"),
        (
            b"routes:\n  - path: /a\n    upstream: svc\n    transformations:\n"
            b"      request: {add_headers: {X-Secret: '${env:HOME}'}}\n",
            f"{NAME}:5:42: ${{env:...}} and ${{file:...}} are not resolved",
        ),
    ],
)
def test_unusable_sources(write_config: WriteConfig, source: bytes, expected: str) -> None:
    found = issues(write_config, source)
    assert len(found) == 1
    assert found[0].startswith(expected), found


def test_config_source_is_checked_in_the_file(errors: Errors) -> None:
    text = 'config_source:\n  etcd: {endpoints: ["ftp://x"], key: /k}\n'
    assert errors(text) == [
        "2:22: config_source.etcd.endpoints[0]: invalid etcd endpoint 'ftp://x'"
        " (expected http://host:port or https://host:port)"
    ]
    assert errors("config_source:\n  etcd: {}\n") == [
        "2:9: config_source.etcd.key: missing required key"
    ]


def test_check_accepts_it_with_several_workers(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    # The supervisor watches etcd for the host and its workers follow it.
    path = write_config(FILE.replace("server: {max_body_size: 1KiB}", "server: {workers: 2}"))
    assert main(["check", "-c", str(path)]) == 0, capsys.readouterr().err
