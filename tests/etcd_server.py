"""A real single-member `etcd` on free loopback ports, for tests (start, kill, restart).

Debian's `etcd-server` package provides /usr/bin/etcd; `make test` installs it. The helpers
talk to it the way registrars do: the v3 JSON gateway (`/v3/kv/put`, `/v3/lease/grant`).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from server_process import ServerProcess, free_port


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdServer(ServerProcess):
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("etcd") or (
            "/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None
        )
        if binary is None:
            raise RuntimeError("etcd not found: apt-get install -y etcd-server")
        self.binary = binary
        self.client_port = free_port()
        self.peer_port = free_port()
        self.workdir = workdir
        self.data_dir = workdir / "etcd-data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "etcd.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0) -> EtcdServer:
        client, peer = self.url, f"http://127.0.0.1:{self.peer_port}"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--name", "test", "--data-dir", str(self.data_dir),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"test={peer}", "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"aiogate-test-{self.client_port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {self.log_path.read_text()[-2000:]}")
            if self.healthy():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"etcd did not become healthy on {self.url}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    # -- the v3 JSON API, as a registrar would use it ------------------------------------------
    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def put(self, key: str, value: str | dict[str, Any], lease: int | None = None) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(text)}
        if lease is not None:
            body["lease"] = str(lease)
        self.call("/v3/kv/put", body)

    def delete(self, key: str) -> None:
        self.call("/v3/kv/deleterange", {"key": _b64(key)})

    def grant(self, ttl: int) -> int:
        return int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def revoke(self, lease: int) -> None:
        self.call("/v3/lease/revoke", {"ID": str(lease)})

    def compact(self) -> None:
        """Compact away every revision before the current one."""
        revision = self.call("/v3/kv/range", {"key": _b64("\0")})["header"]["revision"]
        self.call("/v3/kv/compaction", {"revision": revision, "physical": True})
