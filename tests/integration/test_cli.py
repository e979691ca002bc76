"""The command line (`aiogate check | run | --version`) and the shipped systemd unit."""

from __future__ import annotations

import configparser
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from backend import BackendThread
from gateway import ROOT, Gateway, free_port
from gwconfigs import basic_config
from yaml_dump import dump

import aiogate
from needs import needs_tool

AIOGATE = Path(sys.executable).with_name("aiogate")
UNIT = ROOT / "systemd" / "aiogate.service"

BAD = """\
server:
  listen: "127.0.0.1:8080"
  shutdown_timeout: 5 parsecs
  bogus: 1
upstreams:
  - name: users
    backends:
      - url: http://127.0.0.1:9001
routes:
  - path: /api
    upstream: nowhere
  - path: /b
    upstream: users
    rate_limit: {requests: -5, window: 10s}
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AIOGATE), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env if env is not None else dict(os.environ),
    )


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout


def test_check_accepts_a_valid_file(backends: BackendThread, tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(dump(basic_config(backends)))
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "OK" in result.stdout
    assert run_cli("check", "--config", str(path)).returncode == 0


def test_check_prints_every_error_at_its_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        f"{path}:3:21: server.shutdown_timeout: invalid duration '5 parsecs' "
        "(use e.g. 250ms, 10s, 5m, 1h or a number of seconds)",
        f"{path}:4:3: server.bogus: unknown key",
        f"{path}:11:15: routes[0].upstream: unknown upstream 'nowhere' (known: users)",
        f"{path}:14:28: routes[1].rate_limit.requests: must be > 0",
    ]
    no_traceback(result)


def test_check_of_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(rf"{re.escape(str(path))}:1:1: cannot read config file: .+", line)
    assert "No such file" in line
    no_traceback(result)


def test_usage_errors_exit_2() -> None:
    result = run_cli("check")
    assert result.returncode == 2
    assert "--config" in result.stderr
    assert run_cli().returncode == 2
    assert run_cli("frobnicate").returncode == 2


@pytest.mark.parametrize(
    "argv",
    [[str(AIOGATE), "--version"], [sys.executable, "-m", "aiogate", "--version"]],
    ids=["console-script", "python-m"],
)
def test_version(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0
    assert result.stdout.strip() == f"aiogate {aiogate.__version__}"


def test_python_m_check_is_the_same_command(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    via_m = subprocess.run(
        [sys.executable, "-m", "aiogate", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    direct = run_cli("check", "-c", str(path))
    assert (via_m.returncode, via_m.stdout, via_m.stderr) == (
        direct.returncode,
        direct.stdout,
        direct.stderr,
    )


def test_run_with_an_invalid_config_exits_78(tmp_path: Path) -> None:
    """EX_CONFIG: the unit's RestartPreventExitStatus=78 keeps systemd from looping on it."""
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = run_cli("run", "-c", str(path))
    assert result.returncode == 78
    assert len(result.stderr.splitlines()) == 4
    assert all(line.startswith(f"{path}:") for line in result.stderr.splitlines())
    no_traceback(result)


@pytest.mark.parametrize("workers", [1, 2])
def test_run_on_a_taken_port_exits_1(backends: BackendThread, tmp_path: Path, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = basic_config(
            backends,
            server={"listen": f"127.0.0.1:{port}", "workers": workers},
            admin={"listen": f"127.0.0.1:{free_port()}"},
        )
        path = tmp_path / "busy.yaml"
        path.write_text(dump(config))
        result = run_cli("run", "-c", str(path))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"aiogate: cannot start: cannot listen on 127.0.0.1:{port}: ")
    assert "Address already in use" in line
    no_traceback(result)


@pytest.mark.parametrize("workers", [1, 2])
def test_run_on_a_taken_admin_port_exits_1(
    backends: BackendThread, tmp_path: Path, workers: int
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = basic_config(
            backends,
            server={"listen": f"127.0.0.1:{free_port()}", "workers": workers},
            admin={"listen": f"127.0.0.1:{port}"},
        )
        path = tmp_path / "busy.yaml"
        path.write_text(dump(config))
        result = run_cli("run", "-c", str(path))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"aiogate: cannot start: cannot listen on 127.0.0.1:{port}: ")
    assert "Address already in use" in line
    no_traceback(result)


