"""The TLS listener: handshakes are watched here, so failures are counted and certificates
rotate on reload.

The proxy socket is served without `ssl=`: the protocol factory given to `create_server` makes
the TLS protocol itself, the same class and arguments uvloop's `create_server(ssl=...)` uses,
but with a handshake future that this module owns. That buys two things:

- **Failures are seen.** With `create_server(ssl=...)` a failed handshake is swallowed (logged
  only in asyncio debug mode); here the future's outcome counts every failure in
  `aiogate_tls_handshake_failures_total{reason}`.
- **Rotation is a reference swap.** Each connection takes the context that is current when it
  is accepted; a reload builds a fresh context from the files (which validates them) and swaps
  it in. Open connections keep the SSL object they were made with, so nothing is dropped, and
  no context a connection uses is ever modified.

`loop.start_tls` would give the same future but cannot be used: uvloop starts reading a new
connection right after `connection_made`, so the ClientHello can reach the first protocol
before `start_tls` has taken over.

A plaintext HTTP request sent to this port fails the handshake (OpenSSL recognises it) and the
connection is closed without an answer, counted as `plain_http`.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import importlib
import ssl
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509

from . import log
from .metrics import TLS_HANDSHAKE_FAILURES

if TYPE_CHECKING:
    from .config import ServerTlsConfig

__all__ = ["TlsListener", "client_subject", "failure_reason"]

_X509_V_ERR_CERT_HAS_EXPIRED: Final = 10
_X509_V_ERR_CERT_NOT_YET_VALID: Final = 9
# OpenSSL's reasons for a peer that does not speak TLS or speaks an older one.
_PLAIN_HTTP: Final = frozenset({"HTTP_REQUEST", "HTTPS_PROXY_REQUEST"})
_PROTOCOL: Final = frozenset(
    {
        "UNSUPPORTED_PROTOCOL",
        "WRONG_VERSION_NUMBER",
        "VERSION_TOO_LOW",
        "NO_SHARED_CIPHER",
        "NO_PROTOCOLS_AVAILABLE",
        "NO_SUITABLE_SIGNATURE_ALGORITHM",
        "NO_SHARED_GROUPS",
    }
)


def failure_reason(exc: BaseException) -> str:
    """A short, stable label for why a handshake failed (the metric's `reason`)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in (_X509_V_ERR_CERT_HAS_EXPIRED, _X509_V_ERR_CERT_NOT_YET_VALID):
            return "client_cert_expired"
        return "client_cert_untrusted"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _PLAIN_HTTP:
            return "plain_http"
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no_client_cert"
        if reason in _PROTOCOL:
            return "protocol"
        if reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):
            # The client gave up on us: most often it does not trust our certificate.
            return "client_alert"
        return "tls_error"
    if isinstance(exc, ConnectionAbortedError):
        return "timeout"  # start_tls's ssl_handshake_timeout (server.header_timeout)
    if isinstance(exc, ConnectionError | EOFError):
        return "closed"  # the client hung up mid-handshake
    return "other"


class TlsListener:
    """Wraps the proxy's protocol factory in TLS (see the module doc)."""

    __slots__ = ("_context", "_factory", "_protocol", "_timeout")

    def __init__(
        self,
        config: ServerTlsConfig,
        factory: Callable[[], asyncio.BaseProtocol],
        *,
        handshake_timeout: float,
    ) -> None:
        self._context: ssl.SSLContext = config.context()
        self._factory = factory
        self._timeout = handshake_timeout
        self._protocol = _ssl_protocol_class()

    @property
    def context(self) -> ssl.SSLContext:
        """The context new connections get."""
        return self._context

    def protocol(self) -> asyncio.BaseProtocol:
        """The protocol factory to give `create_server`: TLS around the gateway's protocol."""
        loop = asyncio.get_running_loop()
        handshake = loop.create_future()
        handshake.add_done_callback(_handshake_done)
        protocol: asyncio.BaseProtocol = self._protocol(
            loop,
            self._factory(),
            self._context,
            handshake,
            server_side=True,
            server_hostname=None,
            ssl_handshake_timeout=self._timeout,
        )
        return protocol

    @staticmethod
    def stage(config: ServerTlsConfig) -> ssl.SSLContext:
        """A context for `config` read from the files now (ValueError when unusable).

        Blocking (file reads, key parsing): call it in a thread.
        """
        return config.context()

    def apply(self, context: ssl.SSLContext, handshake_timeout: float) -> None:
        """New connections use `context` from now on; open connections keep theirs."""
        self._context = context
        self._timeout = handshake_timeout


def _ssl_protocol_class() -> Callable[..., asyncio.BaseProtocol]:
    """uvloop's TLS protocol on a uvloop loop (what its `create_server(ssl=...)` uses), else
    asyncio's; both take the same arguments."""
    loop = asyncio.get_running_loop()
    if type(loop).__module__.startswith("uvloop"):
        protocol: Callable[..., asyncio.BaseProtocol] = importlib.import_module(
            "uvloop.loop"
        ).SSLProtocol
        return protocol
    return asyncio.sslproto.SSLProtocol


def _handshake_done(handshake: asyncio.Future[None]) -> None:
    if handshake.cancelled():
        return
    exc = handshake.exception()  # retrieved, so asyncio never logs it as unhandled
    if exc is not None:
        _count_failure(exc)


def _count_failure(exc: BaseException) -> None:
    reason = failure_reason(exc)
    TLS_HANDSHAKE_FAILURES.labels(reason).inc()
    # Debug only: a scanner or a misconfigured client would otherwise flood the log; the
    # metric is the signal, this line says what OpenSSL reported.
    log.get_logger("aiogate.tls").debug(
        log.TLS_HANDSHAKE_FAILED,
        reason=reason,
        error=str(exc),
    )


def client_subject(transport: asyncio.BaseTransport | None) -> str | None:
    """The verified client certificate's subject as an RFC 4514 string, or None.

    The handshake only completes with a certificate the client CA vouches for, so any
    certificate the connection has was verified.
    """
    if transport is None:
        return None
    ssl_object: Any = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return None if der is None else _subject(der)


@lru_cache(maxsize=1024)
def _subject(der: bytes) -> str:
    # Parsed once per certificate, not per request: clients keep presenting the same one.
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()
