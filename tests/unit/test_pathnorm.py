from __future__ import annotations

import re

import pytest

from aiogate.pathnorm import ALLOW_PATH_PARAMETERS, UNESCAPE_SLASHES, InvalidPath, normalize_path

_FLAG_SETS = [0, UNESCAPE_SLASHES, ALLOW_PATH_PARAMETERS, UNESCAPE_SLASHES | ALLOW_PATH_PARAMETERS]
# What `escaped_slashes: reject` refuses: an encoded slash or backslash, a raw backslash.
_SLASH_SPELLINGS = re.compile(r"%2[fF]|%5[cC]|\\")


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api/users",
        "/api/users/",
        "/api/users/42",
        "/v1/users.json",
        "/a/.well-known/x",
        "/~user/file_1-2",
        "/a%3Bb",
    ],
)
def test_already_normal_path_is_returned_as_is(path: str) -> None:
    assert normalize_path(path) == path


def test_fast_path_returns_the_same_object() -> None:
    path = "/api/users/42"
    assert normalize_path(path) is path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Traversal shapes: decoding happens before dot segments are resolved.
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("/public/.%2e/admin", "/admin"),
        ("/public/%2e./admin", "/admin"),
        ("/public/%2e/admin", "/public/admin"),
        ("/%2e%2e/", "/"),
        ("/%2e%2e", "/"),
        ("/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd"),
    ],
)
def test_traversal_shapes(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/./b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/../", "/a/"),
        ("/..", "/"),
        ("/.", "/"),
        ("/../../etc", "/etc"),
        ("/a/../../b", "/b"),
        ("/a/b/c/../../d", "/a/d"),
        ("/.a/..b/...", "/.a/..b/..."),
        ("/a/.../b", "/a/.../b"),
    ],
)
def test_dot_segments(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("//", "/"),
        ("///", "/"),
        ("//a", "/a"),
        ("/a//b", "/a/b"),
        ("/a///b//", "/a/b/"),
        ("/a//../b", "/b"),
        ("//..//a", "/a"),
    ],
)
def test_repeated_slashes_are_merged(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/%41%62%7a", "/Abz"),
        ("/%30%39", "/09"),
        ("/%2D%2E%5F%7E", "/-._~"),
        ("/%7e/x", "/~/x"),
        ("/a%20b", "/a%20b"),
        ("/a%3bb", "/a%3Bb"),
        ("/%c3%a9", "/%C3%A9"),
        ("/%25", "/%25"),
        ("/%2541", "/%2541"),
        ("/%3f%23", "/%3F%23"),
        ("/%0a", "/%0A"),
        ("/%7f", "/%7F"),
        ("/%ff", "/%FF"),
    ],
)
def test_percent_encoding(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a/b",
        "*",
        "%2F",
        "http://example.com/",
        "/%zz",
        "/%4",
        "/a%",
        "/%%41",
        "/%g1",
        "/%00",
        "/a%00b",
        "/a\x00b",
        "/a\nb",
        "/a\rb",
        "/a\tb",
        "/a\x7fb",
        "/a b",
        "/caf\u00e9",
        "/\u2215etc",
        "/a?b",
        "/a#b",
    ],
)
def test_invalid_paths_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidPath):
        normalize_path(raw)


def test_invalid_path_messages_do_not_echo_the_input() -> None:
    with pytest.raises(InvalidPath) as info:
        normalize_path("/<script>%zz")
    assert "<script>" not in str(info.value)
    assert isinstance(info.value, ValueError)


_CORPUS = [
    "/",
    "//",
    "/a",
    "/a/",
    "/a/b/c",
    "/a/./b",
    "/a/../b",
    "/a/b/..",
    "/a/b/.",
    "/..",
    "/../..",
    "/./.",
    "/%2e",
    "/%2e%2e",
    "/.%2e/",
    "/%2e%2E/%2E%2e/x",
    "/a%2f..%2fb",
    "/a%2F%2e%2e",
    "/%2e%2e%2f",
    "/%252e%252e/",
    "/..;/",
    "/a\\..\\b",
    "/%41%42/%63",
    "/%c3%a9/%7e",
    "/x//y///z",
    "/x/.//../y",
    "/.../....",
    "/a/b/c/../../../../..",
]
_SUFFIXES = ["", "/", "/.", "/..", "//", "/%2e", "/%2E%2e/", "/q"]


@pytest.mark.parametrize("flags", _FLAG_SETS)
def test_normalisation_is_idempotent_and_leaves_no_dot_segment(flags: int) -> None:
    checked = refused = 0
    for base in _CORPUS:
        for suffix in _SUFFIXES:
            for prefix in ("", "/p", "/p/%2e%2e"):
                raw = prefix + base + suffix
                try:
                    once = normalize_path(raw, flags)
                except InvalidPath:
                    # Only the spellings the flags refuse may be refused.
                    slash = not flags & UNESCAPE_SLASHES and _SLASH_SPELLINGS.search(raw)
                    assert slash or (not flags & ALLOW_PATH_PARAMETERS and ";" in raw), raw
                    refused += 1
                    continue
                assert normalize_path(once, flags) == once, raw
                assert once.startswith("/"), raw
                assert "//" not in once, raw
                segments = once.split("/")[1:]
                assert "." not in segments, raw
                assert ".." not in segments, raw
                if flags & UNESCAPE_SLASHES:
                    assert not _SLASH_SPELLINGS.search(once), raw
                checked += 1
    assert checked + refused == len(_CORPUS) * len(_SUFFIXES) * 3
    assert checked > refused


