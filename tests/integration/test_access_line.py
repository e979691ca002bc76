"""Every access line has the same fields, whether the request was parsed or refused unparsed."""

from __future__ import annotations

import urllib.request

from gateway import Gateway, wait_until
from wire import connect, new_id, recv_all


def test_unparsed_and_parsed_access_lines_have_the_same_fields(gateway: Gateway) -> None:
    rid = new_id()
    request = urllib.request.Request(f"{gateway.url}/api/users", headers={"X-Request-ID": rid})
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200
    with connect(gateway.port) as sock:
        sock.sendall(b"GET /api/users HTTP/1.1\r\nHost: x\r\nX Bad: 1\r\n\r\n")
        assert recv_all(sock).split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")

    def lines() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        events = gateway.events("request")
        parsed = [e for e in events if e.get("request_id") == rid]
        unparsed = [e for e in events if e.get("method") == "-" and e.get("status") == 400]
        return parsed, unparsed

    wait_until(lambda: all(lines()), 10, "both access lines")
    parsed, unparsed = lines()
    assert set(unparsed[-1]) == set(parsed[0])
    assert {"consumer", "bytes_in", "trace_id"} <= set(unparsed[-1])
