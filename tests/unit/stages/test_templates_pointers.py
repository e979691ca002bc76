"""`${claims.NAME}`, `${header.NAME}`, `${query.NAME}` templates and JSON Pointer body edits."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from aiogate import jsonpointer
from aiogate.config import JsonBodyTransform
from aiogate.context import RequestContext
from aiogate.stages.transform import JsonEdit, compile_template
from aiogate.template import TemplateError, Var, parse


def context(target: str = "/v1/x", headers: list[tuple[str, str]] | None = None,
            claims: dict[str, Any] | None = None) -> RequestContext:  # fmt: skip
    request = make_mocked_request("GET", target, headers=CIMultiDict(headers or []))
    return RequestContext(
        request=request, request_id="rid-1", method="GET", path=target.partition("?")[0],
        query=target.partition("?")[2], client_ip="192.0.2.1", forwarded_for="192.0.2.1",
        started=0.0, claims=claims or {},
    )  # fmt: skip


# -- parsing -------------------------------------------------------------------------------


def test_parse_namespaced_variables() -> None:
    assert parse("u=${claims.sub};v=${header.X-Version}&${query.page}") == (
        "u=",
        Var("claims", "sub"),
        ";v=",
        Var("header", "X-Version"),
        "&",
        Var("query", "page"),
    )
    # A claim name may be a URI, as namespaced claims often are.
    assert parse("${claims.https://example.com/roles}") == (
        Var("claims", "https://example.com/roles"),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${foo}", "unknown variable \\$\\{foo\\}"),
        ("${claim.sub}", "unknown variable \\$\\{claim.sub\\}"),
        ("${tls_subject}", "unknown variable"),
        ("${claims.}", "needs a name"),
        ("${claims. sub}", "needs a name"),
        ("${header.X Version}", "not a valid header name"),
        ("${header.X:Y}", "not a valid header name"),
        ("${latency x}", "unknown variable"),
        ("a ${claims.sub", "not closed"),
        ("${claims.sub{x}", "not closed"),
        ("${backend}", "only in response headers"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    allowed = frozenset({"latency", "route"})
    with pytest.raises(TemplateError, match=message):
        parse(text, allowed)


def test_other_dollar_text_stays_literal() -> None:
    assert parse("${HOME} $x ${ ${1}") == ("${HOME} $x ${ ${1}",)


# -- rendering -----------------------------------------------------------------------------


def test_claims_render_strings_and_numbers_only() -> None:
    ctx = context(claims={"sub": "alice", "n": 42, "f": 1.5, "ok": True, "l": ["a"], "o": {}})
    assert compile_template("${claims.sub}/${claims.n}/${claims.f}").render(ctx) == "alice/42/1.5"
    for name in ("ok", "l", "o", "missing"):
        assert compile_template(f"[${{claims.{name}}}]").render(ctx) == "[]"


def test_claims_cannot_split_a_header() -> None:
    ctx = context(claims={"sub": "bob\r\nX-Evil: 1\x00\ud800"})
    assert compile_template("${claims.sub}").render(ctx) == "bobX-Evil: 1"


def test_header_and_query_values() -> None:
    ctx = context(
        "/v1/x?page=2&q=a%0D%0AX-Evil:%201&page=3&sp=a+b",
        headers=[("X-Version", "2"), ("X-Multi", "a"), ("x-multi", "b")],
    )

    def render(text: str) -> str:
        return compile_template(text).render(ctx)

    assert render("${header.x-version}") == "2"  # names are case-insensitive
    assert render("${header.X-Multi}") == "a, b"
    assert render("${header.X-Missing}") == ""
    assert render("${query.page}") == "2"  # the first value
    assert render("${query.q}") == "aX-Evil: 1"  # decoded, then control characters removed
    assert render("${query.sp}") == "a b"
    assert render("${query.none}") == ""


# -- JSON Pointer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "tokens"),
    [
        ("plain", ("plain",)),
        ("a/b", ("a/b",)),  # no leading '/': one top-level field
        ("/meta/source", ("meta", "source")),
        ("/a~1b/c~0d", ("a/b", "c~d")),
        ("/~01", ("~1",)),  # ~1 is decoded before ~0
        ("/", ("",)),
    ],
)
def test_pointer_parse(key: str, tokens: tuple[str, ...]) -> None:
    assert jsonpointer.parse(key) == tokens


def test_pointer_bad_escape() -> None:
    with pytest.raises(jsonpointer.PointerError):
        jsonpointer.parse("/a~2")
    with pytest.raises(jsonpointer.PointerError):
        jsonpointer.parse("/a~")


def edit(add: dict[str, Any] | None = None, remove: list[str] | None = None,
         body: Any = None) -> Any:  # fmt: skip
    config = JsonBodyTransform.model_validate({"add": add or {}, "remove": remove or []})
    out = JsonEdit(config)(orjson.dumps(body))
    return None if out is None else orjson.loads(out)


def test_pointer_add_creates_missing_objects() -> None:
    assert edit({"/meta/source": "gw", "top": 1}, body={"a": 1}) == {
        "a": 1,
        "meta": {"source": "gw"},
        "top": 1,
    }
    assert edit({"/meta/source": "gw"}, body={"meta": {"x": 1}}) == {
        "meta": {"x": 1, "source": "gw"}
    }
    assert edit({"/a~1b": 1}, body={}) == {"a/b": 1}


def test_pointer_add_into_arrays() -> None:
    body = {"items": [{"id": 1}, {"id": 2}]}
    assert edit({"/items/1/tag": "x"}, body=body)["items"][1] == {"id": 2, "tag": "x"}
    assert edit({"/items/0": "first"}, body=body)["items"] == ["first", {"id": 2}]
    assert edit({"/items/-": 3}, body=body)["items"][-1] == 3
    # Out of range or not an index: nothing happens.
    assert edit({"/items/5": 3}, body=body) == body
    assert edit({"/items/01": 3}, body=body) == body
    assert edit({"/items/x/y": 3}, body=body) == body


def test_pointer_add_through_a_scalar_is_skipped() -> None:
    assert edit({"/a/b": 1}, body={"a": "text"}) == {"a": "text"}
    assert edit({"/a/b": 1}, body={"a": None}) == {"a": None}


def test_pointer_remove() -> None:
    body = {"meta": {"secret": 1, "keep": 2}, "items": [1, 2, 3], "x": 1}
    assert edit(remove=["/meta/secret", "/items/0", "/missing/deep", "x"], body=body) == {
        "meta": {"keep": 2},
        "items": [2, 3],
    }


def test_added_values_are_copies_of_the_config() -> None:
    config = JsonBodyTransform.model_validate({"add": {"meta": {}, "/meta/n": 1}})
    json_edit = JsonEdit(config)
    first = orjson.loads(json_edit(b"{}") or b"")
    assert first == {"meta": {"n": 1}}
    # The configured `meta: {}` must not have kept the first request's `n`.
    config2 = JsonBodyTransform.model_validate({"add": {"meta": {}}})
    assert config.add["meta"] == {}
    assert config2.add["meta"] == {}
    assert orjson.loads(json_edit(b'{"a": 1}') or b"") == {"a": 1, "meta": {"n": 1}}
