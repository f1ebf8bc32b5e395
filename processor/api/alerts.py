"""``GET /v1/alerts`` (CONTRACT §3.4): the alerts emitted, newest first by ``triggeredAt``.

Decisions where the contract is silent:

* Ties of ``triggeredAt`` are ordered by ``alertId``, descending. ``since`` is inclusive.
* ``nextCursor`` is opaque (URL-safe base64 of the last alert's ``triggeredAt`` and id) and
  exclusive; a cursor that does not decode is a 400. Null on the last page.
* With ``rule`` or ``level`` a page scans at most 20 x ``limit`` alerts: it may then hold
  fewer than ``limit`` (even none) and still carry a ``nextCursor`` to continue.
* ``runId`` reads the run's alerts (run-subject alerts; none are emitted yet); with
  ``userId`` too, only those naming that user.
* Alerts are kept ``USAGE_ALERT_RETENTION_SECONDS`` after they fired.
"""

from __future__ import annotations

from typing import Final, get_args

from aiohttp import web

from processor.api.auth import tenant_of
from processor.api.errors import bad_request
from processor.api.openapi import Param, RouteSpec
from processor.api.openapi_schemas import JsonSchema, model_schemas
from processor.api.params import DEFAULT_LIMIT, MAX_LIMIT, get_int, get_limit, get_str
from processor.store.alert_queries import AlertQueries, BadCursor
from schemas.alert import AlertLevel
from schemas.api import AlertList

LEVELS: Final[tuple[str, ...]] = get_args(AlertLevel)

LIST_ALERTS: Final = RouteSpec(
    "GET",
    "/v1/alerts",
    "listAlerts",
    "Alerts emitted, newest first by triggeredAt (ties by alertId, descending)",
    "AlertList",
    params=(
        Param("userId", "query", {"type": "string"}, "only alerts of this user"),
        Param("runId", "query", {"type": "string"}, "only alerts of this run"),
        Param("rule", "query", {"type": "string"}, "only alerts of this rule"),
        Param("level", "query", {"enum": list(LEVELS)}, "only alerts of this level"),
        Param(
            "since",
            "query",
            {"type": "integer", "minimum": 0, "description": "epoch milliseconds"},
            "only alerts triggered at or after this time",
        ),
        Param(
            "limit",
            "query",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
            "page size",
        ),
        Param("cursor", "query", {"type": "string"}, "nextCursor of the previous page"),
    ),
    errors=(400,),
)
#: Component schemas of the route's body.
ALERT_SCHEMAS: Final[dict[str, JsonSchema]] = model_schemas(AlertList)


class AlertViews:
    def __init__(self, alerts: AlertQueries) -> None:
        self._alerts = alerts

    async def list(self, request: web.Request) -> web.Response:
        q = request.query
        level = get_str(q, "level")
        if level is not None and level not in LEVELS:
            raise bad_request(
                f"query parameter 'level' must be one of {', '.join(LEVELS)}, got {level[:40]!r}"
            )
        since = get_int(q, "since")
        limit = get_limit(q)
        try:
            alerts, next_cursor = await self._alerts.list(
                tenant_of(request),
                user_id=get_str(q, "userId"),
                run_id=get_str(q, "runId"),
                rule=get_str(q, "rule"),
                level=level,
                since=since,
                limit=limit,
                cursor=get_str(q, "cursor"),
            )
        except BadCursor:
            raise bad_request(
                "query parameter 'cursor' is malformed; pass a nextCursor as given"
            ) from None
        return web.json_response({"alerts": alerts, "nextCursor": next_cursor})
