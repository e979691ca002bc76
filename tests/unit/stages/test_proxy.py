"""The proxy stage's accounting, with a fake connection pool in place of the network.

Each backend's `connections` is replaced by a fake that records what would be sent and hands
back scripted responses, so what counts against a backend (breaker, in-flight count) and what
is released can be checked exactly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from aiogate.config import RetriesConfig, UpstreamConfig
from aiogate.context import RequestContext
from aiogate.errors import BadGateway, BadRequest, UpstreamBodyBroken
from aiogate.metrics import RequestRecorder
from aiogate.stages.proxy import Proxy
from aiogate.upstream.errors import (
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamProtocolError,
)
from aiogate.upstream.head import RequestBody
from aiogate.upstream.pool import Backend, UpstreamPool

pytestmark = pytest.mark.usefixtures("quiet_log")


class FakeResponse:
    """An UpstreamResponse stand-in: `broken` makes the body fail after `body` was sent."""

    def __init__(
        self, status: int = 200, body: bytes = b"ok", *, streamed: bool = False,
        broken: bool = False,
    ) -> None:  # fmt: skip
        self.status = status
        self.reason = "Whatever"
        self.headers = [("Content-Type", "text/plain")]
        self.content_length = None if streamed else len(body)
        self._body = body
        self._broken = broken
        self.released = 0

    async def read(self) -> bytes:
        if self._broken:
            raise UpstreamProtocolError("upstream closed the connection mid-response")
        return self._body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        yield self._body
        if self._broken:
            raise UpstreamProtocolError("upstream closed the connection mid-response")

    def release(self) -> None:
        self.released += 1


class FakeConnections:
    def __init__(self, *responses: FakeResponse | Exception) -> None:
        self.responses = list(responses)
        self.sent: list[tuple[str, str, list[tuple[str, str]]]] = []

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: RequestBody | None,
        **_: Any,
    ) -> FakeResponse:
        self.sent.append((method, target, list(headers)))
        response = self.responses.pop(0)
        if isinstance(response, Exception):
            raise response
        return response


class MaxRandom(random.Random):
    """The longest backoff full jitter allows: the retry is sure to be waiting."""

    def uniform(self, a: float, b: float) -> float:
        return b


def make_proxy(
    *responses: FakeResponse | Exception, backends: int = 1, retries: dict[str, Any] | None = None,
    drop: frozenset[str] = frozenset(),
) -> tuple[Proxy, UpstreamPool, list[FakeConnections]]:  # fmt: skip
    config = UpstreamConfig.model_validate(
        {"name": "svc",
         "backends": [{"url": f"http://127.0.0.1:{9 + i}"} for i in range(backends)]}
    )  # fmt: skip
    pool = UpstreamPool(config)
    fakes = []
    for backend in pool.backends:
        fake = FakeConnections(*responses)
        backend.connections = fake  # type: ignore[assignment]
        fakes.append(fake)
    proxy = Proxy(
        pool,
        timeout=60.0,
        max_body_size=1024,
        recorder=RequestRecorder(),
        retries=RetriesConfig.model_validate(retries or {}),
        rng=MaxRandom(),
        drop=drop,
    )
    return proxy, pool, fakes


def context(method: str = "GET", headers: dict[str, str] | None = None) -> RequestContext:
    request = make_mocked_request(method, "/x", headers=headers or {})
    return RequestContext(
        request=request, request_id="rid-1", method=method, path="/x", query="",
        client_ip="192.0.2.1", forwarded_for="192.0.2.1", started=0.0,
    )  # fmt: skip


def failures(backend: Backend) -> int:
    return backend.state.breaker.failures


async def test_forwarded_claim_names_are_dropped_from_the_client_on_any_route() -> None:
    """The Runtime gives every route's proxy the forward_claims names: a public route's
    upstream must never see a client-made X-User-Id as if the gateway had vouched for it."""
    proxy, _, (fake,) = make_proxy(FakeResponse(), drop=frozenset({"x-user-id"}))
    ctx = context(headers={"X-User-Id": "admin", "X-Other": "kept"})
    await proxy(ctx)
    names = [name.lower() for name, _ in fake.sent[0][2]]
    assert "x-user-id" not in names
    assert "x-other" in names
    # What auth adds from a verified token still goes out.
    ctx = context(headers={"X-User-Id": "admin"})
    ctx.upstream_add = (("X-User-Id", "alice"),)
    fake.responses.append(FakeResponse())
    await proxy(ctx)
    assert [v for n, v in fake.sent[1][2] if n.lower() == "x-user-id"] == ["alice"]


async def test_unsendable_header_is_the_requests_fault_not_a_backends() -> None:
    """A value with no UTF-8 form (a lone surrogate from a claim) is refused with 400 before any
    backend is picked: no 502, no breaker failure, no retry on the other backends."""
    proxy, pool, fakes = make_proxy(FakeResponse(), backends=2, retries={"attempts": 2})
    ctx = context()
    ctx.upstream_add = (("X-User-Id", "\ud800"),)
    with pytest.raises(BadRequest, match="X-User-Id"):
        await proxy(ctx)
    assert [fake.sent for fake in fakes] == [[], []]
    assert [failures(b) for b in pool.backends] == [0, 0]
    assert ctx.backend == ""


async def test_in_flight_is_released_when_cancelled_during_a_retry_backoff() -> None:
    released = asyncio.Event()

    class Retried(FakeResponse):
        def release(self) -> None:
            super().release()
            released.set()  # released to be retried: the backoff sleep comes next

    proxy, pool, _ = make_proxy(
        Retried(503), FakeResponse(200),
        retries={"attempts": 1, "base_delay": "30s", "max_delay": "30s"},
    )  # fmt: skip
    (backend,) = pool.backends
    budget = proxy._budget
    task = asyncio.create_task(proxy(context()))
    await released.wait()
    assert not task.done()
    assert (budget.requests, budget.retries) == (1, 1)  # the retry holds its slot meanwhile
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.in_flight == 0
    assert (budget.requests, budget.retries) == (0, 0)


async def test_a_full_budget_refuses_a_retry_of_a_request_a_backend_saw() -> None:
    proxy, _, fakes = make_proxy(
        FakeResponse(503), FakeResponse(200), backends=2,
        retries={"attempts": 1, "base_delay": "0s", "budget": 0.5, "min_retry_concurrency": 2},
    )  # fmt: skip
    budget = proxy._budget
    budget.requests, budget.retries = 3, 2  # other requests hold both slots
    response = await proxy(context())
    assert response.status == 503
    assert sum(len(fake.sent) for fake in fakes) == 1
    assert (budget.requests, budget.retries) == (3, 2)
    # With a slot free, the same failure is retried on the other backend.
    budget.retries = 1
    response = await proxy(context())
    assert response.status == 200
    assert sum(len(fake.sent) for fake in fakes) == 3
    assert (budget.requests, budget.retries) == (3, 1)


async def test_a_connect_error_is_retried_elsewhere_even_with_the_budget_full() -> None:
    """Nothing reached the backend: a retry adds no work upstream, the budget never refuses
    it, for any method; it goes to the backend not tried yet."""
    refused = UpstreamConnectError("cannot connect: refused")
    proxy, pool, fakes = make_proxy(
        refused, backends=2,
        retries={"attempts": 1, "base_delay": "0s", "budget": 0, "min_retry_concurrency": 0},
    )  # fmt: skip
    fakes[1].responses = [FakeResponse(200)]
    budget = proxy._budget
    response = await proxy(context("POST"))
    assert response.status == 200
    # Round robin started on the first backend: it was refused, the second one answered.
    assert [len(fake.sent) for fake in fakes] == [1, 1]
    assert [failures(b) for b in pool.backends] == [1, 0]
    assert (budget.requests, budget.retries) == (0, 0)


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("PUT", True), ("POST", False)])
async def test_a_reset_before_any_answer_is_retried_for_idempotent_methods_despite_the_budget(
    method: str, retried: bool
) -> None:
    """A backend killed with requests in flight resets them all at once: an idempotent request
    is repeated on the other backend even with the budget full; a POST (the backend may have
    acted on it) is not."""
    reset = UpstreamClosedError("upstream closed the connection before answering")
    proxy, _, fakes = make_proxy(
        reset, backends=2,
        retries={"attempts": 1, "base_delay": "0s", "budget": 0, "min_retry_concurrency": 0},
    )  # fmt: skip
    fakes[1].responses = [FakeResponse(200)]
    if retried:
        assert (await proxy(context(method))).status == 200
    else:
        with pytest.raises(BadGateway, match="closed the connection before answering"):
            await proxy(context(method))
    assert [len(fake.sent) for fake in fakes] == ([1, 1] if retried else [1, 0])
    assert (proxy._budget.requests, proxy._budget.retries) == (0, 0)


async def test_budget_counts_are_given_back_when_the_request_raises() -> None:
    proxy, _, (fake,) = make_proxy(
        FakeResponse(503), FakeResponse(200), retries={"attempts": 1, "base_delay": "0s"}
    )  # fmt: skip
    budget = proxy._budget
    ctx = context()

    def broken_edit(ctx: RequestContext, status: int, headers: list[tuple[str, str]]) -> int:
        raise RuntimeError("edit failed")

    ctx.response_edits = (broken_edit,)
    with pytest.raises(RuntimeError, match="edit failed"):
        await proxy(ctx)
    assert len(fake.sent) == 2  # the retry's answer was the one being edited
    assert (budget.requests, budget.retries) == (0, 0)


async def test_upstream_is_released_when_a_response_edit_raises() -> None:
    response = FakeResponse()
    proxy, pool, _ = make_proxy(response)
    ctx = context()

    def broken_edit(ctx: RequestContext, status: int, headers: list[tuple[str, str]]) -> int:
        raise RuntimeError("edit failed")

    ctx.response_edits = (broken_edit,)
    with pytest.raises(RuntimeError, match="edit failed"):
        await proxy(ctx)
    assert response.released
    assert pool.backends[0].in_flight == 0


async def test_body_broken_after_a_good_head_counts_against_the_backend() -> None:
    """Consecutively: the good head must not count as a success that resets the count."""
    proxy, pool, _ = make_proxy(FakeResponse(broken=True), FakeResponse(broken=True))
    for expected in (1, 2):
        with pytest.raises(BadGateway) as info:
            await proxy(context())
        assert info.value.code == "bad_upstream_response"
        assert failures(pool.backends[0]) == expected


async def test_a_whole_body_is_a_success() -> None:
    proxy, pool, _ = make_proxy(FakeResponse(broken=True), FakeResponse(), FakeResponse(
        streamed=True))  # fmt: skip
    with pytest.raises(BadGateway):
        await proxy(context())
    assert failures(pool.backends[0]) == 1
    await proxy(context())
    assert failures(pool.backends[0]) == 0
    pool.backends[0].state.breaker.failures = 3
    await proxy(context())  # streamed to its end
    assert failures(pool.backends[0]) == 0


async def test_streamed_body_broken_cuts_the_client_and_blames_the_backend() -> None:
    response = FakeResponse(streamed=True, broken=True)
    proxy, pool, _ = make_proxy(response)
    ctx = context()
    with pytest.raises(UpstreamBodyBroken):
        await proxy(ctx)
    assert failures(pool.backends[0]) == 1
    assert response.released
    assert response.released
    assert pool.backends[0].in_flight == 0
    transport = ctx.request.transport
    assert transport is not None
    transport.abort.assert_called_once()  # type: ignore[attr-defined]
    # A ConnectionError still, so aiohttp ends the connection as for any broken response.
    assert issubclass(UpstreamBodyBroken, ConnectionError)


async def test_expect_header_is_never_forwarded() -> None:
    proxy, _, (fake,) = make_proxy(FakeResponse())
    response = await proxy(context(headers={"Expect": "100-continue"}))
    assert isinstance(response, web.StreamResponse)
    assert "expect" not in [name.lower() for name, _ in fake.sent[0][2]]
