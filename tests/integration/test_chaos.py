"""Chaos: 3 backends under 20 s of load; one killed and restarted, one made slow.

Reports the error rate, p99 and detection/recovery times (see docs/load-balancing.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ctlbackend import CtlGroup
from gateway import Gateway
from pool_support import call, pool_config

LOAD_SECONDS = 20.0


def test_chaos_kill_restart_and_slow(make_gateway: Callable[..., Gateway]) -> None:
    group = CtlGroup(3, prefix="x")
    try:
        config = pool_config(
            group,
            strategy="p2c_ewma",
            health_check={"type": "http", "interval": "1s", "timeout": "500ms",
                          "unhealthy_threshold": 2, "healthy_threshold": 2},
            passive_health_check={"consecutive_failures": 3, "ejection_time": "2s"},
            circuit_breaker={"failure_threshold": 5, "timeout": "3s", "success_threshold": 2},
            retries={"attempts": 2, "base_delay": "5ms", "budget": 0.3},
            timeout="2s",
        )  # fmt: skip
        gw = make_gateway(config)
        results: list[tuple[float, int, float]] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status, _, _, took = call(gw, timeout=5)
                except OSError:
                    status, took = 0, time.monotonic() - sent
                results.append((sent, status, took))

        threads = [threading.Thread(target=client) for _ in range(4)]
        start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(3)
        group[0].down()
        killed = time.monotonic()
        time.sleep(2)
        group[1].delay = 0.3
        time.sleep(5)
        group[0].up()
        restarted = time.monotonic()
        time.sleep(5)
        group[1].delay = 0.0
        time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - start)))
        stop.set()
        for t in threads:
            t.join(10)

        errors = sum(1 for _, s, _ in results if s != 200)
        latencies = sorted(took for _, _, took in results)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        p50 = latencies[len(latencies) // 2]
        x0 = group[0].url
        health = [e for e in gw.events("backend_health_changed") if e["backend"] == x0]
        circuit = [e for e in gw.events("circuit_state_changed") if e["backend"] == x0]
        down_at = next((e for e in health if e["to"] == "unhealthy"), None)
        up_at = next((e for e in health if e["to"] == "healthy"), None)
        log_times = {id(e): _ts(e) for e in [*health, *circuit]}
        wall = time.time() - time.monotonic()
        detect = (log_times[id(down_at)] - (killed + wall)) if down_at else None
        recover = (log_times[id(up_at)] - (restarted + wall)) if up_at else None
        print(
            f"\nchaos: {len(results)} requests in {LOAD_SECONDS:.0f}s, errors {errors} "
            f"({errors / len(results):.2%}), p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; "
            f"x0 marked unhealthy {detect:.2f}s after the kill, healthy again "
            f"{recover:.2f}s after the restart; x0 circuit transitions "
            f"{[(e['from'], e['to']) for e in circuit]}"
        )
        assert errors / len(results) < 0.01
        assert detect is not None
        assert detect < 30
        assert recover is not None
        assert recover < 60
    finally:
        group.close()


def _ts(event: dict[str, object]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
