"""Bearer keys and tenants (CONTRACT §3.7).

With keys configured, every ``/v1`` request needs ``Authorization: Bearer <key>``; the
key's tenant is put on the request (``request[TENANT]``, read it with :func:`tenant_of`)
and every lookup uses it, so a run of another tenant is simply not found (404, not 403).
Without keys the API serves tenant ``default``.
Paths outside ``/v1`` (``/healthz``, ``/readyz``, ``/metrics``) need no key.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from processor.api.errors import ApiError

DEFAULT_TENANT: Final = "default"
#: Request key holding the tenant every lookup of the request uses.
TENANT: Final = web.RequestKey("tenant", str)
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="usage-stream"'}


def is_api_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def tenant_of(request: web.Request) -> str:
    """The tenant resolved for this request by the auth middleware."""
    if TENANT not in request:
        raise RuntimeError(f"no tenant resolved for {request.path}: is the middleware installed?")
    tenant: str = request[TENANT]
    return tenant


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers=dict(_CHALLENGE))


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization")
    if header is None:
        raise _unauthorized("missing Authorization header; expected 'Bearer <key>'")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("malformed Authorization header; expected 'Bearer <key>'")
    return token


def resolve_tenant(keys: Mapping[str, str], token: str) -> str | None:
    """The tenant of ``token``; compares against every key in constant time per key."""
    found: str | None = None
    supplied = token.encode("utf-8", "surrogateescape")
    for key, tenant in keys.items():
        if hmac.compare_digest(supplied, key.encode("utf-8", "surrogateescape")):
            found = tenant
    return found


def make_auth_middleware(keys: Mapping[str, str]) -> Middleware:
    """Middleware resolving the tenant of each request; ``keys`` empty = unauthenticated."""
    frozen = dict(keys)

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not frozen:
            request[TENANT] = DEFAULT_TENANT
        elif is_api_path(request.path):
            tenant = resolve_tenant(frozen, bearer_token(request))
            if tenant is None:
                raise _unauthorized("unknown API key")
            request[TENANT] = tenant
        return await handler(request)

    return auth_middleware
