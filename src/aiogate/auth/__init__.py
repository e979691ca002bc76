"""Credential verifiers: JWT (static keys or JWKS) and API keys (memory or Redis).

A verifier turns a credential into a :class:`Consumer` or raises :class:`AuthFailure`; the auth
stage (``stages/auth.py``) turns failures into the gateway's 401/403/503 errors, metrics and
log events. Verifiers never see aiohttp requests, so they are tested without a server.
"""

from ._types import AuthFailure, Consumer
from .apikey import ApiKeyVerifier, KeyRecord
from .jwks import JwksKeySet
from .jwt import JwtVerifier
from .methods import ApiKeyMethod, AuthMethod, JwtMethod
from .service import AuthServices

__all__ = [
    "ApiKeyMethod",
    "ApiKeyVerifier",
    "AuthMethod",
    "AuthFailure",
    "AuthServices",
    "Consumer",
    "JwksKeySet",
    "JwtMethod",
    "JwtVerifier",
    "KeyRecord",
]
