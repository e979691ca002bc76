"""Start the real `aiogate run` daemon as a subprocess and talk to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml_dump

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until true (no fixed sleeps standing in for a condition)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


class Gateway:
    """One `aiogate run` process; stdout JSON lines are collected as they arrive."""

    def __init__(self, config: dict[str, Any], tmp: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.admin_port = free_port()
        config = dict(config)
        config.setdefault("server", {})
        config["server"] = {"listen": f"127.0.0.1:{self.port}", **config["server"]}
        config.setdefault("admin", {})
        config["admin"] = {"listen": f"127.0.0.1:{self.admin_port}", **config["admin"]}
        self.config = config
        self.path = tmp / "aiogate.yaml"
        self.write(config)
        self.lines: list[str] = []
        self.stderr: list[str] = []
        self._env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def write(self, config: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml_dump.dump(config))
        tmp.replace(self.path)  # atomic, like an editor's save

    def start(self, timeout: float = 15.0) -> Gateway:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiogate", "run", "--config", str(self.path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._env,
            cwd=ROOT,
        )
        threading.Thread(
            target=self._pump, args=(self.proc.stdout, self.lines), daemon=True
        ).start()
        threading.Thread(
            target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True
        ).start()
        try:
            wait_until(self._ready, timeout, "gateway /readyz")
        except BaseException:
            # Never ready: stop it here, since no fixture holds it yet (a test that fails at
            # start-up must not leave a gateway and its workers running).
            self.stop()
            raise
        return self

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        with stream:  # closed at EOF, so no ResourceWarning for the pipes
            for line in stream:
                sink.append(line.rstrip("\n"))

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"gateway exited with {self.proc.returncode}: {self.stderr} {self.lines}"
            )
        try:
            with urllib.request.urlopen(f"{self.admin_url}/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if name is None or record.get("event") == name:
                out.append(record)
        return out

    def wait_event(self, name: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.events(name)) >= count, timeout, f"{count} x {name}")
        return self.events(name)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
