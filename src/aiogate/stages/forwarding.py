"""What the proxy sends upstream: the request's head and its body, prepared once per request.

The head: end-to-end headers only (hop-by-hop ones and those named in `Connection` dropped,
`_` names dropped or matched in their `-` spelling), then the gateway's own `X-Forwarded-*`,
`X-Real-IP`, `Forwarded` and `X-Request-ID`. It is built and checked before any backend is
picked, so a head that cannot be sent is the request's fault (400), never a backend's.

The body: small ones of known length are read whole (one write, replayable on a stale
keep-alive connection); anything else streams, counted against `max_body_size` as it goes.
Client-side failures while reading it keep their own errors (413, 400, 408, and
`ClientBodyError` for the 499), so the upstream exchange never reports them as a 502.
"""

from __future__ import annotations

import string
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from ..context import RequestContext
from ..errors import BadRequest, BodyTimeout, ExpectationFailed, PayloadTooLarge
from ..headers import GATEWAY_REQUEST_HEADERS, HOP_BY_HOP, connection_tokens
from ..netmatch import parse_ip
from ..requestcheck import valid_host
from ..upstream.head import RequestBody, check_head
from .wire import BUFFER_LIMIT

__all__ = [
    "ClientBodyError",
    "Forwarding",
    "RequestHead",
    "answer_expectation",
    "filter_request_headers",
    "forwarded_element",
    "spellings",
]

# `Expect` is answered by the gateway itself (`answer_expectation`): an upstream asked to send
# `100 Continue` would only delay the exchange, the body being on its way already.
REQUEST_DROP: Final = HOP_BY_HOP | GATEWAY_REQUEST_HEADERS | {"expect"}

