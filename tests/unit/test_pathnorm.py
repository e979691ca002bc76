from __future__ import annotations

import pytest

from aiogate.pathnorm import InvalidPath, normalize_path


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api/users",
        "/api/users/",
        "/api/users/42",
        "/v1/users.json",
        "/a/.well-known/x",
        "/a/..;/b",
        "/a/b;c=d",
        "/~user/file_1-2",
        "/a\\b",
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
        # `..;` is an ordinary segment, not a dot segment.
        ("/public/..;/admin", "/public/..;/admin"),
        ("/public/%2e%2e;/admin", "/public/..;/admin"),
        # An encoded slash is not a separator, so `..` inside it is no segment.
        ("/a%2f..%2fb", "/a%2F..%2Fb"),
        ("/a%2F..%2Fb", "/a%2F..%2Fb"),
        ("/a/%2F../b", "/a/%2F../b"),
        # Backslash is an ordinary character.
        ("/public/..\\admin", "/public/..\\admin"),
        ("/a/%5c/b", "/a/%5C/b"),
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
        ("/a%2fb", "/a%2Fb"),
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


def test_normalisation_is_idempotent_and_leaves_no_dot_segment() -> None:
    checked = 0
    for base in _CORPUS:
        for suffix in _SUFFIXES:
            for prefix in ("", "/p", "/p/%2e%2e"):
                raw = prefix + base + suffix
                once = normalize_path(raw)
                assert normalize_path(once) == once, raw
                assert once.startswith("/"), raw
                assert "//" not in once, raw
                segments = once.split("/")[1:]
                assert "." not in segments, raw
                assert ".." not in segments, raw
                checked += 1
    assert checked == len(_CORPUS) * len(_SUFFIXES) * 3
