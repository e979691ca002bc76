"""The Consul source: parsing health answers, the index rules, its calls (against the double)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from aiogate.config import ConfigError, ConsulDiscoveryConfig, load_config
from aiogate.config.redact import REDACTED, redacted
from aiogate.discovery.consul import (
    ConsulError,
    ConsulSource,
    Instance,
    backends_of,
    next_index,
    parse_entry,
    parse_index,
)
from aiogate.discovery.registry import make_source
from aiogate.discovery.source import Backends
from consul_double import ConsulDouble


def entry(
    address: str = "",
    port: int = 8080,
    node_address: str = "10.0.0.9",
    statuses: tuple[str, ...] = ("passing",),
    weights: dict[str, int] | None = None,
) -> dict[str, Any]:
    service: dict[str, Any] = {"ID": "web-1", "Service": "web", "Address": address, "Port": port}
    if weights is not None:
        service["Weights"] = weights
    return {
        "Node": {"Node": "n1", "Address": node_address},
        "Service": service,
        "Checks": [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(statuses)],
    }


# -- the index rules (Consul "Blocking Queries", implementation details) ------------------------


@pytest.mark.parametrize(
    ("previous", "returned", "expected"),
    [
        (0, 7, 7),  # first read
        (7, 7, 7),  # the wait elapsed, nothing changed
        (7, 9, 9),  # a change
        (9, 4, 0),  # went backwards (snapshot restore): start over
        (9, 0, 0),  # not > 0: never block on it
        (0, -1, 0),
    ],
)
def test_next_index_follows_consuls_reset_rules(
    previous: int, returned: int, expected: int
) -> None:
    assert next_index(previous, returned) == expected


def test_parse_index() -> None:
    assert parse_index("42") == 42
    assert parse_index(None) == 0
    assert parse_index("x") == 0


# -- entries -> backends ------------------------------------------------------------------------


def test_an_instance_without_its_own_address_uses_the_node_address() -> None:
    assert parse_entry(entry()).address == "10.0.0.9"
    assert parse_entry(entry(address="10.0.0.5")).address == "10.0.0.5"


def test_weights_follow_consuls_dns() -> None:
    weights = {"Passing": 5, "Warning": 2}
    assert parse_entry(entry(weights=weights)).weight == 5
    assert parse_entry(entry(weights=weights, statuses=("passing", "warning"))).weight == 2
    assert parse_entry(entry()).weight == 1  # no Weights: Consul's default
    worst = parse_entry(entry(statuses=("warning", "critical", "passing")))
    assert worst.status == "critical"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (entry(port=0), "no usable port"),
        ({**entry(), "Service": {"ID": "x", "Port": "80", "Address": "h"}}, "no usable port"),
        (entry(node_address=""), "neither a service nor a node address"),
        ({"Node": [], "Service": {}}, "must be objects"),
    ],
)
def test_unusable_entries_are_rejected(bad: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_entry(bad)


def test_backend_set_is_sorted_deduplicated_and_skips_zero_weight() -> None:
    instances = [
        Instance("b", "10.0.0.2", 80, 1, "passing"),
        Instance("a", "10.0.0.1", 80, 3, "passing"),
        Instance("a2", "10.0.0.1", 80, 1, "passing"),  # same URL: counted once
        Instance("z", "10.0.0.3", 80, 0, "warning"),  # Weights.Warning 0: no traffic
        Instance("v6", "::1", 81, 1, "passing"),
        Instance("bad", "bad host", 80, 1, "passing"),
    ]
    backends, skipped = backends_of(instances, "http")
    assert [(b.url, b.weight) for b in backends] == [
        ("http://10.0.0.1:80", 3),
        ("http://10.0.0.2:80", 1),
        ("http://[::1]:81", 1),
    ]
    assert len(skipped) == 2
    assert "weight 0" in skipped[0]
    assert "instance bad" in skipped[1]


# -- config -------------------------------------------------------------------------------------


def load(tmp_path: Path, discovery: str) -> Any:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"upstreams:\n  - {{name: u, discovery: {discovery}}}\n"
        "routes:\n  - {path: /, upstream: u}\n"
    )
    return load_config(path, env={"CONSUL_TOKEN": "s3cret"})


def test_consul_config_defaults_and_empty_token(tmp_path: Path) -> None:
    cfg = load(tmp_path, '{type: consul, service: orders, token: "${env:NOPE:-}", tag: null}')
    consul = cfg.upstream_by_name("u").discovery
    assert isinstance(consul, ConsulDiscoveryConfig)
    assert consul.address == "http://127.0.0.1:8500"
    assert (consul.passing_only, consul.token, consul.tag, consul.datacenter) == (
        True, None, None, None,
    )  # fmt: skip
    assert isinstance(make_source("u", consul), ConsulSource)


def test_the_token_is_redacted_in_the_config_dump(tmp_path: Path) -> None:
    cfg = load(tmp_path, '{type: consul, service: orders, token: "${env:CONSUL_TOKEN}"}')
    assert cfg.upstream_by_name("u").discovery.token.get_secret_value() == "s3cret"
    dumped = redacted(cfg)["upstreams"][0]["discovery"]
    assert dumped["token"] == REDACTED
    assert "s3cret" not in repr(redacted(cfg))


@pytest.mark.parametrize(
    ("discovery", "message"),
    [
        ("{type: consul}", "2:26: upstreams[0].discovery.service: missing required key"),
        ("{type: consul, service: a/b}", "2:50: upstreams[0].discovery.service: a Consul service"),
        ("{type: consul, service: s, address: 'ftp://x'}",
         "2:62: upstreams[0].discovery.address: invalid Consul address 'ftp://x'"),
        ("{type: consul, service: s, wait: 11m}", "2:59: upstreams[0].discovery.wait: must be at"),
        ("{type: consul, service: s, backoff: 2s, max_backoff: 1s}",
         "2:79: upstreams[0].discovery.max_backoff: must be >= backoff"),
        ("{type: zk, service: s}", "2:33: upstreams[0].discovery.type: invalid value 'zk' "
         "(expected 'etcd' or 'consul')"),
    ],
)  # fmt: skip
def test_consul_config_errors_point_at_the_value(
    tmp_path: Path, discovery: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, discovery)
    path = tmp_path / "c.yaml"
    assert any(str(i).startswith(f"{path}:{message}") for i in caught.value.issues), str(
        caught.value
    )


# -- the source against the double ------------------------------------------------------------


@pytest.fixture
def double() -> Iterator[ConsulDouble]:
    server = ConsulDouble().start()
    yield server
    server.stop()


def source(double: ConsulDouble, **settings: Any) -> ConsulSource:
    config = ConsulDiscoveryConfig.model_validate(
        {"address": double.url, "service": "web", "wait": "2s", "timeout": "2s", **settings}
    )
    return ConsulSource("u", config, min_interval=0.3)


async def held_query(double: ConsulDouble, index: int) -> None:
    """Until the double holds a blocking query on `index`."""
    for _ in range(500):
        if any(q.get("index") == str(index) for q in double.health_queries("web")):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no blocking query on index {index}")


async def next_set(it: AsyncIterator[Backends]) -> list[str]:
    return [b.url for b in await asyncio.wait_for(it.__anext__(), 10)]


async def test_query_parameters_and_token_header(double: ConsulDouble) -> None:
    double.require_token("t0ken")
    double.register("w1", "web", 9001, tags=("blue",))
    src = source(double, token="t0ken", tag="blue", datacenter="dc1")
    try:
        index, entries = await src.query(0)
        assert index >= 1
        assert len(entries) == 1
        name, params, token = double.queries[-1]
        assert (name, token) == ("web", "t0ken")
        assert params == {"passing": "true", "tag": "blue", "dc": "dc1"}
    finally:
        await src.close()


async def test_watch_blocks_on_the_index_and_follows_changes(double: ConsulDouble) -> None:
    double.register("w1", "web", 9001)
    src = source(double, passing_only=False)
    it = src.watch()
    try:
        assert await next_set(it) == ["http://127.0.0.1:9001"]
        double.register("w2", "web", 9002, address="127.0.0.2")
        assert await next_set(it) == ["http://127.0.0.1:9001", "http://127.0.0.2:9002"]
        blocking = double.health_queries("web")[-1]
        assert int(blocking["index"]) > 0
        assert blocking["wait"] == "2s"
        assert "passing" not in blocking
        double.set_status("w1", "critical")  # passing_only false: still listed
        assert await next_set(it) == ["http://127.0.0.1:9001", "http://127.0.0.2:9002"]
    finally:
        await it.aclose()
        await src.close()


async def test_an_index_that_goes_backwards_is_reset(double: ConsulDouble) -> None:
    double.register("w1", "web", 9001)
    for _ in range(20):
        double.set_status("w1", "passing")  # move the index well up
    src = source(double, wait="60s")
    it = src.watch()
    try:
        assert await next_set(it) == ["http://127.0.0.1:9001"]
        held = asyncio.create_task(next_set(it))
        await held_query(double, 22)
        double.restore(3)  # the held query answers with the lower index
        await held
        double.register("w2", "web", 9002)  # index 4: below what the source had seen
        # Without the reset the source would block on its old index until `wait` ran out.
        assert await next_set(it) == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    finally:
        await it.aclose()
        await src.close()


async def test_an_index_of_zero_is_not_a_busy_loop(double: ConsulDouble) -> None:
    double.register("w1", "web", 9001)
    double.answer_zero_index()
    src = source(double)  # at most one call per 0.3 s while the index does not move
    it = src.watch()
    loop = asyncio.get_running_loop()
    try:
        end = loop.time() + 1.5
        while loop.time() < end:
            await next_set(it)
        # Every call was a plain read (index reset to 0); a busy loop would make hundreds.
        queries = double.health_queries("web")
        assert all("index" not in q for q in queries)
        assert 2 <= len(queries) <= 8
    finally:
        await it.aclose()
        await src.close()


async def test_a_refused_token_is_a_clear_error_without_the_token(double: ConsulDouble) -> None:
    double.require_token("right")
    src = source(double, token="wrong-secret")
    try:
        with pytest.raises(ConsulError) as caught:
            await src.watch().__anext__()
        assert "HTTP 403, the ACL token was refused" in str(caught.value)
        assert "ACL not found" in str(caught.value)
        assert "wrong-secret" not in str(caught.value)
        assert src.failed(caught.value) is False  # back off, never hammer
    finally:
        await src.close()


async def test_unknown_datacenter_and_unreachable_agent_are_errors(double: ConsulDouble) -> None:
    src = source(double, datacenter="mars")
    try:
        with pytest.raises(ConsulError, match=r"HTTP 500 \(No path to datacenter\)"):
            await src.watch().__anext__()
    finally:
        await src.close()
    double.kill()
    src = source(double)
    try:
        with pytest.raises(ConsulError, match=r"ClientConnectorError"):
            await src.watch().__anext__()
    finally:
        await src.close()
