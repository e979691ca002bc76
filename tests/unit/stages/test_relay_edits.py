"""Several stages may edit the relayed response: edits compose in reverse chain order."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request

from aiogate.context import RequestContext
from aiogate.stages.relay import apply_response_edits


def _ctx() -> RequestContext:
    return RequestContext(
        request=make_mocked_request("GET", "/r"),
        request_id="rid",
        method="GET",
        path="/r",
        query="",
        client_ip="127.0.0.1",
        forwarded_for="127.0.0.1",
        started=0.0,
    )


def test_edits_run_nearest_the_proxy_first() -> None:
    ctx = _ctx()

    def outer(c: RequestContext, status: int, headers: list[tuple[str, str]]) -> int:
        headers.append(("X-Order", "outer"))
        return 503 if status == 502 else status

    def inner(c: RequestContext, status: int, headers: list[tuple[str, str]]) -> int:
        headers.append(("X-Order", "inner"))
        return 502 if status == 500 else status

    ctx.response_edits = (outer, inner)  # chain order: outer stage first
    headers: list[tuple[str, str]] = []
    assert apply_response_edits(ctx, 500, headers) == 503  # inner maps 500->502, outer 502->503
    assert headers == [("X-Order", "inner"), ("X-Order", "outer")]


def test_no_edits_keep_the_status() -> None:
    ctx = _ctx()
    assert apply_response_edits(ctx, 200, []) == 200
