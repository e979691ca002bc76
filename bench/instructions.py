"""CPU instructions per proxied request, counted by valgrind (callgrind): repeatable on a busy
machine, where req/s and CPU time are not.

Each target (aiogate on one plain route, the minimal aiohttp proxy) runs under callgrind in
front of an nginx backend. The script sends N requests one after another on one keep-alive
connection, stops the target, and reads the instruction total; two runs with different N give
the cost of one request without the start-up: (total(N2) - total(N1)) / (N2 - N1).

Usage: .venv/bin/python bench/instructions.py [--small 200] [--large 1200] [--only aiogate]
Instructions are not time (cache misses and system calls are not in them), so compare the
ratio between targets and between commits, as with `make bench`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from run import ROOT, VENV_BIN, Stack, free_port, nginx_bin, nginx_conf

BODY = "aiogate-bench:" + "x" * 86


def _backend(stack: Stack) -> int:
    port = free_port()
    block = f"""        listen 127.0.0.1:{port} backlog=4096;
        access_log off;
        default_type text/plain;
        location / {{ return 200 "{BODY}"; }}"""
    conf = nginx_conf(stack.tmp, "backend", block)
    stack.spawn("backend", [nginx_bin(), "-p", str(conf.parent), "-c", str(conf)], "0")
    _wait(port, 30)
    return port


def _aiogate(tmp: Path, port: int, backend: int) -> list[str]:
    config = tmp / "aiogate.yaml"
    config.write_text(
        f"""server: {{listen: "127.0.0.1:{port}", workers: 1}}
admin: {{listen: "127.0.0.1:{free_port()}"}}
logging: {{level: info, format: json}}
upstreams: [{{name: bench, backends: [{{url: "http://127.0.0.1:{backend}"}}]}}]
routes: [{{path: /, upstream: bench}}]
"""
    )
    return [str(VENV_BIN / "aiogate"), "run", "-c", str(config)]


def _minimal(tmp: Path, port: int, backend: int) -> list[str]:
    script = ROOT / "bench" / "minimal_aiohttp_proxy.py"
    return [sys.executable, str(script), "--port", str(port),
            "--upstream", f"http://127.0.0.1:{backend}"]  # fmt: skip


TARGETS: dict[str, Callable[[Path, int, int], list[str]]] = {
    "aiogate": _aiogate,
    "aiohttp-minimal": _minimal,
}


def _wait(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answers on {port}")
        time.sleep(0.5)


def _count(name: str, backend: int, requests: int, tmp: Path) -> int:
    port = free_port()
    out = tmp / f"{name}-{requests}.callgrind"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               *TARGETS[name](tmp, port, backend)]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        _wait(port, 600)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(requests):
            connection.request("GET", "/")
            reply = connection.getresponse()
            reply.read()
            assert reply.status == 200, reply.status
        connection.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(600)
    match = re.search(rb"^(?:summary|totals): (\d+)", out.read_bytes(), re.M)
    assert match is not None, f"no total in {out}"
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument("--only", default=",".join(TARGETS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind not found (apt-get install valgrind)", file=sys.stderr)
        return 1
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="aiogate-ir-") as directory:
        stack = Stack(Path(directory))
        try:
            backend = _backend(stack)
            for name in args.only.split(","):
                small = _count(name, backend, args.small, stack.tmp)
                large = _count(name, backend, args.large, stack.tmp)
                results[name] = (large - small) / (args.large - args.small)
                print(f"{name:16} {results[name]:>12,.0f} instructions per request", flush=True)
        finally:
            stack.stop_all()
    if "aiogate" in results and "aiohttp-minimal" in results:
        ratio = results["aiohttp-minimal"] / results["aiogate"]
        print(f"aiohttp-minimal / aiogate instructions = {ratio:.2f}x (higher: aiogate cheaper)")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