_MERGED_LIMIT: Final = 256
# RFC 7230 tchar: a Forwarded parameter value made only of these needs no quotes.
_TCHAR: Final = frozenset("!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters)
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

#: (headers before `Host`, headers after it, target without the backend's base path).
RequestHead = tuple[list[tuple[str, str]], list[tuple[str, str]], str]


class ClientBodyError(ConnectionResetError):
    """The client's connection broke while its body was being relayed (the server logs 499)."""


async def answer_expectation(request: web.BaseRequest) -> None:
    """Meet the client's `Expect` before its body is read (RFC 9110 §10.1.1).

    Called by whichever stage is about to read the body, so only once routing, IP rules, auth
    and rate limits have passed: a client waiting for `100 Continue` learns about a refusal
    before sending a byte of its body. Any expectation other than 100-continue is 417.
    """
    values = request.headers.getall(hdrs.EXPECT, ())
    if not values:
        return
    for value in values:
        for token in value.split(","):
            if token.strip().lower() != "100-continue":
                raise ExpectationFailed("only the 100-continue expectation is supported")
    content = request.content
    # An HTTP/1.0 client cannot take a 1xx (the RFC says to ignore the expectation), and a
    # client that already started sending its body is not waiting for one.
    if (
        request.version == HttpVersion11
        and request.body_exists
        and content.total_bytes == 0
        and not content.is_eof()
    ):
        writer = request.writer
        await writer.write(_CONTINUE)
        # The interim response is not the start of the real one (aiohttp does the same).
        writer.output_size = 0


def forwarded_element(peer: str, proto: str, host: str) -> str:
    """One RFC 7239 `Forwarded` element: `for=...;proto=...[;host=...]`.

    An IPv6 `for` is bracketed and quoted (`for="[::1]"`), an unknown peer is `for=unknown`,
    and a host with a port is quoted (`:` is not a token character). `host` must be a valid
    host[:port] (no `"` or `\\` to escape).
    """
    if not peer:
        node = "unknown"
    elif ":" in peer:
        node = f'"[{peer}]"'
    else:
        node = peer
    element = f"for={node};proto={proto}"
    if host:
        element += f";host={host}" if _TCHAR.issuperset(host) else f';host="{host}"'
    return element


def spellings(names: frozenset[str]) -> frozenset[str]:
    """`names` plus each one with `_` read as `-`, the way CGI, PHP, Django and others do.

    A drop set passed through this matches a client header whatever `_`/`-` spelling either
    side uses: the gateway's `X_User` (from config) drops the client's `X-User` too.
    """
    if not any("_" in name for name in names):
        return names
    return names | {name.replace("_", "-") for name in names}


def filter_request_headers(
    headers: CIMultiDict[str] | web.BaseRequest,
    drop: frozenset[str] = REQUEST_DROP,
    *,
    underscores: bool = False,
) -> list[tuple[str, str]]:
    """End-to-end request headers: hop-by-hop ones and those named in Connection removed.

    Names with `_` are dropped too (`server.underscore_headers: drop`), unless `underscores`
    (`allow`): then one is dropped when its `-` spelling is in `drop`, so `X_Forwarded_For`
    or `X_User_Id` can never stand in for the gateway's own header upstream. `drop` holds
    lower-case names in their `-` spelling (see `spellings`).
    """
    source = headers.headers if isinstance(headers, web.BaseRequest) else headers
    named = source.getall(hdrs.CONNECTION, ())
    if named:
        extra = set().union(*(connection_tokens(v) for v in named)) - GATEWAY_REQUEST_HEADERS
        drop = drop | extra
    if underscores:
        return [
            (name, value)
            for name, value in source.items()
            if (lowered := name.lower()) not in drop
            and ("_" not in lowered or lowered.replace("_", "-") not in drop)
        ]
    return [
        (name, value)
        for name, value in source.items()
        if "_" not in name and name.lower() not in drop
    ]


class Forwarding:
    """One route's way of turning the client's request into the upstream request.

    `drop`: lower-case client headers never forwarded on any route (the names the gateway
    fills from JWT claims: a public route's upstream must not take a client's X-User-Id for
    one the gateway vouched for). `underscores` (`server.underscore_headers: allow`): client
    header names with `_` are forwarded.
    """

    __slots__ = ("_drop", "_max_body_size", "_merged", "_underscores")

    def __init__(
        self, *, max_body_size: int, drop: frozenset[str] = frozenset(), underscores: bool = False
    ) -> None:
        self._drop = spellings(REQUEST_DROP | drop)
        self._underscores = underscores
        # The route's drop set merged with what a stage adds (auth, transform): a handful of
        # distinct sets per route, so merged once each rather than once per request.
        self._merged: dict[frozenset[str], frozenset[str]] = {}
        self._max_body_size = max_body_size

    def head(self, ctx: RequestContext) -> RequestHead:
        """(headers before Host, headers after it, target without the backend's base path).

        Built and checked once per request, before any backend is picked: a head that cannot
        be framed (a lone surrogate in a forwarded claim, a control character in the target)
        is the request's fault, so it is a 400 that never counts against a backend nor is
        retried on another one.
        """
        head, forwarded = self._upstream_headers(ctx)
        path = ctx.path if ctx.upstream_path is None else ctx.upstream_path  # transform's rewrite
        target = f"{path}?{ctx.query}" if ctx.query else path
        try:
            check_head(ctx.method, target, [*head, *forwarded])
        except ValueError as exc:
            raise BadRequest(f"the request cannot be forwarded: {exc}") from None
        return head, forwarded, target

    async def body(self, ctx: RequestContext) -> RequestBody | None:
        request = ctx.request
        if ctx.upstream_body is not None:  # a transformed body (read whole by the stage)
            return RequestBody(data=ctx.upstream_body, chunks=None, length=len(ctx.upstream_body))
        length = request.content_length
        # A declared length over the limit is refused before `100 Continue`: a client waiting
        # for it must get the final 413, not an invitation to send what will be refused.
        if length is not None and length > self._max_body_size:
            raise PayloadTooLarge(
                f"request body of {length} bytes exceeds the limit of {self._max_body_size} bytes"
            )
        await answer_expectation(request)
        if not request.body_exists:
            if ctx.method in ("POST", "PUT", "PATCH"):
                return RequestBody(data=b"", chunks=None, length=0)
            return None
        if length is not None and length <= BUFFER_LIMIT:
            data = await request.read()
            ctx.bytes_in = len(data)
            return RequestBody(data=data, chunks=None, length=len(data))
        return RequestBody(data=None, chunks=self._stream_body(ctx), length=length)

    async def _stream_body(self, ctx: RequestContext) -> AsyncIterator[bytes]:
        """The client's body, counted: over the limit raises mid-stream (chunked uploads too)."""
        limit = self._max_body_size
        total = 0
        chunks = ctx.request.content.iter_any()
        while True:
            # Errors reading the client are told apart from upstream errors here: they pass
            # through the upstream exchange, which must not report them as a 502.
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except HttpProcessingError:
                ctx.bytes_in = total
                raise BadRequest("malformed request body") from None
            except ConnectionError as exc:
                ctx.bytes_in = total
                raise ClientBodyError("the client went away while sending the body") from exc
            except BodyTimeout:
                # Set on the stream by the connection's body timer: already the client's 408.
                ctx.bytes_in = total
                raise
            total += len(chunk)
            if total > limit:
                ctx.bytes_in = total
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            yield chunk
        ctx.bytes_in = total

    def _upstream_headers(
        self, ctx: RequestContext
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The upstream request's headers that go before `Host` and those after it."""
        request = ctx.request
        drop = self._drop
        if ctx.upstream_drop:
            # Set by auth (the credential) and transform: never passed on from the client.
            drop = self._merged_drop(ctx.upstream_drop)
        headers = filter_request_headers(request, drop, underscores=self._underscores)
        headers += ctx.upstream_add
        incoming = request.headers
        # The Host header as sent (none from an HTTP/1.0 client: then no X-Forwarded-Host).
        # Checked by requestcheck: a valid host[:port], so it needs no escaping below.
        received_host = host = incoming.get("Host", "")
        scheme = proto = request.scheme
        # This hop, as RFC 7239 describes it: who connected, over what, asking for which host.
        hop = forwarded_element(request.remote or "", scheme, received_host)
        real_ip: str | None = ctx.client_ip
        if ctx.via_trusted_proxy:
            # A trusted proxy in front (e.g. a TLS terminator) knows the original scheme/host,
            # and its Forwarded and X-Real-IP are believed: this hop is appended to them.
            # Believed only when well-formed: a value the gateway would refuse from a client
            # must not reach the upstream through a trusted hop either.
            sent_proto = incoming.get("X-Forwarded-Proto", "").strip().lower()
            if sent_proto in ("http", "https"):
                proto = sent_proto
            sent_host = incoming.get("X-Forwarded-Host")
            if sent_host is not None and valid_host(sent_host):
                host = sent_host
            sent_ip = incoming.get("X-Real-IP", "").strip()
            if sent_ip and parse_ip(sent_ip) is not None:
                real_ip = sent_ip
            chain = incoming.getall("Forwarded", ())
            if chain:
                hop = f"{', '.join(chain)}, {hop}"
        forwarded = [("X-Forwarded-For", ctx.forwarded_for), ("X-Forwarded-Proto", proto)]
        if host:
            forwarded.append(("X-Forwarded-Host", host))
        if real_ip:
            forwarded.append(("X-Real-IP", real_ip))
        forwarded.append(("Forwarded", hop))
        forwarded.append(("X-Request-ID", ctx.request_id))
        return headers, forwarded

    def _merged_drop(self, extra: frozenset[str]) -> frozenset[str]:
        merged = self._merged.get(extra)
        if merged is None:
            if len(self._merged) >= _MERGED_LIMIT:  # a safety net: stages reuse their sets
                self._merged.clear()
            merged = self._merged[extra] = spellings(self._drop | extra)
        return merged
