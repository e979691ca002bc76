"""The transform stage's compiled pieces: templates, rewrites, query and JSON edits."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from aiogate.config import JsonBodyTransform, PathRewrite, RouteConfig, Transformations
from aiogate.context import RequestContext
from aiogate.errors import BadRequest, PayloadTooLarge
from aiogate.stages.transform import JsonEdit, Transform, compile_rewrite, compile_template
from aiogate.template import TemplateError, Var, parse


def context(method: str = "GET", path: str = "/v1/x", headers: dict[str, str] | None = None,
            **fields: Any) -> RequestContext:  # fmt: skip
    request = make_mocked_request(method, path, headers=headers or {})
    return RequestContext(
        request=request, request_id="rid-1", method=method, path=path, query="",
        client_ip="192.0.2.1", forwarded_for="192.0.2.1", started=0.0, **fields,
    )  # fmt: skip


def test_parse_splits_literals_and_variables() -> None:
    assert parse("a ${latency}ms ${route}") == ("a ", Var("latency"), "ms ", Var("route"))
    assert parse("${HOME} and $x") == ("${HOME} and $x",)
    with pytest.raises(TemplateError, match="unknown variable"):
        parse("${nope}")


def test_template_constants_render_without_a_request() -> None:
    template = compile_template("r=${route}/${upstream}", {"route": "users", "upstream": "svc"})
    assert template.constant == "r=users/svc"
    ctx = context(consumer="bob\r\nX-Evil: 1")
    assert compile_template("${consumer}").render(ctx) == "bobX-Evil: 1"
    assert compile_template("${request_id}|${client_ip}").render(ctx) == "rid-1|192.0.2.1"
    latency = compile_template("${latency}").render(ctx)
    assert float(latency) > 0


@pytest.mark.parametrize(
    ("route", "prefix", "path", "expected"),
    [
        ("/v1", "/", "/v1", "/"),
        ("/v1", "/", "/v1/users/42", "/users/42"),
        ("/v1", "/api/v2", "/v1/users", "/api/v2/users"),
        ("/v1", "/api/", "/v1", "/api"),
        ("/", "/x", "/users", "/x/users"),
        ("/a/{id}/b", "/c", "/a/7/b/d", "/c/d"),
        ("/files/{*rest}", "/store", "/files/a/b", "/store/a/b"),
    ],
)
def test_prefix_rewrite(route: str, prefix: str, path: str, expected: str) -> None:
    assert compile_rewrite(PathRewrite(prefix=prefix), route)(path) == expected


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [
        # A prefix is forwarded in canonical form: what the upstream would resolve it to.
        ("/a/./b", "/v1/x", "/a/b/x"),
        ("/a/../b", "/v1/x", "/b/x"),
        ("/%61pi", "/v1/x", "/api/x"),
        ("/x;v=1", "/v1/x", "/x;v=1/x"),
    ],
)
def test_prefix_rewrite_is_canonical(prefix: str, path: str, expected: str) -> None:
    assert compile_rewrite(PathRewrite(prefix=prefix), "/v1")(path) == expected


@pytest.mark.parametrize(
    ("regex", "replacement", "path", "expected"),
    [
        # Groups cut segments apart: the `..` a capture brings is resolved, not forwarded.
        (r"^/a/x(.*)$", r"/b/\1/c", "/a/x..", "/c"),
        (r"^/v1/(.*)$", r"/v2/./\1", "/v1/users", "/v2/users"),
        (r"^/v1(.*)$", r"/v2/\1", "/v1/users", "/v2/users"),
        (r"^/v1/(.*)$", r"/v2/%7e\1", "/v1/u", "/v2/~u"),
    ],
)
def test_regex_rewrite_result_is_canonical(
    regex: str, replacement: str, path: str, expected: str
) -> None:
    rewrite = compile_rewrite(PathRewrite(regex=regex, replacement=replacement), "/")
    assert rewrite(path) == expected


def test_regex_rewrite_never_forwards_an_encoded_slash() -> None:
    # A group completes an escape the literal text began: `%2` + `F` is an encoded slash.
    rewrite = compile_rewrite(PathRewrite(regex=r"^/a/(x%2)5(.*)$", replacement=r"/b/\1F\2"), "/")
    with pytest.raises(BadRequest, match="encoded slash"):
        rewrite("/a/x%25admin")


def test_regex_rewrite() -> None:
    rewrite = compile_rewrite(PathRewrite(regex=r"^/v1/(\w+)", replacement=r"\1/api"), "/v1")
    assert rewrite("/v1/users/42") == "/users/api/42"
    assert rewrite("/other") == "/other"


def test_json_edit_only_touches_objects() -> None:
    edit = JsonEdit(JsonBodyTransform(add={"source": "gw"}, remove=("password",)))
    out = edit(b'{"user": "a", "password": "x"}')
    assert out is not None
    assert orjson.loads(out) == {"user": "a", "source": "gw"}
    assert edit(b"[1, 2]") is None
    assert edit(b"not json") is None
    assert edit.applies("application/json; charset=utf-8", None, 10)
    assert edit.applies("application/problem+json", None, 10)
    assert not edit.applies("text/plain", None, 10)
    assert not edit.applies("application/json", "gzip", 10)
    assert not edit.applies("application/json", None, None)
    assert not edit.applies("application/json", None, 64 * 1024 + 1)


def _stage(config: dict[str, Any], path: str = "/v1") -> Transform:
    route = RouteConfig(path=path, upstream="svc", name="r")
    return Transform(Transformations.model_validate(config), route, max_body_size=1 << 20)


async def test_request_side_sets_what_is_forwarded_only() -> None:
    stage = _stage({"request": {
        "add_headers": {"X-Gateway": "aiogate", "X-Route": "${route}"},
        "remove_headers": ["X-Internal"], "rename_headers": {"X-Old": "X-New"},
        "rewrite": {"prefix": "/"}, "add_query": {"v": "2 3"}, "remove_query": ["debug"],
    }})  # fmt: skip
    ctx = context(headers={"X-Old": "o"})
    ctx.query = "a=1&debug=1&v=9"
    seen: list[RequestContext] = []

    async def terminal(c: RequestContext) -> web.StreamResponse:
        seen.append(c)
        return web.Response(text="ok")

    await stage(ctx, terminal)
    assert ctx.path == "/v1/x"  # routed path untouched (logs, metrics)
    assert ctx.upstream_path == "/x"
    assert ctx.query == "a=1&v=2%203"
    assert {"x-internal", "x-gateway", "x-route", "x-old", "x-new"} <= ctx.upstream_drop
    assert ctx.upstream_add == (("X-New", "o"), ("X-Gateway", "aiogate"), ("X-Route", "r"))
    assert ctx.response_edits == ()  # nothing configured for the response


async def test_remove_headers_applies_to_what_auth_added() -> None:
    """Auth re-adds the client's cookies minus the token's: `remove_headers: [Cookie]` must
    still remove them all (and a transform's own header replaces auth's)."""
    stage = _stage({"request": {"remove_headers": ["Cookie"],
                                "add_headers": {"X-User-Id": "fixed"}}})  # fmt: skip
    ctx = context()
    ctx.upstream_add = (("X-User-Role", "r"), ("Cookie", "a=1"), ("X-User-Id", "alice"))

    async def terminal(c: RequestContext) -> web.StreamResponse:
        return web.Response(text="ok")

    await stage(ctx, terminal)
    assert ctx.upstream_add == (("X-User-Role", "r"), ("X-User-Id", "fixed"))


async def test_response_edit_maps_status_and_adds_headers() -> None:
    stage = _stage({"response": {
        "add_headers": {"X-Up": "${upstream}/${backend}"}, "remove_headers": ["Server"],
        "rename_headers": {"X-A": "X-B"}, "status_map": {502: 503},
        "json_body": {"add": {"gw": True}},
    }})  # fmt: skip
    ctx = context()

    async def terminal(c: RequestContext) -> web.StreamResponse:
        c.upstream, c.backend = "svc", "b1"
        assert len(c.response_edits) == 1
        headers = [("X-A", "1")]
        assert c.response_edits[0](c, 502, headers) == 503
        assert c.response_edits[0](c, 200, []) == 200
        assert headers == [("X-B", "1"), ("X-Up", "svc/b1")]
        return web.Response(body=b'{"a": 1}', content_type="application/json")

    response = await stage(ctx, terminal)
    assert {"server", "x-up", "x-b"} <= ctx.response_drop
    assert isinstance(response, web.Response)
    assert response.body == b'{"a":1,"gw":true}'
    assert ctx.bytes_out == len(response.body)


class _Body:
    """A request payload of one chunk (what BaseRequest.read() needs of a StreamReader)."""

    def __init__(self, data: bytes) -> None:
        self._chunks = [data, b""]

    def set_read_chunk_size(self, size: int) -> None:
        pass

    async def readany(self) -> bytes:
        return self._chunks.pop(0)


async def test_json_body_over_aiohttp_read_cap_is_a_413_not_a_500() -> None:
    # The server sets aiohttp's client_max_size to max_body_size; were it ever lower than a
    # body the stage reads whole, the client must get the contract's 413, never a 500.
    body = orjson.dumps({"blob": "x" * 2000})
    request = make_mocked_request(
        "POST", "/v1/x",
        headers={"Content-Type": "application/json", "Content-Length": str(len(body))},
        payload=_Body(body), client_max_size=1024,  # type: ignore[arg-type]
    )  # fmt: skip
    ctx = RequestContext(
        request=request, request_id="rid-1", method="POST", path="/v1/x", query="",
        client_ip="192.0.2.1", forwarded_for="192.0.2.1", started=0.0,
    )  # fmt: skip
    stage = _stage({"request": {"json_body": {"add": {"gw": True}, "max_size": "1MiB"}}})

    async def terminal(c: RequestContext) -> web.StreamResponse:
        raise AssertionError("not reached")

    with pytest.raises(PayloadTooLarge):
        await stage(ctx, terminal)
