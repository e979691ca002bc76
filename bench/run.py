"""Throughput benchmark: aiogate vs nginx vs a minimal aiohttp proxy vs the bare backend.

One run starts every process once, then measures the targets in interleaved rounds and reports
the median of the rounds. Only ratios measured within one run mean anything on a shared machine.

    .venv/bin/python bench/run.py [--duration 10] [--rounds 3] [--connections 64] [--out bench/out]

See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
INSTALL_HINT = "apt-get install -y wrk nginx-light util-linux"
BACKEND_CPU = "0"  # the backend and wrk share CPU 0 ...
PROXY_CPU = "1"  # ... so the proxy under test has CPU 1 to itself
BODY = "aiogate-bench:" + "x" * 86  # exactly 100 bytes
WARMUP_S = 2
TARGETS = (
    "direct",
    "nginx",
    "aiohttp-minimal",
    "aiogate",
    "aiogate-ratelimit",
    "aiogate-ratelimit-redis",
    "aiogate-tracing",
    "nginx-cache",
    "aiogate-cache",
    "nginx-tls",
    "aiogate-tls",
)
BASELINES = ("nginx", "aiohttp-minimal")
SUMMARY_KEYS = [
    "rps",
    "p50_ms",
    "p99_ms",
    "rss_mib",
    "cpu_s_per_1k",
    "non_2xx",
    "socket_errors",
    "noise_pct",
]
CLK_TCK = os.sysconf("SC_CLK_TCK")
TIMES = "\u00d7"  # MULTIPLICATION SIGN, spelt out for ruff RUF001


class SkipTargetError(RuntimeError):
    """A target could not be started; the run goes on without it."""


@dataclass
class Sample:
    target: str
    round: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_s: float | None = None
    cpu_s_per_1k: float | None = None
    rss_mib: float | None = None
    # Share of the machine's CPU used during the run by anything but wrk, backend and proxy
    # (other jobs, hypervisor steal, unattributed kernel work): how disturbed the round was.
    noise_pct: float = 0.0


@dataclass
class Target:
    name: str
    port: int
    pid: int | None  # root of the process tree under test; None for `direct`
    scheme: str = "http"  # https: wrk speaks TLS (HTTP/1.1, keep-alive) to it


@dataclass
class Stack:
    """Every process this run started, so that all of them die at the end."""

    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], cpu: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            ["taskset", "-c", cpu, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: we can signal the whole tree
        )
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.tmp / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --- process helpers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(proc: subprocess.Popen[bytes], url: str, timeout: float = 15.0) -> None:
    # https targets use a throwaway self-signed certificate: nothing to verify it against.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SkipTargetError(f"exited with code {proc.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1, context=insecure) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise SkipTargetError(f"no 200 from {url} within {timeout:.0f}s")


def proc_stat(pid: int) -> tuple[int, float]:
    """(ppid, utime+stime seconds) of one process."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                children.setdefault(proc_stat(int(entry.name))[0], []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_s(root: int) -> float:
    total = 0.0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            total += proc_stat(pid)[1]
    return total


def tree_rss_mib(root: int) -> float:
    kib = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
    return kib / 1024


# --- the processes ---------------------------------------------------------------------------


