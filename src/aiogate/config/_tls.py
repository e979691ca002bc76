"""The listener's TLS: certificate, key, client certificates (mTLS), minimum version."""

from __future__ import annotations

import ssl
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, model_validator

from ..tlscontext import server_context
from ._base import Model, ReadableFile, fail

__all__ = ["ServerTlsConfig"]


def _version(value: Any) -> Any:
    # `min_version: 1.2` without quotes is a YAML float.
    return str(value) if isinstance(value, float) else value


class ServerTlsConfig(Model):
    cert_file: ReadableFile
    key_file: ReadableFile
    #: CA bundle that client certificates are verified against; set = clients may present one.
    client_ca_file: ReadableFile | None = None
    require_client_cert: bool = False
    min_version: Annotated[Literal["1.2", "1.3"], BeforeValidator(_version)] = "1.2"

    @model_validator(mode="after")
    def _usable(self) -> ServerTlsConfig:
        if self.require_client_cert and self.client_ca_file is None:
            fail("needs client_ca_file (the CA that signs client certificates)",
                 "require_client_cert")  # fmt: skip
        # A bad PEM or a key that does not match fails `aiogate check` and every reload, the
        # same way the listener would fail to load it.
        try:
            self.context()
        except ValueError as exc:
            fail(str(exc), "cert_file")
        return self

    def context(self) -> ssl.SSLContext:
        """A fresh SSL context for these files (ValueError if they cannot be used)."""
        return server_context(
            self.cert_file,
            self.key_file,
            client_ca_file=self.client_ca_file,
            require_client_cert=self.require_client_cert,
            min_version=self.min_version,
        )