# -- encoded slashes, backslashes and path parameters (server.escaped_slashes/path_parameters) -

# Every way of smuggling a separator past the router that the attack run found. Under
# `unescape` each one is the protected /admin, so it must be routed (and forwarded) as /admin.
_SLASH_ATTACKS = [
    "/public/..%2Fadmin",
    "/public/..%2fadmin",
    "/public/%2e%2e%2fadmin",
    "/public/%2E%2E%2Fadmin",
    "/public/.%2E%2fadmin",
    "/public/..%5cadmin",
    "/public/..%5Cadmin",
    "/public/..\\admin",
    "/public\\..\\admin",
    "/public/%2e%2e%5Cadmin",
    "/public%2F..%2Fadmin",
]


@pytest.mark.parametrize("raw", _SLASH_ATTACKS)
@pytest.mark.parametrize("flags", [0, ALLOW_PATH_PARAMETERS])
def test_encoded_slash_or_backslash_is_refused_by_default(raw: str, flags: int) -> None:
    with pytest.raises(InvalidPath, match="encoded slash or backslash"):
        normalize_path(raw, flags)


@pytest.mark.parametrize("raw", _SLASH_ATTACKS)
def test_unescape_makes_them_separators_before_dot_segments(raw: str) -> None:
    assert normalize_path(raw, UNESCAPE_SLASHES) == "/admin"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a%2Fb", "/a/b"),
        ("/a%2f%2F%5c\\b", "/a/b"),
        ("/files/x%2Fy/", "/files/x/y/"),
        ("/%2F..%2F..%2Fetc%2Fpasswd", "/etc/passwd"),
        ("/a%2F.", "/a/"),
        ("/a\\b%20c", "/a/b%20c"),
    ],
)
def test_unescape_spellings(raw: str, expected: str) -> None:
    assert normalize_path(raw, UNESCAPE_SLASHES) == expected


@pytest.mark.parametrize("flags", _FLAG_SETS)
def test_double_encoding_stays_literal(flags: int) -> None:
    # Upstreams decode once: `%252F` is `%2F` data to them, one segment, in both modes.
    assert normalize_path("/public/..%252Fadmin", flags) == "/public/..%252Fadmin"
    assert normalize_path("/a%255cb%252f", flags) == "/a%255cb%252f"


_PARAMETER_ATTACKS = [
    "/public/..;/admin",
    "/public/%2e%2e;/admin",
    "/admin;x",
    "/admin;jsessionid=x",
    "/public;/x",
    "/a/b;c=d",
    "/;",
]


@pytest.mark.parametrize("raw", _PARAMETER_ATTACKS)
@pytest.mark.parametrize("flags", [0, UNESCAPE_SLASHES])
def test_path_parameters_are_refused_by_default(raw: str, flags: int) -> None:
    with pytest.raises(InvalidPath, match="';'"):
        normalize_path(raw, flags)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # `..;` is an ordinary segment, not a dot segment: kept literally, as before.
        ("/public/..;/admin", "/public/..;/admin"),
        ("/public/%2e%2e;/admin", "/public/..;/admin"),
        ("/admin;x", "/admin;x"),
        ("/admin;jsessionid=x", "/admin;jsessionid=x"),
        ("/a/b;c=d", "/a/b;c=d"),
    ],
)
def test_allow_keeps_path_parameters_literal(raw: str, expected: str) -> None:
    assert normalize_path(raw, ALLOW_PATH_PARAMETERS) == expected


def test_encoded_semicolon_is_data_in_every_mode() -> None:
    for flags in _FLAG_SETS:
        assert normalize_path("/admin%3bx", flags) == "/admin%3Bx"
        assert normalize_path("/public/..%3B/admin", flags) == "/public/..%3B/admin"


def test_both_relaxed_flags_together() -> None:
    both = UNESCAPE_SLASHES | ALLOW_PATH_PARAMETERS
    assert normalize_path("/public/..;%2Fadmin", both) == "/public/..;/admin"
    assert normalize_path("/public/..%2F..;/admin", both) == "/..;/admin"
    # Unescaping does not let a `;` in when parameters are refused.
    with pytest.raises(InvalidPath, match="';'"):
        normalize_path("/public/..%2F..;/admin", UNESCAPE_SLASHES)


@pytest.mark.parametrize("flags", _FLAG_SETS)
def test_fast_path_is_kept_under_every_flag(flags: int) -> None:
    path = "/api/users/42"
    assert normalize_path(path, flags) is path


def test_refusal_messages_do_not_echo_the_input() -> None:
    for raw in ("/<script>%2F", "/<script>;x", "/<script>\\x"):
        with pytest.raises(InvalidPath) as info:
            normalize_path(raw)
        assert "<script>" not in str(info.value)
