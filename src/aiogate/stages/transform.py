"""Request and response transformations of one route (after routing, auth and limits).

Everything is decided in `__init__`: header sets, templates, the path rewrite and the query
edit are compiled once per Runtime. What is routed and authorised is never changed, only what
is forwarded: a rewrite sets `ctx.upstream_path`, header edits go through
`ctx.upstream_drop`/`upstream_add`, a JSON body edit through `ctx.upstream_body`.

Response edits the proxy applies while it builds the relayed head (`ctx.response_drop`,
`ctx.response_edits`), so they work for streamed bodies too. Gateway-made error responses keep
the contract's shape and are not transformed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import quote, unquote_plus

import orjson
from aiohttp import hdrs, web

from .. import jsonpointer
from ..config import JsonBodyTransform, PathRewrite, RouteConfig, Transformations
from ..context import RequestContext
from ..errors import BadRequest, PayloadTooLarge
from ..pathnorm import ALLOW_PATH_PARAMETERS, InvalidPath, normalize_path
from ..template import REQUEST_VARIABLES, VARIABLES, Part, Var, parse
from ..tls import client_subject
from . import Next
from .forwarding import answer_expectation
from .wire import WireResponse

if TYPE_CHECKING:
    from .services import Services

__all__ = ["JsonEdit", "Template", "Transform", "compile_rewrite", "compile_template"]

Getter = Callable[[RequestContext], str]
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# Control characters split or end a header; a lone surrogate (from a JSON `\ud800` escape)
# has no UTF-8 form. Neither may reach a header value from a claim or a query parameter.
_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_PARAM: Final = re.compile(r"\{\*[^{}]*\}$")
# A `;` in a rewritten path is the operator's own text or was let in by
# `server.path_parameters: allow`; an encoded slash or backslash is always refused.
_REWRITE_FLAGS: Final = ALLOW_PATH_PARAMETERS


def _clean(value: str) -> str:
    # A consumer name comes from a JWT `sub` or an API key record: never let it split a header.
    return value if value.isprintable() else _CONTROL.sub("", value)


def _latency(ctx: RequestContext) -> str:
    return f"{(time.perf_counter() - ctx.started) * 1000.0:.3f}"


def _safe(value: str) -> str:
    return _UNSAFE.sub("", value)


def _claim(name: str) -> Getter:
    def get(ctx: RequestContext) -> str:
        value = ctx.claims.get(name)
        if isinstance(value, str):
            return _safe(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return ""  # missing, or not a string or number (a list, an object, a boolean)

    return get


def _header(name: str) -> Getter:
    def get(ctx: RequestContext) -> str:
        # aiohttp never yields CR, LF or NUL in a value; the rest of what a client may send
        # is kept as it came (a field on several lines is one comma-joined value).
        return _clean(", ".join(ctx.request.headers.getall(name, ())))

    return get


def _query(name: str) -> Getter:
    def get(ctx: RequestContext) -> str:
        # Decoded, so `%0D%0A` is a CR LF here: removed like any control character.
        return _safe(ctx.request.query.get(name, ""))

    return get


def _tls(name: str) -> Getter:
    # The only field (`template.TLS_FIELDS`): the verified client certificate's subject.
    def get(ctx: RequestContext) -> str:
        subject = client_subject(ctx.request.transport)
        return "" if subject is None else _safe(subject)

    return get


_NAMESPACED: Final[Mapping[str, Callable[[str], Getter]]] = {
    "claims": _claim,
    "header": _header,
    "query": _query,
    "tls": _tls,
}


def _getter(var: Var) -> Getter:
    return _NAMESPACED[var.name](var.key) if var.key else _GETTERS[var.name]


_GETTERS: Final[Mapping[str, Getter]] = {
    "latency": _latency,
    "request_id": lambda ctx: ctx.request_id,
    "consumer": lambda ctx: _clean(ctx.consumer) if ctx.consumer else "",
    "route": lambda ctx: ctx.route_label,
    "client_ip": lambda ctx: ctx.client_ip,
    "upstream": lambda ctx: ctx.upstream,
    "backend": lambda ctx: ctx.backend,
}


class Template:
    """A parsed header value: literals and variable getters; constants render for free."""

    __slots__ = ("_parts", "constant")

    def __init__(self, parts: tuple[Part, ...], constants: Mapping[str, str]) -> None:
        compiled: list[str | Getter] = []
        for part in parts:
            piece: str | Getter = part if isinstance(part, str) else _getter(part)
            if isinstance(part, Var) and not part.key and part.name in constants:
                piece = constants[part.name]
            last = compiled[-1] if compiled else None
            if isinstance(piece, str) and isinstance(last, str):
                compiled[-1] = last + piece
            else:
                compiled.append(piece)
        self._parts = tuple(compiled)
        #: The value when it needs no request (then nothing is rendered per request).
        self.constant: str | None = None
        if not compiled:
            self.constant = ""
        elif len(compiled) == 1 and isinstance(compiled[0], str):
            self.constant = compiled[0]

    def render(self, ctx: RequestContext) -> str:
        if self.constant is not None:
            return self.constant
        return "".join(p if isinstance(p, str) else p(ctx) for p in self._parts)


def compile_template(
    text: str, constants: Mapping[str, str] | None = None, allowed: frozenset[str] = VARIABLES
) -> Template:
    """`text` parsed once; `constants` fixes variables known when the Runtime is built."""
    return Template(parse(text, allowed), constants or {})


def compile_rewrite(rewrite: PathRewrite, route_path: str) -> Callable[[str], str]:
    """The forwarded path as a function of the routed (normalised) path."""
    if rewrite.regex is not None:
        pattern = re.compile(rewrite.regex)
        replacement = rewrite.replacement or ""

        def by_regex(path: str) -> str:
            out = pattern.sub(replacement, path, count=1)
            # Groups can cut segments and escapes apart (`\1/..`, `%2` + `F`), so the result
            # is normalised like a request path: the upstream gets the one form it would
            # resolve it to, and an encoded slash never comes back (config checks the rest).
            try:
                return normalize_path(out if out.startswith("/") else "/" + out, _REWRITE_FLAGS)
            except InvalidPath as exc:
                raise BadRequest(f"the rewritten path is invalid: {exc}") from None

        return by_regex
    # Config validation refused what has no canonical form; this resolves `.`/`..` and
    # decodes unreserved escapes, so prefix + (canonical) rest is canonical.
    prefix = normalize_path(rewrite.prefix or "/", _REWRITE_FLAGS).rstrip("/")
    # The segments the route's pattern matched ({param}s count, a trailing {*rest} does not).
    pattern_path = _PARAM.sub("", route_path).rstrip("/")
    segments = pattern_path.count("/")

    def by_prefix(path: str) -> str:
        pos = 0
        for _ in range(segments):
            pos = path.find("/", pos + 1)
            if pos < 0:
                pos = len(path)
                break
        return prefix + path[pos:] or "/"

    return by_prefix


def _query_editor(add: Mapping[str, str], remove: tuple[str, ...]) -> Callable[[str], str]:
    names = frozenset(remove) | frozenset(add)
    added = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in add.items()]

    def edit(query: str) -> str:
        kept = (
            [p for p in query.split("&") if p and unquote_plus(p.partition("=")[0]) not in names]
            if query
            else []
        )
        return "&".join(kept + added)

    return edit


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class JsonEdit:
    """Add/remove fields of a JSON object (top-level names or JSON Pointers); anything that
    is not a JSON object is left as it was."""

    __slots__ = ("_add", "_remove", "max_size")

    def __init__(self, config: JsonBodyTransform) -> None:
        self._add = tuple((jsonpointer.parse(key), value) for key, value in config.add.items())
        self._remove = tuple(jsonpointer.parse(key) for key in config.remove)
        self.max_size = config.max_size

    def applies(self, content_type: str | None, encoding: str | None, size: int | None) -> bool:
        return (
            size is not None
            and 0 < size <= self.max_size
            and not encoding
            and _is_json(content_type)
        )

    def __call__(self, body: bytes) -> bytes | None:
        """The edited body, or None when it is not a JSON object (then it passes untouched)."""
        try:
            data: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        for tokens in self._remove:
            jsonpointer.remove(data, tokens)
        for tokens, value in self._add:
            jsonpointer.add(data, tokens, value)
        return orjson.dumps(data)


class Transform:
    name: ClassVar[str] = "transform"

    __slots__ = (
        "_add",
        "_drop",
        "_max_body_size",
        "_query",
        "_renames",
        "_request_json",
        "_response_add",
        "_response_drop",
        "_response_json",
        "_response_renames",
        "_rewrite",
        "_static_add",
        "_status_map",
    )

    def __init__(self, config: Transformations, route: RouteConfig, *, max_body_size: int) -> None:
        constants = {"route": route.label, "upstream": route.upstream}
        request, response = config.request, config.response
        self._max_body_size = max_body_size
        self._drop: frozenset[str] = frozenset()
        self._add: tuple[tuple[str, Template], ...] = ()
        self._static_add: tuple[tuple[str, str], ...] | None = None
        self._renames: tuple[tuple[str, str], ...] = ()
        self._rewrite: Callable[[str], str] | None = None
        self._query: Callable[[str], str] | None = None
        self._request_json: JsonEdit | None = None
        if request is not None:
            self._renames = tuple(request.rename_headers.items())
            self._drop = frozenset(
                n.lower()
                for n in (*request.remove_headers, *request.add_headers, *request.rename_headers,
                          *request.rename_headers.values())
            )  # fmt: skip
            self._add = tuple(
                (name, compile_template(value, constants, REQUEST_VARIABLES))
                for name, value in request.add_headers.items()
            )
            if all(t.constant is not None for _, t in self._add):
                self._static_add = tuple((n, t.constant or "") for n, t in self._add)
            if request.rewrite is not None:
                self._rewrite = compile_rewrite(request.rewrite, route.path)
            if request.add_query or request.remove_query:
                self._query = _query_editor(request.add_query, request.remove_query)
            if request.json_body is not None:
                self._request_json = JsonEdit(request.json_body)
        self._response_drop: frozenset[str] = frozenset()
        self._response_add: tuple[tuple[str, Template], ...] = ()
        self._status_map: Mapping[int, int] = {}
        self._response_json: JsonEdit | None = None
        self._response_renames: Mapping[str, str] = {}
        if response is not None:
            # A renamed header keeps its place (renamed in the hook); an upstream header that
            # already has the new name is replaced.
            self._response_drop = frozenset(
                n.lower()
                for n in (*response.remove_headers, *response.add_headers,
                          *response.rename_headers.values())
            )  # fmt: skip
            self._response_add = tuple(
                (name, compile_template(value, {"route": route.label}))
                for name, value in response.add_headers.items()
            )
            self._status_map = dict(response.status_map)
            if response.json_body is not None:
                self._response_json = JsonEdit(response.json_body)
            self._response_renames = {o.lower(): n for o, n in response.rename_headers.items()}

    async def __call__(self, ctx: RequestContext, call_next: Next) -> web.StreamResponse:
        if self._drop:
            self._request_headers(ctx)
        if self._rewrite is not None:
            ctx.upstream_path = self._rewrite(ctx.path)
        if self._query is not None:
            ctx.query = self._query(ctx.query)
        if self._request_json is not None:
            await self._request_body(ctx, self._request_json)
        if self._response_drop:
            drop = ctx.response_drop
            ctx.response_drop = drop | self._response_drop if drop else self._response_drop
        if self._response_add or self._status_map or self._response_renames:
            ctx.response_edits = (*ctx.response_edits, self._edit_response)
        response = await call_next(ctx)
        if self._response_json is not None:
            self._response_body(ctx, response, self._response_json)
        return response

    # -- request ---------------------------------------------------------------------------
    def _request_headers(self, ctx: RequestContext) -> None:
        drop = ctx.upstream_drop
        ctx.upstream_drop = drop | self._drop if drop else self._drop
        if ctx.upstream_add:
            # What auth adds (a rewritten Cookie, forwarded claims) obeys remove_headers too.
            ctx.upstream_add = tuple(h for h in ctx.upstream_add if h[0].lower() not in self._drop)
        added: list[tuple[str, str]] = []
        if self._renames:
            incoming = ctx.request.headers
            for old, new in self._renames:
                added.extend((new, value) for value in incoming.getall(old, ()))
        if self._static_add is not None:
            added.extend(self._static_add)
        else:
            added.extend((name, template.render(ctx)) for name, template in self._add)
        if added:
            ctx.upstream_add = (*ctx.upstream_add, *added)

    async def _request_body(self, ctx: RequestContext, edit: JsonEdit) -> None:
        request = ctx.request
        headers = request.headers
        length = request.content_length
        if (
            not request.body_exists
            or length is None
            or length > self._max_body_size  # the proxy answers 413
            or not edit.applies(
                headers.get(hdrs.CONTENT_TYPE), headers.get(hdrs.CONTENT_ENCODING), length
            )
        ):
            return
        await answer_expectation(request)  # the client may be waiting to send the body
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            # Only if aiohttp's own cap (client_max_size, set to max_body_size by the server)
            # is below the declared length: the client's answer is a 413, never a 500.
            raise PayloadTooLarge(
                f"request body of {length} bytes exceeds the limit of {self._max_body_size} bytes"
            ) from None
        ctx.bytes_in = len(body)
        edited = edit(body)
        ctx.upstream_body = edited if edited is not None else body

    # -- response --------------------------------------------------------------------------
    def _edit_response(
        self, ctx: RequestContext, status: int, headers: list[tuple[str, str]]
    ) -> int:
        if self._response_renames:
            self._rename_response(ctx, headers)
        for name, template in self._response_add:
            headers.append((name, template.render(ctx)))
        return self._status_map.get(status, status)

    def _rename_response(self, ctx: RequestContext, headers: list[tuple[str, str]]) -> None:
        renames = self._response_renames
        for index, (name, value) in enumerate(headers):
            new = renames.get(name.lower())
            if new is not None:
                headers[index] = (new, value)

    @staticmethod
    def _response_body(ctx: RequestContext, response: web.StreamResponse, edit: JsonEdit) -> None:
        # Only a whole (not yet sent) upstream body: the proxy reads bodies up to 64 KiB whole.
        if response.prepared or ctx.method == "HEAD":
            return
        if isinstance(response, WireResponse):
            body = response.body
            content_type = response.header(hdrs.CONTENT_TYPE)
            content_encoding = response.header(hdrs.CONTENT_ENCODING)
        elif isinstance(response, web.Response) and isinstance(response.body, bytes):
            body = response.body
            content_type = response.headers.get(hdrs.CONTENT_TYPE)
            content_encoding = response.headers.get(hdrs.CONTENT_ENCODING)
        else:
            return
        if not edit.applies(content_type, content_encoding, len(body)):
            return
        edited = edit(body)
        if edited is not None:
            response.body = edited
            ctx.bytes_out = len(edited)


def for_route(route: RouteConfig, services: Services) -> Transform | None:
    transform = route.transformations
    if transform is None or not (transform.request or transform.response):
        return None
    return Transform(transform, route, max_body_size=services.config.server.max_body_size)
