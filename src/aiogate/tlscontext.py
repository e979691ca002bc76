"""SSL contexts: the listener's (server side, optional client certificates) and the upstream
client's (optional client certificate for mTLS to backends).

Pure `ssl` (no aiohttp, no logging): the config models call `server_context` to reject a bad
PEM or a key that does not match its certificate at `aiogate check` time, and the listener
calls it again for every reload, so both judge a file by the same code.

What is set on the listener, on top of OpenSSL's defaults:

- TLS 1.2 only with ECDHE key exchange and an AEAD cipher (AES-GCM, ChaCha20-Poly1305);
  TLS 1.3 with OpenSSL's own suites (all AEAD); nothing older than `min_version`;
- no TLS compression (CRIME), no renegotiation, the server's cipher order;
- client certificates: with `client_ca_file`, a client may present one (verified against that
  bundle: an untrusted or expired one fails the handshake); `require_client_cert` makes it
  mandatory.
"""

from __future__ import annotations

import ssl
from typing import Final

__all__ = ["TLS12_CIPHERS", "client_context", "server_context"]

#: The TLS 1.2 cipher list: forward secrecy (ECDHE) and authenticated encryption only.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"

_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(
    cert_file: str,
    key_file: str,
    *,
    client_ca_file: str | None = None,
    require_client_cert: bool = False,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """A fresh listener context; ValueError (with a readable message) for unusable files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[min_version]
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    )
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ValueError(
            f"cannot use certificate {cert_file} with key {key_file}: {_why(exc)}"
        ) from None
    except OSError as exc:
        raise ValueError(f"cannot read certificate or key: {exc.strerror or exc}") from None
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"cannot use client CA bundle {client_ca_file}: {_why(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    *,
    ca_file: str | None = None,
    verify: bool = True,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> ssl.SSLContext:
    """The upstream client's context: the system trust store (or `ca_file`), and a client
    certificate to present when the backend asks for one (mTLS)."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            raise ValueError(
                f"cannot use client certificate {cert_file} with key {key_file}: {_why(exc)}"
            ) from None
    return context


def _why(exc: Exception) -> str:
    """OpenSSL's reason, without the library and file/line noise of `str(SSLError)`."""
    if isinstance(exc, ssl.SSLError):
        if exc.reason and exc.reason != "PEM_LIB":
            return exc.reason.lower().replace("_", " ")
        return "not a valid PEM certificate and key"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