def test_listen_without_a_host_serves_every_ipv4_interface(
    backends: BackendThread, tmp_path: Path
) -> None:
    """`listen: ":PORT"` binds 0.0.0.0: the gateway answers on 127.0.0.1 (and any other)."""
    port = free_port()
    gw = Gateway(basic_config(backends, server={"listen": f":{port}"}), tmp_path).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/users", timeout=5) as resp:
            assert resp.status == 200
        (started,) = gw.wait_event("gateway_started")
        assert started["listen"] == f":{port}"
    finally:
        gw.stop()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOGATE_", "JWT_", "DEMO_"))}
    return {**env, **extra}


@pytest.mark.parametrize(
    ("config", "required"),
    [
        (
            "etc/aiogate.yaml",
            {"AIOGATE_UPSTREAM_URL": "http://127.0.0.1:9", "JWT_SECRET": "x" * 32},
        ),
        ("deploy/demo/aiogate.yaml", {"JWT_SECRET": "x" * 32, "DEMO_API_KEY": "k" * 20}),
    ],
)
def test_shipped_configs_hold_no_secret(config: str, required: dict[str, str]) -> None:
    """They pass `check` with their secrets in the environment, and not without: there is no
    published default to fall back on."""
    result = run_cli("check", "-c", config, env=_clean_env(**required))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for name in required:
        missing = {k: v for k, v in required.items() if k != name}
        result = run_cli("check", "-c", config, env=_clean_env(**missing))
        assert result.returncode == 1
        assert f"environment variable {name} is not set" in result.stderr


def test_the_install_template_is_the_packaged_example() -> None:
    """etc/aiogate.yaml and `aiogate example-config` are one file."""
    example = run_cli("example-config")
    assert example.stdout == (ROOT / "etc" / "aiogate.yaml").read_text()


# -- systemd unit -----------------------------------------------------------------------------
def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_settings() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert "aiogate run" in service["ExecStart"]
    # `systemctl reload` fails when the gateway rejects the new config
    assert re.fullmatch(r"/usr/local/bin/aiogate reload --config \S+", service["ExecReload"])
    assert service["ExecReload"].split()[-1] == service["ExecStart"].split()[-1]
    assert service["KillMode"] == "mixed"
    assert service["RestartPreventExitStatus"] == "78"
    assert service["WatchdogSec"] == "30s"
    assert int(service["LimitNOFILE"]) >= 4096
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["User"] not in ("", "root")
    assert service.get("NotifyAccess", "main") == "main"
    # SIGTERM drains for server.shutdown_timeout (30s default): systemd must wait longer
    assert int(service.get("TimeoutStopSec", "90")) > 30
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


@needs_tool("systemd-analyze", "systemd")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # verify checks that the binaries exist: point them at this checkout's console script
    text = UNIT.read_text().replace("/usr/local/bin/aiogate", str(AIOGATE))
    copy = tmp_path / "aiogate.service"
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "aiogate.service" not in result.stderr, result.stderr


@needs_tool("systemd-analyze", "systemd")
def test_systemd_unit_security_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the sandbox; keep it in its "OK" band (below 2.0)."""
    copy = tmp_path / "aiogate.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/aiogate", str(AIOGATE)))
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for aiogate.service: ([0-9.]+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) < 2.0, result.stdout


def test_run_refuses_to_start_without_aiohttp_c_parser(
    backends: BackendThread, tmp_path: Path
) -> None:
    """aiohttp's pure-Python parser is laxer than llhttp: the daemon will not serve with it."""
    path = tmp_path / "gw.yaml"
    config = basic_config(backends)
    config["server"] = {"listen": f"127.0.0.1:{free_port()}"}
    path.write_text(dump(config))
    result = run_cli("run", "-c", str(path), env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"})
    assert result.returncode == 78, result.stderr
    assert "C HTTP parser is not active" in result.stderr
    assert "AIOHTTP_NO_EXTENSIONS" in result.stderr
    no_traceback(result)


def test_example_config_and_systemd_unit_commands(tmp_path: Path) -> None:
    """A pip install alone can set up a host: the example config checks (with the variables
    it documents) and the unit printed is the shipped one."""
    unit_text = run_cli("systemd-unit")
    assert unit_text.returncode == 0
    assert unit_text.stdout == UNIT.read_text()
    example = run_cli("example-config")
    assert example.returncode == 0
    assert "${env:" in example.stdout
    path = tmp_path / "aiogate.yaml"
    path.write_text(example.stdout)
    env = {
        **os.environ,
        "AIOGATE_UPSTREAM_URL": "http://127.0.0.1:9001",
        "JWT_SECRET": "a" * 32 + "-not-published-anywhere",
    }
    assert run_cli("check", "-c", str(path), env=env).returncode == 0
