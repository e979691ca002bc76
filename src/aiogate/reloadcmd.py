"""`aiogate reload`: ask the running gateway to reload its config, and say how it went.

The exit status is the reload's outcome (0 applied, 1 rejected or not done), so
`systemctl reload` (the unit's `ExecReload`) fails when the new config is rejected, which a
bare SIGHUP cannot tell it.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .config import ConfigError, GatewayConfig, load_config

__all__ = ["admin_base_url", "reload_command"]


def admin_base_url(config: GatewayConfig) -> str:
    """The admin listener as this host can reach it (a wildcard address means loopback)."""
    host, port = config.admin.host, config.admin.port
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def reload_command(path: Path, timeout: float) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        # The running gateway would reject this file for the same reasons.
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print("aiogate reload: the config is not valid; the running config stays", file=sys.stderr)
        return 1
    token = config.admin.token
    if token is None:
        print(
            "aiogate reload: the admin API is off (admin.token is empty); set it, or send "
            "SIGHUP to the main process",
            file=sys.stderr,
        )
        return 1
    url = f"{admin_base_url(config)}/admin/reload"
    request = urllib.request.Request(
        url,
        method="POST",
        headers={"Authorization": f"Bearer {token.get_secret_value()}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return _refused(exc)
    except (OSError, ValueError) as exc:
        print(f"aiogate reload: cannot reach the gateway at {url}: {exc}", file=sys.stderr)
        return 1
    print(f"aiogate reload: applied (generation {body.get('generation')})")
    return 0


def _refused(exc: urllib.error.HTTPError) -> int:
    try:
        body = json.loads(exc.read())
    except ValueError:
        body = {}
    if exc.code == 422:
        for error in body.get("errors", []):
            print(error, file=sys.stderr)
        print("aiogate reload: rejected; the running config stays", file=sys.stderr)
    elif exc.code == 401:
        print("aiogate reload: the gateway refused admin.token", file=sys.stderr)
    else:
        message = body.get("message", exc.reason)
        print(f"aiogate reload: HTTP {exc.code}: {message}", file=sys.stderr)
    return 1
