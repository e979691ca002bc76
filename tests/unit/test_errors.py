"""errors: the contract's status codes and the single JSON error renderer."""

from __future__ import annotations

import orjson
import pytest

from aiogate import errors

CONTRACT = [
    (errors.BadRequest, 400),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NoRoute, 404),
    (errors.MethodNotAllowed, 405),
    (errors.RequestTimeout, 408),
    (errors.PayloadTooLarge, 413),
    (errors.TooManyRequests, 429),
    (errors.HeaderFieldsTooLarge, 431),
    (errors.InternalError, 500),
    (errors.BadGateway, 502),
    (errors.ServiceUnavailable, 503),
    (errors.GatewayTimeout, 504),
]


@pytest.mark.parametrize(("cls", "status"), CONTRACT, ids=[c.__name__ for c, _ in CONTRACT])
def test_statuses(cls: type[errors.GatewayError], status: int) -> None:
    err = cls("boom")
    assert err.status == status
    assert isinstance(err, errors.GatewayError)
    assert err.code
    assert err.code == err.code.lower()
    assert " " not in err.code
    response = errors.render_error(err, "rid-1")
    assert response.status == status
    assert response.content_type == "application/json"
    body = orjson.loads(response.body)  # type: ignore[arg-type]
    assert body == {"error": err.code, "message": "boom", "request_id": "rid-1"}
    assert response.headers["X-Request-ID"] == "rid-1"


def test_codes_are_distinct() -> None:
    assert len({cls.code for cls, _ in CONTRACT}) == len(CONTRACT)


def test_error_body_is_the_contract_shape() -> None:
    assert orjson.loads(errors.error_body("no_route", "nothing here", "abc")) == {
        "error": "no_route",
        "message": "nothing here",
        "request_id": "abc",
    }


def test_per_instance_code_and_headers() -> None:
    err = errors.Unauthorized(
        "expired", code="token_expired", headers={"WWW-Authenticate": "Bearer"}
    )
    assert err.code == "token_expired"
    assert errors.Unauthorized.code == "unauthorized"  # the class keeps its code
    assert errors.Unauthorized("x").code == "unauthorized"
    response = errors.render_error(err, "r")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert orjson.loads(response.body)["error"] == "token_expired"  # type: ignore[arg-type]


def test_extra_headers_are_added_and_request_id_wins() -> None:
    err = errors.TooManyRequests("slow down", headers={"Retry-After": "3"})
    extra = [("X-RateLimit-Limit", "10"), ("Vary", "a"), ("Vary", "b"), ("X-Request-ID", "evil")]
    response = errors.render_error(err, "real-id", extra)
    assert response.headers["Retry-After"] == "3"
    assert response.headers["X-RateLimit-Limit"] == "10"
    assert response.headers.getall("Vary") == ["a", "b"]
    assert response.headers.getall("X-Request-ID") == ["real-id"]


def test_message_is_never_a_traceback() -> None:
    err = errors.InternalError("internal gateway error")
    body = orjson.loads(errors.render_error(err, "r").body)  # type: ignore[arg-type]
    assert "Traceback" not in body["message"]
    assert str(err) == "internal gateway error"
