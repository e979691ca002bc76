"""Command line: `aiogate run | check | reload | example-config | systemd-unit | --version`.
Parsing and dispatch only."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from . import __version__
from .config import ConfigError, GatewayConfig, load_config
from .worker_env import WORKER_ENV

__all__ = ["EX_CONFIG", "main"]

#: `run`'s exit status for a config it cannot start with (sysexits.h EX_CONFIG): the systemd
#: unit's RestartPreventExitStatus stops restarting on it, since a restart cannot help.
EX_CONFIG: Final = 78


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiogate", description="An API gateway daemon.")
    parser.add_argument("--version", action="version", version=f"aiogate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the gateway in the foreground")
    run.add_argument("-c", "--config", required=True, type=Path, metavar="PATH")
    check = commands.add_parser("check", help="validate a config file and print every error")
    check.add_argument("-c", "--config", required=True, type=Path, metavar="PATH")
    commands.add_parser(
        "example-config", help="print an install-ready example config (no secrets in it)"
    )
    commands.add_parser("systemd-unit", help="print the systemd unit (aiogate.service)")
    reload = commands.add_parser(
        "reload",
        help="ask the running gateway to reload its config (admin API); exit 0 when applied",
    )
    reload.add_argument(
        "-c", "--config", type=Path, metavar="PATH", default=Path("/etc/aiogate/aiogate.yaml"),
        help="the running gateway's config: where its admin listener and token are "
        "(default: %(default)s)",
    )  # fmt: skip
    reload.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS",
        help="how long to wait for the outcome (default: %(default)s)",
    )  # fmt: skip
    return parser


def _load(path: Path) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return None


def _check(path: Path) -> int:
    config = _load(path)
    if config is None:
        return 1
    print(f"{path}: OK ({len(config.routes)} routes, {len(config.upstreams)} upstreams)")
    return 0


def _run(path: Path) -> int:
    import uvloop

    from .aiohttp_compat import ParserUnavailable, require_c_parser

    try:
        require_c_parser()
    except ParserUnavailable as exc:
        print(f"aiogate: cannot start: {exc}", file=sys.stderr)
        return EX_CONFIG
    config = _load(path)
    if config is None:
        return EX_CONFIG
    is_worker = WORKER_ENV in os.environ
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            if config.server.workers > 1 and not is_worker:
                runtime_dir = _multiprocess_metrics_dir()
                from .supervisor import Supervisor

                return runner.run(Supervisor(path, config, runtime_dir).run())
            from .daemon import Daemon

            return runner.run(Daemon(path, config, worker=is_worker).run())
        except OSError as exc:  # e.g. the port is taken: a clear line, not a traceback
            print(f"aiogate: cannot start: {exc}", file=sys.stderr)
            return 1


def _multiprocess_metrics_dir() -> Path:
    """A private folder for the supervisor, with prometheus_client's multiprocess files.

    Set before anything imports prometheus_client: the library picks its value storage at
    import, and the parent's own counters (reloads) must land in the shared files too.
    """
    runtime_dir = Path(tempfile.mkdtemp(prefix="aiogate-"))
    (runtime_dir / "metrics").mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(runtime_dir / "metrics")
    return runtime_dir


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command in ("example-config", "systemd-unit"):
        from . import resources

        text = (
            resources.example_config()
            if args.command == "example-config"
            else (resources.systemd_unit())
        )
        sys.stdout.write(text)
        return 0
    if args.command == "reload":
        from .reloadcmd import reload_command

        return reload_command(args.config, args.timeout)
    return _run(args.config)
