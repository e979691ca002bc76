from __future__ import annotations

import pytest

from aiogate.router import Match, NoMatch, RoutePatternError, Router

Methods = frozenset[str] | None
ANY: Methods = None


def m(*methods: str) -> frozenset[str]:
    return frozenset(methods)


def router(*routes: tuple[str, Methods]) -> Router[str]:
    """A router whose target is the pattern itself, which keeps assertions readable."""
    return Router((pattern, methods, pattern) for pattern, methods in routes)


def target(r: Router[str], path: str, method: str = "GET") -> str | None:
    result = r.match(method, path)
    return result.target if isinstance(result, Match) else None


def matched(r: Router[str], path: str, method: str = "GET") -> Match[str]:
    result = r.match(method, path)
    assert isinstance(result, Match), result
    return result


# -- prefix matching on whole segments ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/users", "/api/users"),
        ("/api/users/", "/api/users"),
        ("/api/users/42", "/api/users"),
        ("/api/users/42/orders/", "/api/users"),
        ("/api/usersx", None),
        ("/api/user", None),
        ("/api", None),
        ("/api/", None),
        ("/", None),
        ("/API/users", None),
        ("/other/api/users", None),
    ],
)
def test_static_pattern_matches_whole_segments_as_prefix(path: str, expected: str | None) -> None:
    assert target(router(("/api/users", ANY)), path) == expected


def test_trailing_slash_in_pattern_is_insignificant() -> None:
    r = router(("/api/users/", ANY))
    assert target(r, "/api/users") == "/api/users/"
    assert target(r, "/api/users/1") == "/api/users/"
    assert target(r, "/api/usersx") is None


@pytest.mark.parametrize("path", ["/", "/x", "/x/y/z/", "/api/usersx"])
def test_root_route_matches_everything(path: str) -> None:
    r = router(("/", ANY), ("/api/users", ANY))
    assert target(r, path) == "/"


def test_root_route_loses_to_any_other_match() -> None:
    r = router(("/", ANY), ("/api/users", ANY))
    assert target(r, "/api/users/7") == "/api/users"


def test_no_routes_is_404() -> None:
    assert Router[str]([]).match("GET", "/") == NoMatch(frozenset())


def test_path_without_leading_slash_never_matches() -> None:
    assert router(("/", ANY)).match("OPTIONS", "*") == NoMatch(frozenset())


# -- parameters ----------------------------------------------------------------------------


def test_param_captures_one_segment_and_matches_as_prefix() -> None:
    r = router(("/u/{id}", ANY))
    assert matched(r, "/u/7").params == {"id": "7"}
    assert matched(r, "/u/7/").params == {"id": "7"}
    result = matched(r, "/u/7/orders")
    assert result.params == {"id": "7"}
    assert result.pattern == "/u/{id}"
    # A param needs a non-empty segment.
    assert target(r, "/u") is None
    assert target(r, "/u/") is None


def test_param_capture_stays_percent_encoded() -> None:
    r = router(("/files/{name}", ANY))
    assert matched(r, "/files/a%2Fb%20c").params == {"name": "a%2Fb%20c"}


def test_several_params() -> None:
    r = router(("/orgs/{org}/repos/{repo}", ANY))
    assert matched(r, "/orgs/acme/repos/gw/issues").params == {"org": "acme", "repo": "gw"}
    assert target(r, "/orgs/acme/repos") is None


@pytest.mark.parametrize(
    ("path", "rest"),
    [
        ("/static", ""),
        ("/static/", ""),
        ("/static/a", "a"),
        ("/static/a/b/c.css", "a/b/c.css"),
        ("/static/a/b/", "a/b/"),
        ("/static/a%2Fb", "a%2Fb"),
    ],
)
def test_catch_all_captures_the_rest(path: str, rest: str) -> None:
    r = router(("/static/{*path}", ANY))
    assert matched(r, path).params == {"path": rest}


def test_catch_all_with_params_before_it() -> None:
    r = router(("/u/{id}/files/{*rest}", ANY))
    assert matched(r, "/u/3/files/x/y").params == {"id": "3", "rest": "x/y"}


def test_root_catch_all() -> None:
    r = router(("/{*all}", ANY))
    assert matched(r, "/").params == {"all": ""}
    assert matched(r, "/a/b").params == {"all": "a/b"}


def test_static_route_params_are_empty_and_read_only() -> None:
    result = matched(router(("/a", ANY)), "/a/b")
    assert result.params == {}
    with pytest.raises(TypeError):
        result.params["x"] = "y"  # type: ignore[index]


def test_params_are_not_shared_between_matches() -> None:
    r = router(("/u/{id}", ANY))
    first = matched(r, "/u/1")
    second = matched(r, "/u/2")
    assert first.params == {"id": "1"}
    assert second.params == {"id": "2"}


# -- specificity ---------------------------------------------------------------------------

