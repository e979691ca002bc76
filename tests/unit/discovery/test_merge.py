"""Parsing etcd registrations and merging discovered backends into a config snapshot."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from aiogate.config import BackendConfig, ConfigError, GatewayConfig, load_config
from aiogate.discovery import BadValue, merge, parse_backend
from aiogate.discovery.etcd import (
    EtcdError,
    WatchCompacted,
    parse_range,
    parse_watch_message,
    prefix_end,
)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_plain_url_and_json_values() -> None:
    assert parse_backend(b"http://10.0.0.5:8080\n").url == "http://10.0.0.5:8080"
    backend = parse_backend(b'{"url": "http://10.0.0.5:8080", "weight": 2, "zone": "a"}')
    assert (backend.url, backend.weight, backend.port) == ("http://10.0.0.5:8080", 2, 8080)
    assert parse_backend(b'"https://api.internal"').port == 443


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty value"),
        (b"ftp://x", "invalid backend URL"),
        (b'{"weight": 2}', "without a 'url'"),
        (b'{"url": "http://a", "weight": 0}', "weight"),
        (b"{not json", "invalid JSON"),
        (b"[1]", "expected a URL"),
        (b"\xff", "not UTF-8"),
    ],
)
def test_bad_values(value: bytes, reason: str) -> None:
    with pytest.raises(BadValue, match=reason):
        parse_backend(value)


def test_prefix_end() -> None:
    assert prefix_end("/services/a/") == b"/services/a0"
    assert prefix_end("a\xff") == b"a\xc3\xc0"  # the last UTF-8 byte, plus one


def test_range_and_watch_messages() -> None:
    revision, kvs = parse_range(
        {"header": {"revision": "7"},
         "kvs": [{"key": _b64("/s/a"), "value": _b64("http://a"), "mod_revision": "5"}]}
    )  # fmt: skip
    assert revision == 7
    assert (kvs[0].key, kvs[0].value, kvs[0].mod_revision) == ("/s/a", b"http://a", 5)
    assert parse_range({"header": {"revision": "1"}}) == (1, [])
    # PUT is the enum's zero value: the JSON gateway omits it; so is an empty value.
    events = parse_watch_message(
        {"result": {"events": [{"kv": {"key": _b64("/s/a"), "value": _b64("http://a")}},
                               {"type": "DELETE", "kv": {"key": _b64("/s/b")}}]}}
    )  # fmt: skip
    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        ("PUT", "/s/a", b"http://a"),
        ("DELETE", "/s/b", b""),
    ]
    assert parse_watch_message({"result": {"created": True}}) == []
    with pytest.raises(WatchCompacted):
        parse_watch_message({"result": {"canceled": True, "compact_revision": "3"}})
    with pytest.raises(EtcdError):
        parse_watch_message({"result": {"canceled": True}})
    with pytest.raises(EtcdError):
        parse_watch_message({"error": {"grpc_code": 14}})


CONFIG = """\
server: {listen: "127.0.0.1:8080"}
upstreams:
  - name: svc
    backends: [{url: "http://10.0.0.1:80"}]
    discovery: {endpoints: http://127.0.0.1:2379, prefix: /services/svc/}
  - name: only-discovered
    discovery: {prefix: /services/other/, timeout: 500ms}
  - name: static
    backends: [{url: "http://10.0.0.9:80"}]
routes:
  - {path: /a, upstream: svc}
  - {path: /b, upstream: only-discovered}
  - {path: /c, upstream: static}
"""


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    return load_config(path)


def test_discovery_config(config: GatewayConfig) -> None:
    svc = config.upstream_by_name("svc")
    assert svc.discovery is not None
    assert svc.discovery.endpoints == ("http://127.0.0.1:2379",)
    assert svc.discovery.timeout == 2.0
    other = config.upstream_by_name("only-discovered")
    assert other.backends == ()
    assert other.discovery is not None
    assert other.discovery.timeout == 0.5


def test_merge_adds_after_static_and_dedupes(config: GatewayConfig) -> None:
    found = {
        "svc": (BackendConfig(url="http://10.0.0.1:80/"), BackendConfig(url="http://10.0.0.2")),
        "only-discovered": (BackendConfig(url="http://10.0.0.3", weight=3),),
        "static": (BackendConfig(url="http://10.0.0.4"),),  # no discovery: ignored
    }
    merged = merge(config, found)
    assert [b.url for b in merged.upstream_by_name("svc").backends] == [
        "http://10.0.0.1:80",
        "http://10.0.0.2",
    ]
    assert merged.upstream_by_name("only-discovered").backends[0].weight == 3
    assert [b.url for b in merged.upstream_by_name("static").backends] == ["http://10.0.0.9:80"]
    # Everything else is the same snapshot; the original is untouched.
    assert merged.routes == config.routes
    assert merged.server == config.server
    assert config.upstream_by_name("only-discovered").backends == ()
    assert merge(merged, found) == merged


def test_merge_without_findings_is_identity(config: GatewayConfig) -> None:
    assert merge(config, {}) is config
    assert merge(config, {"svc": ()}) is config


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        ("{name: u}", "2:5: upstreams[0].backends: missing required key"),
        ("{name: u, backends: []}", "2:25: upstreams[0].backends: must have at least 1 item"),
        ("{name: u, discovery: {prefix: /}}", "2:35: upstreams[0].discovery.prefix: must name"),
        ("{name: u, discovery: {prefix: /a/, endpoints: [x]}}",
         "2:52: upstreams[0].discovery.endpoints[0]: invalid etcd endpoint 'x'"),
        ("{name: u, discovery: {prefix: /a/, type: zookeeper}}",
         "2:46: upstreams[0].discovery.type: invalid value 'zookeeper' (expected 'etcd' or "
         "'consul')"),
        ("{name: u, discovery: {prefix: /a/, backoff: 2s, max_backoff: 1s}}",
         "2:66: upstreams[0].discovery.max_backoff: must be >= backoff"),
    ],
)  # fmt: skip
def test_config_errors_point_at_the_value(tmp_path: Path, upstream: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"upstreams:\n  - {upstream}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(str(i).startswith(f"{path}:{message}") for i in caught.value.issues), str(
        caught.value
    )
