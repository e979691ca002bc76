"""`aiogate check` reports schema and cross-reference errors of a file together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

AIOGATE = Path(sys.executable).with_name("aiogate")

BOTH_KINDS = """\
upstreams:
  - name: users
    backends: [{url: "http://127.0.0.1:9001"}]
    timeout: soon
routes:
  - path: /api
    upstream: nowhere
  - path: /b
    upstream: users
    hosts: [b.test]
    transformations:
      request:
        add_headers: {X-Sub: "${claims.sub}", X-Bad: "${claims}"}
  - path: /b
    upstream: users
    hosts: [B.test, c.test]
  - path: /b
    upstream: users
  - path: /jwt
    upstream: users
    auth: {type: jwt}
    rate_limit: {requests: 0, window: 1s}
"""


def test_check_reports_schema_and_reference_errors_in_one_run(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text(BOTH_KINDS)
    result = subprocess.run(
        [str(AIOGATE), "check", "-c", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:4:14: upstreams[0].timeout: invalid duration 'soon' (use e.g. 250ms, 10s,"
        " 5m, 1h or a number of seconds)",
        f"{path}:7:15: routes[0].upstream: unknown upstream 'nowhere' (known: users)",
        f"{path}:13:54: routes[1].transformations.request.add_headers.X-Bad: unknown variable"
        " ${claims} (known: ${backend}, ${client_ip}, ${consumer}, ${latency}, ${request_id},"
        " ${route}, ${upstream}, ${claims.NAME}, ${header.NAME}, ${query.NAME},"
        " ${tls.client_subject})",
        f"{path}:14:11: routes[2].path: duplicate route: /b (every method) on host b.test is"
        " already served by routes[1]",
        f"{path}:21:18: routes[4].auth.type: type 'jwt' needs 'auth.jwt' to be configured",
        f"{path}:22:28: routes[4].rate_limit.requests: must be > 0",
    ]
    assert "Traceback" not in result.stderr
