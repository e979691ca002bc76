"""The TLS listener's pure parts: failure reasons and the `${tls.*}` template names.

The handshakes themselves are tested against the real daemon (tests/integration/test_tls.py).
"""

from __future__ import annotations

import ssl

import pytest

from aiogate.template import TemplateError, Var, parse
from aiogate.tls import client_subject, failure_reason


def ssl_error(reason: str, kind: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    error = kind(1, f"[SSL: {reason}]")
    error.reason = reason
    return error


def verify_error(code: int) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    error.verify_code = code
    return error


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ssl_error("HTTP_REQUEST"), "plain_http"),
        (ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_client_cert"),
        (verify_error(10), "client_cert_expired"),
        (verify_error(9), "client_cert_expired"),
        (verify_error(20), "client_cert_untrusted"),
        (ssl_error("UNSUPPORTED_PROTOCOL"), "protocol"),
        (ssl_error("NO_SHARED_CIPHER"), "protocol"),
        (ssl_error("TLSV1_ALERT_UNKNOWN_CA"), "client_alert"),
        (ssl_error("SOMETHING_NEW"), "tls_error"),
        (ConnectionAbortedError("SSL handshake is taking longer than 10 seconds"), "timeout"),
        (ConnectionResetError(), "closed"),
        (RuntimeError("?"), "other"),
    ],
)
def test_failure_reasons(exc: BaseException, reason: str) -> None:
    assert failure_reason(exc) == reason


def test_tls_template_names() -> None:
    assert parse("cn=${tls.client_subject}") == ("cn=", Var("tls", "client_subject"))
    with pytest.raises(TemplateError, match=r"unknown variable \$\{tls.cipher\}"):
        parse("${tls.cipher}")


def test_no_subject_without_tls() -> None:
    assert client_subject(None) is None

    class Plain:
        def get_extra_info(self, name: str) -> None:
            return None

    assert client_subject(Plain()) is None  # type: ignore[arg-type]