SPECIFICITY = router(
    ("/", ANY),
    ("/api", ANY),
    ("/api/{*rest}", ANY),
    ("/api/{version}", ANY),
    ("/api/{version}/users", ANY),
    ("/api/v1", ANY),
    ("/api/v1/users", ANY),
    ("/api/v1/{thing}/x", ANY),
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/"),
        ("/other", "/"),
        ("/apix", "/"),
        # On its own path the exact pattern wins; with anything after it `{*rest}` (one more
        # segment) beats the bare prefix `/api`.
        ("/api", "/api"),
        ("/api/", "/api/{*rest}"),
        # static over param over catch-all
        ("/api/v1", "/api/v1"),
        ("/api/v2", "/api/{version}"),
        ("/api/v1/users", "/api/v1/users"),
        ("/api/v2/users", "/api/{version}/users"),
        # longer over shorter
        ("/api/v1/users/9", "/api/v1/users"),
        ("/api/v2/users/9", "/api/{version}/users"),
        ("/api/v2/teams", "/api/{version}"),
        # An earlier static segment wins even over a longer pattern with a param there.
        ("/api/v1/orders", "/api/v1"),
        ("/api/v1/orders/x", "/api/v1/{thing}/x"),
        # Backtracking: the static branch `/api/v1/users` does not reach `/x`, a param does.
        ("/api/v1/users/x", "/api/v1/users"),
    ],
)
def test_specificity(path: str, expected: str) -> None:
    assert target(SPECIFICITY, path) == expected


def test_backtracks_from_static_to_param_branch() -> None:
    r = router(("/a/b/c", ANY), ("/a/{x}/d", ANY))
    assert target(r, "/a/b/c") == "/a/b/c"
    assert matched(r, "/a/b/d").params == {"x": "b"}
    assert target(r, "/a/b") is None


def test_static_beats_param_at_the_first_difference_regardless_of_length() -> None:
    r = router(("/a/{x}/c/d/e", ANY), ("/a/b", ANY))
    assert target(r, "/a/b/c/d/e") == "/a/b"
    assert target(r, "/a/z/c/d/e") == "/a/{x}/c/d/e"


def test_param_beats_catch_all() -> None:
    r = router(("/a/{*rest}", ANY), ("/a/{x}", ANY))
    assert target(r, "/a/b/c") == "/a/{x}"
    assert target(r, "/a") == "/a/{*rest}"


def test_route_order_does_not_matter() -> None:
    routes = [("/", ANY), ("/a/{x}", ANY), ("/a/b", ANY), ("/a/{*r}", ANY)]
    forward = router(*routes)
    backward = router(*reversed(routes))
    for path in ["/", "/a", "/a/b", "/a/c", "/a/b/c", "/z"]:
        assert target(forward, path) == target(backward, path), path


# -- methods: 404, 405, HEAD, fallback -----------------------------------------------------


def test_method_not_allowed_lists_allowed_methods() -> None:
    r = router(("/api/users", m("GET", "POST")))
    assert r.match("DELETE", "/api/users/1") == NoMatch(m("GET", "HEAD", "POST"))


def test_no_route_is_404_even_when_other_paths_have_routes() -> None:
    r = router(("/api/users", m("GET")))
    assert r.match("GET", "/api/usersx") == NoMatch(frozenset())
    assert r.match("DELETE", "/nope") == NoMatch(frozenset())


def test_head_is_served_by_get() -> None:
    r = router(("/a", m("GET")))
    assert target(r, "/a", "HEAD") == "/a"
    assert r.match("POST", "/a") == NoMatch(m("GET", "HEAD"))


def test_head_is_not_implied_without_get() -> None:
    r = router(("/a", m("POST")))
    assert r.match("HEAD", "/a") == NoMatch(m("POST"))


def test_explicit_head_route_beats_get_route_of_the_same_pattern() -> None:
    r = Router([("/a", m("GET"), "get"), ("/a", m("HEAD"), "head")])
    assert target(r, "/a", "GET") == "get"
    assert target(r, "/a", "HEAD") == "head"


def test_same_pattern_with_disjoint_methods_selects_by_method() -> None:
    r = Router([("/a", m("GET"), "read"), ("/a/", m("POST", "PUT"), "write")])
    assert target(r, "/a", "GET") == "read"
    assert target(r, "/a/x", "PUT") == "write"
    assert r.match("DELETE", "/a") == NoMatch(m("GET", "HEAD", "POST", "PUT"))


def test_no_fall_through_to_a_less_specific_route_on_a_method_mismatch() -> None:
    # The most specific pattern is "the route found": a method it does not allow is a 405,
    # never a silent detour to `/api`'s upstream past `/api/users`' method restriction.
    r = router(("/api", m("GET", "POST")), ("/api/users", m("GET")))
    assert target(r, "/api/users", "GET") == "/api/users"
    assert r.match("POST", "/api/users") == NoMatch(m("GET", "HEAD"))
    assert target(r, "/api/other", "POST") == "/api"


