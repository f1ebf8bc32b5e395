"""Operations endpoints (CONTRACT §3.6): liveness, readiness, Prometheus text."""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processor.api.context import ApiContext, Readiness

log = logging.getLogger(__name__)

#: Where :func:`setup_routes` stores the context, for handlers registered outside this package.
CTX_KEY: Final = web.AppKey("usage_api_context", ApiContext)


def readiness_to_wire(r: Readiness) -> dict[str, Any]:
    return {
        "status": "ready" if r.ready else "not_ready",
        "kafka": r.kafka,
        "redis": r.redis,
        "partitionsAssigned": r.partitions_assigned,
        "applying": r.applying,
        "detail": r.detail,
    }


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving HTTP; checks nothing else on purpose."""
    return web.json_response({"status": "ok"})


class OpsViews:
    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            state = await self._ctx.readiness()
        except Exception as exc:  # a failing probe means "not ready", not a 500
            log.warning("readiness probe failed: %r", exc)
            state = Readiness(
                kafka=False, redis=False, partitions_assigned=False, detail=f"probe failed: {exc}"
            )
        return web.json_response(readiness_to_wire(state), status=200 if state.ready else 503)


def render_metrics(ctx: ApiContext) -> web.Response:
    return web.Response(
        body=generate_latest(ctx.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics`` rendering ``ctx.registry``; needs :func:`setup_routes` run on the app.

    Not registered by ``setup_routes``: the worker adds it to the API port, or to the
    metrics port's :func:`processor.api.routes.operations_app` when ``USAGE_METRICS_PORT``
    is set.
    """
    return render_metrics(request.app[CTX_KEY])
