"""JSON errors for every failure the HTTP API can answer (CONTRACT §3.7).

Handlers raise :class:`ApiError`; :func:`error_middleware` turns it, aiohttp's own
``HTTPException``s (unknown route, wrong method, body too large) and anything unexpected
into ``{"error": {"code": str, "message": str}}`` with the matching status.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

JSON_TYPE: Final = "application/json"

#: Error code of each status aiohttp raises by itself; anything else is ``http_<status>``.
_CODES: Final[dict[int, str]] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: HTTP status, stable machine-readable code, human message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(error_body(code, message), status=status, headers=headers)


def _passes_through(exc: web.HTTPException) -> bool:
    """Redirects, and errors another view already wrote as JSON, go out unchanged."""
    return exc.status < 400 or (exc.content_type == JSON_TYPE and bool(exc.text))


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "www-authenticate"}}
    message = exc.reason
    if exc.status == 404:
        message = "no such resource: the path matches no route"
    elif exc.status == 405 and "Allow" in exc.headers:
        message = f"method not allowed; allowed: {exc.headers['Allow']}"
    elif exc.text and not exc.text.startswith(f"{exc.status}:"):
        message = exc.text
    code = _CODES.get(exc.status, f"http_{exc.status}")
    return error_response(exc.status, code, message, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if _passes_through(exc):
            raise
        return _from_http_exception(exc)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("%s %s: Redis unavailable: %s", request.method, request.path, exc)
        return error_response(503, "unavailable", "state store (Redis) is unavailable")
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error")
