"""bodywatch: when a request body has stalled or crawls (server.body_timeout / body_min_rate)."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from aiogate.bodywatch import BUSY_POLL_SHARE, BodyWatch
from aiogate.config.model import ServerConfig
from aiogate.errors import BodyTimeout, RequestTimeout

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "aiogate.service"


def test_bytes_arriving_in_time_keep_the_body_alive() -> None:
    watch = BodyWatch(timeout=10.0, min_rate=0, now=100.0, received=0)
    assert watch.next_check() == 110.0
    watch.arrived(105.0)
    assert watch.expired(110.0, 1) is None
    assert watch.next_check() == 115.0


def test_no_bytes_for_the_timeout_expires() -> None:
    watch = BodyWatch(timeout=10.0, min_rate=0, now=100.0, received=0)
    assert watch.expired(109.9, 0) is None
    reason = watch.expired(110.0, 0)
    assert reason is not None
    assert "no bytes for 10s" in reason


def test_min_rate_is_checked_only_after_one_window() -> None:
    # The first window is the grace period: a short body is never rate-checked.
    watch = BodyWatch(timeout=10.0, min_rate=100, now=0.0, received=0)
    watch.arrived(9.0)
    assert watch.expired(9.5, 5) is None


def test_a_trickle_under_the_idle_rule_fails_the_rate_rule() -> None:
    # One byte a second never trips the 10 s idle rule, but is far below 100 bytes/s.
    watch = BodyWatch(timeout=10.0, min_rate=100, now=0.0, received=0)
    for second in range(1, 10):
        watch.arrived(float(second))
        assert watch.expired(float(second), second) is None
    watch.arrived(10.0)
    reason = watch.expired(10.0, 10)
    assert reason is not None
    assert "100 bytes/s" in reason


def test_a_window_that_keeps_the_rate_rolls_over() -> None:
    watch = BodyWatch(timeout=10.0, min_rate=100, now=0.0, received=0)
    watch.arrived(10.0)
    assert watch.expired(10.0, 1000) is None  # exactly 100 bytes/s
    assert (watch.window_start, watch.window_bytes) == (10.0, 1000)
    assert watch.next_check() == 20.0
    # the next window is judged on its own bytes, not on the credit of the first
    watch.arrived(20.0)
    assert watch.expired(20.0, 1500) is not None


def test_next_check_is_the_earlier_of_idle_and_window_end() -> None:
    watch = BodyWatch(timeout=10.0, min_rate=100, now=0.0, received=0)
    watch.arrived(4.0)
    assert watch.next_check() == 10.0  # the window ends before the idle deadline (14)
    no_rate = BodyWatch(timeout=10.0, min_rate=0, now=0.0, received=0)
    no_rate.arrived(4.0)
    assert no_rate.next_check() == 14.0


def test_time_the_gateway_is_busy_does_not_count() -> None:
    watch = BodyWatch(timeout=10.0, min_rate=100, now=0.0, received=0)
    # 30 s of nothing, but the gateway was not reading (the upstream held it back)
    again = watch.busy(30.0, 50)
    assert again == pytest.approx(30.0 + 10.0 * BUSY_POLL_SHARE)
    assert watch.expired(35.0, 50) is None
    assert watch.next_check() == 40.0
    assert watch.expired(40.0, 50) is not None


def test_min_rate_zero_is_off() -> None:
    watch = BodyWatch(timeout=10.0, min_rate=0, now=0.0, received=0)
    for second in range(1, 100):
        watch.arrived(float(second))
        assert watch.expired(float(second), second) is None


def test_defaults() -> None:
    server = ServerConfig()
    assert server.body_timeout == 30.0
    assert server.body_min_rate == 1024
    assert server.max_connections == 10_000


def test_systemd_fd_limit_covers_the_default_connection_cap() -> None:
    """Each served connection may hold two descriptors (client + upstream): the unit's
    LimitNOFILE (per process, so per worker) must cover twice the cap plus headroom."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    limit = int(parser["Service"]["LimitNOFILE"])
    assert limit >= 2 * ServerConfig().max_connections + 4096


def test_the_body_timeout_error_is_the_contracts_408() -> None:
    err = BodyTimeout("request body stalled")
    assert isinstance(err, RequestTimeout)
    assert (err.status, err.code) == (408, "request_timeout")
