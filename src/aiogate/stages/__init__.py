"""The stage chain: each stage is `async (ctx, call_next) -> response`.

A stage stops a request only by raising a GatewayError. Chains are composed once per Runtime
(and per route, so a route pays only for the stages it configures), never per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import ClassVar, Protocol

from aiohttp import web

from ..context import RequestContext

__all__ = ["Next", "Stage", "compose"]

Next = Callable[[RequestContext], Awaitable[web.StreamResponse]]


class Stage(Protocol):
    name: ClassVar[str]

    async def __call__(self, ctx: RequestContext, call_next: Next) -> web.StreamResponse: ...


def compose(
    stages: Sequence[Stage],
    terminal: Next,
    *,
    wrap: Callable[[Stage, Next], Next] | None = None,
) -> Next:
    """Fold `stages` around `terminal`: the first stage runs first and sees the response last.

    `wrap` (tracing's span per stage) decorates each stage; None, the default, adds nothing.
    """
    handler = terminal
    for stage in reversed(stages):
        handler = partial(stage, call_next=handler) if wrap is None else wrap(stage, handler)
    return handler
