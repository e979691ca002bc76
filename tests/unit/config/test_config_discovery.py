"""`discovery:` is a union keyed on `type`: errors name the block's own keys and positions."""

from __future__ import annotations

import pytest
from config_testing import Errors, LoadText, WriteConfig

from aiogate.cli import main
from aiogate.config import EtcdDiscoveryConfig

UPSTREAM = """\
upstreams:
  - name: svc
    discovery: {type: zookeeper, prefix: /s/}
"""


def test_an_unknown_type_is_one_error_at_the_type_value(errors: Errors) -> None:
    assert errors(UPSTREAM) == [
        "3:23: upstreams[0].discovery.type: invalid value 'zookeeper' (expected 'etcd' or 'consul')"
    ]


def test_check_reports_it_as_file_line_col(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(UPSTREAM)
    assert main(["check", "-c", str(path)]) == 1
    captured = capsys.readouterr()
    assert f"{path}:3:23: upstreams[0].discovery.type: invalid value 'zookeeper'" in (
        captured.out + captured.err
    )


def test_type_may_be_left_out_and_means_etcd(load_text: LoadText) -> None:
    config = load_text(UPSTREAM.replace("type: zookeeper, ", ""))
    discovery = config.upstream_by_name("svc").discovery
    assert isinstance(discovery, EtcdDiscoveryConfig)
    assert discovery.type == "etcd"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        # Errors inside a member point at its own keys: the union's tag is not in the path.
        ("{type: etcd, prefix: /}", "3:37: upstreams[0].discovery.prefix: must name"),
        ("{type: etcd, prefix: /s/, keepalive: 0}",
         "3:53: upstreams[0].discovery.keepalive: must be > 0"),
        ("{prefix: /s/, colour: red}", "3:30: upstreams[0].discovery.colour: unknown key"),
        ("5", "3:16: upstreams[0].discovery: expected a mapping, got the number 5"),
        ("{type: 7, prefix: /s/}", "3:23: upstreams[0].discovery.type: invalid value the number 7"),
    ],
)  # fmt: skip
def test_errors_inside_the_block(errors: Errors, block: str, message: str) -> None:
    found = errors(f"upstreams:\n  - name: svc\n    discovery: {block}\n")
    assert any(line.startswith(message) for line in found), found