def nginx_conf(tmp: Path, name: str, server_block: str, http_extra: str = "") -> Path:
    run_dir = tmp / name
    run_dir.mkdir()
    user = "user root;" if os.geteuid() == 0 else ""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {run_dir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = run_dir / "nginx.conf"
    conf.write_text(
        f"""{user}
worker_processes 1;
daemon off;
pid {run_dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
{temp_paths}
    keepalive_requests 100000;
{http_extra}
    server {{
{server_block}
    }}
}}
"""
    )
    return conf


def start_backend(stack: Stack) -> Target:
    port = free_port()
    block = f"""        listen 127.0.0.1:{port} backlog=4096;
        access_log off;
        default_type text/plain;
        location / {{ return 200 "{BODY}"; }}"""
    conf = nginx_conf(stack.tmp, "backend", block)
    proc = stack.spawn(
        "backend", [nginx_bin(), "-p", str(conf.parent), "-c", str(conf)], BACKEND_CPU
    )
    wait_http(proc, f"http://127.0.0.1:{port}/")
    return Target("direct", port, None)


def start_nginx_proxy(stack: Stack, backend_port: int) -> Target:
    port = free_port()
    upstream = f"""    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
    }}"""
    block = f"""        listen 127.0.0.1:{port} backlog=4096;
        access_log {stack.tmp}/nginx/access.log combined buffer=64k flush=1s;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}"""
    conf = nginx_conf(stack.tmp, "nginx", block, upstream)
    proc = stack.spawn("nginx", [nginx_bin(), "-p", str(conf.parent), "-c", str(conf)], PROXY_CPU)
    wait_http(proc, f"http://127.0.0.1:{port}/")
    return Target("nginx", port, proc.pid)


def start_nginx_cache(stack: Stack, backend_port: int) -> Target:
    """nginx `proxy_cache` answering every request from its cache (one URL, fresh for 1 h)."""
    port = free_port()
    cache_dir = stack.tmp / "nginx-cache-store"
    http_extra = f"""    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
    }}
    proxy_cache_path {cache_dir} levels=1:2 keys_zone=bench:10m max_size=64m inactive=1h
                     use_temp_path=off;"""
    block = f"""        listen 127.0.0.1:{port} backlog=4096;
        access_log {stack.tmp}/nginx-cache/access.log combined buffer=64k flush=1s;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
        }}"""
    conf = nginx_conf(stack.tmp, "nginx-cache", block, http_extra)
    proc = stack.spawn(
        "nginx-cache", [nginx_bin(), "-p", str(conf.parent), "-c", str(conf)], PROXY_CPU
    )
    wait_http(proc, f"http://127.0.0.1:{port}/")
    return Target("nginx-cache", port, proc.pid)


def self_signed(stack: Stack) -> tuple[Path, Path]:
    """A P-256 certificate and key for the TLS targets (the same files for nginx and aiogate)."""
    cert, key = stack.tmp / "tls-cert.pem", stack.tmp / "tls-key.pem"
    if cert.exists():
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SkipTargetError("openssl not found (apt-get install openssl)")
    argv = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv += ["-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key)]
    argv += ["-out", str(cert)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise SkipTargetError(f"openssl req failed: {done.stderr.strip()}")
    return cert, key


def start_nginx_tls(stack: Stack, backend_port: int) -> Target:
    """nginx terminating TLS with the same protocols and ciphers aiogate sets."""
    cert, key = self_signed(stack)
    port = free_port()
    upstream = f"""    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
    }}"""
    block = f"""        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
        access_log {stack.tmp}/nginx-tls/access.log combined buffer=64k flush=1s;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}"""
    conf = nginx_conf(stack.tmp, "nginx-tls", block, upstream)
    argv = [nginx_bin(), "-p", str(conf.parent), "-c", str(conf)]
    proc = stack.spawn("nginx-tls", argv, PROXY_CPU)
    wait_http(proc, f"https://127.0.0.1:{port}/")
    return Target("nginx-tls", port, proc.pid, "https")


def start_aiohttp_minimal(stack: Stack, backend_port: int) -> Target:
    port = free_port()
    script = ROOT / "bench" / "minimal_aiohttp_proxy.py"
    argv = [str(PYTHON), str(script), "--port", str(port)]
    argv += ["--upstream", f"http://127.0.0.1:{backend_port}"]
    proc = stack.spawn("aiohttp-minimal", argv, PROXY_CPU)
    wait_http(proc, f"http://127.0.0.1:{port}/")
    return Target("aiohttp-minimal", port, proc.pid)


def start_aiogate(
    stack: Stack,
    backend_port: int,
    name: str = "aiogate",
    *,
    extra: str = "",
    route_extra: str = "",
    server_extra: str = "",
    scheme: str = "http",
) -> Target:
    binary = VENV_BIN / "aiogate"
    if not binary.exists():
        raise SkipTargetError(f"{binary} not found (pip install -e . ?)")
    port, admin_port = free_port(), free_port()
    config = stack.tmp / f"{name}.yaml"
    config.write_text(
        f"""server:
  listen: "127.0.0.1:{port}"
  workers: 1
{server_extra}admin:
  listen: "127.0.0.1:{admin_port}"
logging:
  level: info
  format: json
upstreams:
  - name: bench
    backends:
      - url: http://127.0.0.1:{backend_port}
routes:
  - path: /
    upstream: bench
{route_extra}{extra}"""
    )
    # Access logs stay on (info), stdout goes to a file: the realistic production setting.
    proc = stack.spawn(name, [str(binary), "run", "-c", str(config)], PROXY_CPU)
    wait_http(proc, f"{scheme}://127.0.0.1:{port}/healthz")
    wait_http(proc, f"{scheme}://127.0.0.1:{port}/")
    return Target(name, port, proc.pid, scheme)


# Every request is admitted (wrk is one client IP): the cost measured is the limiter's own.
_RATE_LIMIT = "    rate_limit: {requests: 1000000000, window: 1s}\n"


def start_aiogate_ratelimit(stack: Stack, backend_port: int) -> Target:
    return start_aiogate(stack, backend_port, "aiogate-ratelimit", route_extra=_RATE_LIMIT)


def start_aiogate_ratelimit_redis(stack: Stack, backend_port: int) -> Target:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SkipTargetError("redis-server not found (apt-get install redis-server)")
    port = free_port()
    stack.spawn(
        "redis",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        BACKEND_CPU,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SkipTargetError("redis-server did not start") from None
            time.sleep(0.05)
    extra = f"redis:\n  url: redis://127.0.0.1:{port}/0\n"
    return start_aiogate(
        stack, backend_port, "aiogate-ratelimit-redis", extra=extra, route_extra=_RATE_LIMIT
    )


def start_aiogate_tls(stack: Stack, backend_port: int) -> Target:
    cert, key = self_signed(stack)
    server = f"  tls:\n    cert_file: {cert}\n    key_file: {key}\n"
    return start_aiogate(stack, backend_port, "aiogate-tls", server_extra=server, scheme="https")


def start_aiogate_tracing(stack: Stack, backend_port: int) -> Target:
    """Tracing on at 100% sampling, exporting over OTLP/HTTP to a local sink (issue 6)."""
    port = free_port()
    sink = stack.spawn(
        "otlp-sink",
        [sys.executable, str(ROOT / "bench" / "otlp_sink.py"), "--port", str(port)],
        BACKEND_CPU,
    )
    wait_http(sink, f"http://127.0.0.1:{port}/")
    extra = (
        f"tracing:\n  enabled: true\n  endpoint: http://127.0.0.1:{port}/v1/traces\n"
        "  sample_ratio: 1.0\n"
    )
    return start_aiogate(stack, backend_port, "aiogate-tracing", extra=extra)


def start_aiogate_cache(stack: Stack, backend_port: int) -> Target:
    """The route with a memory response cache: after the first request every one is a hit."""
    cache = "    cache: {ttl: 1h}\n"
    return start_aiogate(stack, backend_port, "aiogate-cache", route_extra=cache)


def cache_hit(summary: dict[str, dict[str, float | None]]) -> str:
    """A cache hit against the same proxy without the cache, and against nginx's proxy_cache."""
    mine = summary.get("aiogate-cache", {})
    parts = []
    for base in ("aiogate", "nginx-cache"):
        rps, base_rps = mine.get("rps"), summary.get(base, {}).get("rps")
        if rps and base_rps:
            parts.append(f"{rps / base_rps:.2f}{TIMES} the req/s of {base}")
    cpu, base_cpu = mine.get("cpu_s_per_1k"), summary.get("aiogate", {}).get("cpu_s_per_1k")
    if cpu and base_cpu:
        parts.append(f"{(cpu - base_cpu) * 1000:+.1f} \u00b5s CPU per request vs aiogate")
    return "Response cache hit (aiogate-cache): " + (", ".join(parts) or "n/a")


def metrics_cost_us(repeat: int = 200_000) -> float:
    """In-process: the metric calls one proxied request makes (request counter + latency
    histogram, upstream histogram, in-flight gauge inc/dec), in µs per request."""
    sys.path.insert(0, str(ROOT / "src"))
    from aiogate.metrics import RequestRecorder

    recorder = RequestRecorder()

    def one() -> None:
        gauge = recorder.in_flight("bench", "http://127.0.0.1:1")
        gauge.inc()
        gauge.dec()
        recorder.upstream("bench", "http://127.0.0.1:1", 0.0004)
        recorder.request("/", "GET", 200, 0.0007)

    one()
    started = time.perf_counter()
    for _ in range(repeat):
        one()
    return (time.perf_counter() - started) / repeat * 1e6


def tracing_cost(summary: dict[str, dict[str, float | None]]) -> str:
    """Tracing at 100% sampling, CPU per request: the traced target minus plain aiogate."""
    base = summary.get("aiogate", {}).get("cpu_s_per_1k")
    mine = summary.get("aiogate-tracing", {}).get("cpu_s_per_1k")
    rps = summary.get("aiogate", {}).get("rps")
    traced = summary.get("aiogate-tracing", {}).get("rps")
    if not (base and mine and rps and traced):
        return "Tracing (100% sampled) cost: n/a"
    return (
        f"Tracing (100% sampled) CPU per request (gateway process): {(mine - base) * 1000:+.1f}"
        f" \u00b5s; req/s {traced / rps:.2f}{TIMES} of aiogate without tracing"
    )


def nginx_bin() -> str:
    """The installed nginx: on PATH, else where distro and source builds put it."""
    found = shutil.which("nginx")
    if found:
        return found
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if Path(path).exists():
            return path
    return "/usr/sbin/nginx"


# --- wrk ------------------------------------------------------------------------------------

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"unparsable latency {text!r}")
    return float(match[1]) * UNITS_MS[match[2]]


def parse_wrk(out: str, target: str, rnd: int) -> Sample:
    def grab(pattern: str, default: str | None = None) -> str:
        match = re.search(pattern, out, re.MULTILINE)
        if match:
            return match[1]
        if default is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{out}")
        return default

    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Sample(
        target=target,
        round=rnd,
        requests=int(grab(r"(\d+) requests in")),
        rps=float(grab(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=parse_ms(grab(r"^\s+50%\s+(\S+)")),
        p99_ms=parse_ms(grab(r"^\s+99%\s+(\S+)")),
        non_2xx=int(grab(r"Non-2xx or 3xx responses: (\d+)", "0")),
        socket_errors=sum(int(n) for n in sock.groups()) if sock else 0,
    )


def run_wrk(port: int, duration: int, connections: int, scheme: str = "http") -> str:
    argv = ["taskset", "-c", BACKEND_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    argv += ["--latency", f"{scheme}://127.0.0.1:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise ValueError(f"wrk exited {done.returncode}: {(done.stdout + done.stderr).strip()}")
    return done.stdout


def machine_cpu_s() -> tuple[float, float]:
    """(busy + stolen, capacity) CPU-seconds of the whole machine since boot, from /proc/stat."""
    line = Path("/proc/stat").read_text().split("\n", 1)[0]
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, line.split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy / CLK_TCK, (busy + idle + iowait) / CLK_TCK


def children_cpu_s() -> float:
    """CPU-seconds of this process's waited-for children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_cpu_s(target: Target, backend_pid: int) -> float:
    """CPU-seconds used so far by the processes this measurement is about."""
    proxy = tree_cpu_s(target.pid) if target.pid else 0.0
    return proxy + tree_cpu_s(backend_pid) + children_cpu_s()


def measure(target: Target, backend_pid: int, rnd: int, args: argparse.Namespace) -> Sample:
    run_wrk(target.port, WARMUP_S, args.connections, target.scheme)
    proxy_before = tree_cpu_s(target.pid) if target.pid else 0.0
    ours_before, (busy_before, cap_before) = bench_cpu_s(target, backend_pid), machine_cpu_s()
    out = run_wrk(target.port, args.duration, args.connections, target.scheme)
    ours_after, (busy_after, cap_after) = bench_cpu_s(target, backend_pid), machine_cpu_s()
    sample = parse_wrk(out, target.name, rnd)
    foreign = (busy_after - busy_before) - (ours_after - ours_before)
    sample.noise_pct = max(0.0, 100 * foreign / max(cap_after - cap_before, 1e-9))
    if target.pid:
        sample.cpu_s = tree_cpu_s(target.pid) - proxy_before
        sample.cpu_s_per_1k = sample.cpu_s / max(sample.requests, 1) * 1000
        sample.rss_mib = tree_rss_mib(target.pid)
    return sample


# --- report ---------------------------------------------------------------------------------


def first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (done.stdout + done.stderr).strip().splitlines()[0]


def machine_info() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu_model": model[1] if model else "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "wrk": first_line(["wrk", "-v"]),
        "nginx": first_line([nginx_bin(), "-v"]),
        "loadavg_at_start": Path("/proc/loadavg").read_text().strip(),
        "pinning": f"backend + wrk on CPU {BACKEND_CPU}, proxy under test on CPU {PROXY_CPU}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(samples: list[Sample]) -> dict[str, dict[str, float | None]]:
    summary: dict[str, dict[str, float | None]] = {}
    for name in TARGETS:
        mine = [s for s in samples if s.target == name]
        if not mine:
            continue
        summary[name] = {k: median([getattr(s, k) for s in mine]) for k in SUMMARY_KEYS}
    for row in summary.values():
        for base in BASELINES:
            base_rps = summary.get(base, {}).get("rps")
            row[f"vs_{base}"] = row["rps"] / base_rps if row["rps"] and base_rps else None
    return summary


def paired_ratios(samples: list[Sample], num: str, den: str, key: str = "rps") -> list[float]:
    """num/den of `key` within each round: measured seconds apart, so slow drift mostly cancels."""
    by_round = {(s.target, s.round): getattr(s, key) for s in samples}
    rounds = sorted({s.round for s in samples})
    return [
        by_round[num, r] / by_round[den, r]
        for r in rounds
        if by_round.get((num, r)) is not None and by_round.get((den, r))
    ]


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def headline(samples: list[Sample], summary: dict[str, dict[str, float | None]]) -> str:
    ratio = summary.get("aiogate", {}).get("vs_aiohttp-minimal")
    if ratio is None:
        return "aiogate / aiohttp-minimal = n/a (aiogate not measured)"
    rounds = ", ".join(f"{r:.2f}" for r in paired_ratios(samples, "aiogate", "aiohttp-minimal"))
    return f"aiogate / aiohttp-minimal = {ratio:.2f}{TIMES} (per round: {rounds})"


def cpu_headline(samples: list[Sample], summary: dict[str, dict[str, float | None]]) -> str:
    """The same comparison by CPU per request: it barely moves when other jobs steal the core."""
    mine = summary.get("aiogate", {}).get("cpu_s_per_1k")
    base = summary.get("aiohttp-minimal", {}).get("cpu_s_per_1k")
    if not mine or not base:
        return "CPU per request, aiogate / aiohttp-minimal = n/a"
    pairs = paired_ratios(samples, "aiogate", "aiohttp-minimal", "cpu_s_per_1k")
    rounds = ", ".join(f"{r:.2f}" for r in pairs)
    return (
        f"CPU per request, aiogate / aiohttp-minimal = {mine / base:.2f}{TIMES}"
        f" (lower is better; per round: {rounds})"
    )


def limiter_cost(summary: dict[str, dict[str, float | None]]) -> str:
    """The rate limiter's CPU per request: a limited route minus the same route unlimited."""
    base = summary.get("aiogate", {}).get("cpu_s_per_1k")
    parts = []
    for name, label in (("aiogate-ratelimit", "local"), ("aiogate-ratelimit-redis", "redis")):
        mine = summary.get(name, {}).get("cpu_s_per_1k")
        if base and mine:
            parts.append(f"{label} {(mine - base) * 1000:+.1f} \u00b5s")
    return "Rate limiter CPU per request (gateway process): " + (", ".join(parts) or "n/a")


def tls_cost(samples: list[Sample], summary: dict[str, dict[str, float | None]]) -> str:
    """HTTPS (keep-alive) next to plain HTTP, and aiogate's TLS next to nginx's."""
    parts = []
    pairs = (("aiogate-tls", "aiogate"), ("aiogate-tls", "nginx-tls"), ("nginx-tls", "nginx"))
    for num, den in pairs:
        mine, base = summary.get(num, {}).get("rps"), summary.get(den, {}).get("rps")
        if mine and base:
            rounds = ", ".join(f"{r:.2f}" for r in paired_ratios(samples, num, den))
            parts.append(f"{num} / {den} = {mine / base:.2f}{TIMES} (per round: {rounds})")
    return "TLS req/s: " + ("; ".join(parts) or "n/a")


def render(
    info: dict[str, str],
    args: argparse.Namespace,
    summary: dict[str, dict[str, float | None]],
    samples: list[Sample],
    skipped: dict[str, str],
) -> str:
    lines = ["# aiogate benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [
        f"- wrk: -t1 -c{args.connections} -d{args.duration}s --latency, "
        f"{WARMUP_S}s warm-up per target per round, {args.rounds} interleaved round(s), medians",
        "- aiogate: access log on (level info, json) to a file; nginx proxy: buffered access log"
        " to a file; aiohttp-minimal: no access log",
        "",
        "| target | req/s | p50 ms | p99 ms | RSS MiB | CPU-s/1k req | vs nginx | vs aiohttp-min"
        " | errors | noise % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in summary.items():
        errors = (row["non_2xx"] or 0) + (row["socket_errors"] or 0)
        lines.append(
            f"| {name} | {fmt(row['rps'], ',.0f')} | {fmt(row['p50_ms'], '.2f')} "
            f"| {fmt(row['p99_ms'], '.2f')} | {fmt(row['rss_mib'], '.1f')} "
            f"| {fmt(row['cpu_s_per_1k'], '.4f')} | {fmt(row['vs_nginx'], '.2f', TIMES)} "
            f"| {fmt(row['vs_aiohttp-minimal'], '.2f', TIMES)} | {errors:.0f} "
            f"| {fmt(row['noise_pct'], '.0f')} |"
        )
    lines += ["", f"**{headline(samples, summary)}**", "", cpu_headline(samples, summary), ""]
    lines += [limiter_cost(summary), ""]
    lines += [tracing_cost(summary), ""]
    lines += [cache_hit(summary), ""]
    lines += [tls_cost(samples, summary), ""]
    if getattr(args, "metrics_cost_us", None) is not None:
        cost = args.metrics_cost_us
        lines += [f"Metrics per request (in-process micro-benchmark): {cost:.2f} \u00b5s", ""]
    for name in sorted({s.target for s in samples if s.non_2xx or s.socket_errors}):
        lines.append(f"WARNING: `{name}` had errors in some round; its req/s is not comparable.")
    for name, why in skipped.items():
        lines += [f"Skipped `{name}`:", "", "```", why, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# --- main -----------------------------------------------------------------------------------


def start_targets(stack: Stack, skipped: dict[str, str]) -> list[Target]:
    try:
        backend = start_backend(stack)
    except SkipTargetError as exc:  # without a backend nothing can run
        raise SystemExit(f"backend nginx failed: {exc}\n{stack.log_tail('backend')}") from exc
    targets = [backend]
    starters = {
        "nginx": start_nginx_proxy,
        "aiohttp-minimal": start_aiohttp_minimal,
        "aiogate": start_aiogate,
        "aiogate-ratelimit": start_aiogate_ratelimit,
        "aiogate-ratelimit-redis": start_aiogate_ratelimit_redis,
        "aiogate-tracing": start_aiogate_tracing,
        "nginx-cache": start_nginx_cache,
        "aiogate-cache": start_aiogate_cache,
        "nginx-tls": start_nginx_tls,
        "aiogate-tls": start_aiogate_tls,
    }
    only = getattr(start_targets, "only", None)
    for name, start in starters.items():
        if only and name not in only:
            continue
        try:
            targets.append(start(stack, backend.port))
        except SkipTargetError as exc:
            skipped[name] = f"{exc}\n{stack.log_tail(name)}".strip()
            print(f"!! skipping {name}: {skipped[name]}", file=sys.stderr)
    return targets


def schedule(targets: list[Target], count: int) -> Iterator[tuple[int, Target]]:
    """Round r starts at target r (rotation), so no target always runs first or last."""
    for r in range(count):
        for i in range(len(targets)):
            yield r + 1, targets[(r + i) % len(targets)]


def check_tools() -> None:
    missing = [t for t in ("wrk", "taskset") if not shutil.which(t)]
    if not Path(nginx_bin()).exists():
        missing.append("nginx")
    if missing:
        sys.exit(f"missing {', '.join(missing)}; install with:\n  {INSTALL_HINT}")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("need at least 2 CPUs (backend+wrk on CPU 0, proxy on CPU 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated targets to run (default: all); e.g. "
        "aiogate,aiohttp-minimal,aiogate-tracing",
    )
    args = parser.parse_args()
    start_targets.only = {t for t in args.only.split(",") if t}  # type: ignore[attr-defined]
    args.metrics_cost_us = metrics_cost_us()
    check_tools()
    # Ctrl-C and SIGTERM must reach the finally: below, even when started with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine_info()
    skipped: dict[str, str] = {}
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="aiogate-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            targets = start_targets(stack, skipped)
            backend_pid = stack.procs[0].pid  # start_targets spawns the backend first
            for rnd, target in schedule(targets, args.rounds):
                if target.name in skipped:
                    continue
                try:
                    sample = measure(target, backend_pid, rnd, args)
                except (subprocess.SubprocessError, ValueError) as exc:  # e.g. it crashed
                    skipped[target.name] = f"round {rnd}: {exc}\n{stack.log_tail(target.name)}"
                    print(f"!! dropping {target.name}: {skipped[target.name]}", file=sys.stderr)
                    continue
                samples.append(sample)
                print(f"round {rnd} {target.name:16} {sample.rps:>10,.0f} req/s", flush=True)
        finally:
            stack.stop_all()
    summary = summarise(samples)
    report = render(info, args, summary, samples, skipped)
    print("\n" + report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(report)
    data = {
        "machine": info,
        "settings": {**vars(args), "out": str(args.out), "warmup_s": WARMUP_S},
        "summary": summary,
        "headline": headline(samples, summary),
        "cpu_headline": cpu_headline(samples, summary),
        "limiter_cost": limiter_cost(summary),
        "tracing_cost": tracing_cost(summary),
        "cache_hit": cache_hit(summary),
        "tls_cost": tls_cost(samples, summary),
        "metrics_cost_us": args.metrics_cost_us,
        "skipped": skipped,
        "samples": [asdict(s) for s in samples],
    }
    (args.out / "results.json").write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every process this run started is stopped")