def test_the_most_specific_pattern_decides_across_branches() -> None:
    r = router(
        ("/a/b", m("GET")),
        ("/a/{x}", m("POST")),
        ("/a/{*rest}", m("PUT")),
        ("/", m("PATCH")),
    )
    assert target(r, "/a/b", "GET") == "/a/b"
    assert r.match("POST", "/a/b") == NoMatch(m("GET", "HEAD"))
    assert matched(r, "/a/c", "POST").params == {"x": "c"}
    # `/a/{x}` is a prefix pattern and a param beats a catch-all: `/a/{*rest}` only gets `/a/`.
    assert r.match("PUT", "/a/c/d") == NoMatch(m("POST"))
    assert matched(r, "/a/", "PUT").params == {"rest": ""}
    assert r.match("PATCH", "/a/b/c") == NoMatch(m("GET", "HEAD"))
    assert r.match("DELETE", "/z") == NoMatch(m("PATCH"))


def test_exact_static_route_beats_catch_all_on_its_own_path() -> None:
    r = router(("/assets", m("GET")), ("/assets/{*rest}", m("GET")))
    assert target(r, "/assets", "GET") == "/assets"
    assert matched(r, "/assets/css/a.css", "GET").params == {"rest": "css/a.css"}
    assert matched(r, "/assets/", "GET").params == {"rest": ""}


def test_route_without_methods_allows_every_method() -> None:
    r = router(("/a", ANY))
    for method in ["GET", "HEAD", "POST", "PURGE", "BREW"]:
        assert target(r, "/a", method) == "/a"


def test_methods_are_case_sensitive() -> None:
    r = router(("/a", m("GET")))
    assert r.match("get", "/a") == NoMatch(m("GET", "HEAD"))


def test_static_match_is_reused() -> None:
    r = router(("/a", ANY))
    assert r.match("GET", "/a") is r.match("POST", "/a/b")


# -- pattern validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "api",
        "{id}",
        "/a//b",
        "//",
        "/a/{*rest}/b",
        "/{*rest}/{*more}",
        "/{}",
        "/{*}",
        "/{1abc}",
        "/{a-b}",
        "/{a b}",
        "/{na\u00efve}",
        "/{id}/{id}",
        "/{id}/{*id}",
        "/{",
        "/a{",
        "/a}",
        "/{id",
        "/id}",
        "/{id}x",
        "/x{id}",
        "/{a/b}",
        "/{{id}}",
        "/a/./b",
        "/a/../b",
        "/a/%2e%2e",
        "/a%zz",
        "/a%00",
        "/a?b",
        "/a#b",
    ],
)
def test_bad_patterns_are_rejected(pattern: str) -> None:
    with pytest.raises(RoutePatternError):
        router((pattern, ANY))


def test_pattern_error_is_a_value_error_naming_the_pattern() -> None:
    with pytest.raises(ValueError, match=r"/a/\{\*rest\}/b"):
        router(("/a/{*rest}/b", ANY))


def test_empty_method_set_is_rejected() -> None:
    with pytest.raises(RoutePatternError):
        router(("/a", frozenset()))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("/a", ANY), ("/a", ANY)),
        (("/a", ANY), ("/a", m("GET"))),
        (("/a", m("GET")), ("/a", ANY)),
        (("/a", m("GET", "POST")), ("/a", m("POST"))),
        (("/a", m("GET")), ("/a/", m("GET"))),
        (("/", ANY), ("/", ANY)),
        (("/u/{id}", m("GET")), ("/u/{user}", m("GET"))),
        (("/s/{*p}", ANY), ("/s/{*q}/", ANY)),
        (("/a%7e", ANY), ("/a~", ANY)),
    ],
)
def test_identical_patterns_with_overlapping_methods_are_rejected(
    first: tuple[str, Methods], second: tuple[str, Methods]
) -> None:
    with pytest.raises(RoutePatternError, match="overlapping methods"):
        router(first, second)


def test_similar_but_different_patterns_coexist() -> None:
    r = router(("/a", ANY), ("/a/{*rest}", ANY), ("/a/{x}", ANY), ("/a/x", ANY))
    assert target(r, "/a/x") == "/a/x"


# -- static segments are compared in normalised form ---------------------------------------


def test_static_segments_are_normalised_like_request_paths() -> None:
    r = router(("/%7euser/caf%c3%a9", ANY))
    assert target(r, "/~user/caf%C3%A9") == "/%7euser/caf%c3%a9"


def test_non_ascii_and_space_in_pattern_are_percent_encoded() -> None:
    r = router(("/café/my file", ANY))
    assert target(r, "/caf%C3%A9/my%20file") == "/café/my file"


@pytest.mark.parametrize("pattern", ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a\\b"])
def test_encoded_slash_or_backslash_in_pattern_is_refused(pattern: str) -> None:
    # No request path keeps one (server.escaped_slashes refuses or unescapes it), so such a
    # route could never match: a config error instead of a dead route.
    with pytest.raises(RoutePatternError, match="encoded slash or backslash"):
        router((pattern, ANY))


def test_semicolon_in_pattern_matches_under_path_parameters_allow() -> None:
    r = router(("/a;b", ANY))
    assert target(r, "/a;b/c") == "/a;b"


def test_generic_target_type() -> None:
    r: Router[int] = Router([("/a", None, 1), ("/b", m("GET"), 2)])
    result = r.match("GET", "/b")
    assert isinstance(result, Match)
    assert result.target == 2
