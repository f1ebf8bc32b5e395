"""Wiring of the HTTP API onto an aiohttp application (Faust's ``web_app`` in the worker)."""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from processor.api.alerts import ALERT_SCHEMAS, LIST_ALERTS, AlertViews
from processor.api.auth import DEFAULT_TENANT, make_auth_middleware
from processor.api.billing import (
    BILLING_SCHEMAS,
    BILLING_USERS,
    GENERATE_INVOICES,
    GET_INVOICE,
    LIST_INVOICES,
    SET_INVOICE_STATUS,
    BillingViews,
    InvoiceViews,
)
from processor.api.budgets import BUDGET_SCHEMAS, GET_BUDGETS, BudgetViews
from processor.api.context import ApiContext
from processor.api.errors import error_middleware
from processor.api.http_ingest import INGEST, INGEST_SCHEMAS, IngestViews
from processor.api.openapi import Param, RouteSpec, add_route, openapi_handler
from processor.api.ops import CTX_KEY, OpsViews, healthz, metrics_handler
from processor.api.params import DEFAULT_LIMIT, MAX_LIMIT
from processor.api.runs import ENTRY_KINDS, RunViews
from processor.api.users import (
    USER_DAILY,
    USER_DASHBOARD,
    USER_MONTHLY,
    USER_SCHEMAS,
    USER_USAGE,
    UserViews,
)

log = logging.getLogger(__name__)

_MS: Final = {"type": "integer", "minimum": 0, "description": "epoch milliseconds"}
_LIMIT: Final = Param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    "page size",
)
_RUN_ID: Final = Param("runId", "path", {"type": "string"}, "the run's id")

ROLLUP: Final = RouteSpec(
    "GET",
    "/v1/runs/{runId}/rollup",
    "getRunRollup",
    "A run's rollup, with totals over its sub-agent tree",
    "RunRollup",
    params=(
        _RUN_ID,
        Param(
            "includeSubAgents",
            "query",
            {"type": "boolean", "default": True},
            "false: the ...IncludingSubAgents fields equal the run's own figures",
        ),
    ),
    errors=(404,),
)
ENTRIES: Final = RouteSpec(
    "GET",
    "/v1/runs/{runId}/entries",
    "listRunEntries",
    "The run's retained raw entries ordered by (timestamp, id); filters inclusive",
    "EntriesPage",
    params=(
        _RUN_ID,
        Param(
            "kinds",
            "query",
            {
                "type": "string",
                "pattern": f"^({'|'.join(ENTRY_KINDS)})(,({'|'.join(ENTRY_KINDS)}))*$",
            },
            "comma-separated entry kinds to keep",
        ),
        Param("stepMin", "query", {"type": "integer", "minimum": 0}, "smallest stepCount"),
        Param("stepMax", "query", {"type": "integer", "minimum": 0}, "largest stepCount"),
        Param("start", "query", _MS, "earliest timestamp"),
        Param("end", "query", _MS, "latest timestamp"),
        _LIMIT,
        Param(
            "offset", "query", {"type": "integer", "minimum": 0, "default": 0}, "entries skipped"
        ),
    ),
    errors=(404,),
)
LIST_RUNS: Final = RouteSpec(
    "GET",
    "/v1/runs",
    "listRuns",
    "Run ids, newest (latest startedAt) first",
    "RunList",
    params=(
        Param("userId", "query", {"type": "string"}, "only runs of this user"),
        Param("agentName", "query", {"type": "string"}, "only runs of this agent"),
        Param("since", "query", _MS, "only runs started at or after this time"),
        _LIMIT,
    ),
)
OPENAPI: Final = RouteSpec(
    "GET", "/v1/openapi.json", "getOpenApi", "This document", "OpenApiDocument"
)
HEALTHZ: Final = RouteSpec("GET", "/healthz", "getHealth", "The process is alive", "Health")
READYZ: Final = RouteSpec(
    "GET",
    "/readyz",
    "getReadiness",
    "Kafka and Redis reachable and partitions assigned",
    "Readiness",
    extra_responses={503: ("Readiness", "Not ready; the body says which part is missing")},
)


def setup_routes(app: web.Application, ctx: ApiContext, *, operations: bool = True) -> None:
    """Install the error and auth middlewares and every route of this package on ``app``.

    Call once, before the application starts (aiohttp freezes routes and middlewares then).
    ``/metrics`` is not registered here (the worker adds ``ops.metrics_handler`` to the
    port it belongs on); ``operations=False`` leaves out ``/healthz`` and ``/readyz`` too,
    for an API port whose operations endpoints are served by :func:`operations_app`. The
    user and billing-users routes need ``ctx.users``, the invoice routes ``ctx.invoices``,
    ``GET /v1/alerts`` ``ctx.alerts``; each group is only registered when its store is given.
    """
    app[CTX_KEY] = ctx
    keys = ctx.settings.api_key_tenants()
    if not keys:
        log.warning(
            "USAGE_API_KEYS is not set: the HTTP API is unauthenticated and serves tenant %r",
            DEFAULT_TENANT,
        )
    # Error handling outermost, so auth failures are rendered as JSON errors too.
    app.middlewares.append(error_middleware)
    app.middlewares.append(make_auth_middleware(keys))

    runs = RunViews(ctx)
    ops = OpsViews(ctx)
    add_route(app, ROLLUP, runs.rollup)
    add_route(app, ENTRIES, runs.entries)
    add_route(app, LIST_RUNS, runs.list_runs)
    add_route(app, INGEST, IngestViews(ctx).post_entries, INGEST_SCHEMAS)
    if ctx.users is not None:
        users = UserViews(ctx.users, ctx.clock)
        add_route(app, USER_USAGE, users.usage, USER_SCHEMAS)
        add_route(app, USER_DAILY, users.daily, USER_SCHEMAS)
        add_route(app, USER_MONTHLY, users.monthly, USER_SCHEMAS)
        add_route(app, USER_DASHBOARD, users.dashboard, USER_SCHEMAS)
        add_route(app, BILLING_USERS, BillingViews(ctx.users).users, BILLING_SCHEMAS)
    if ctx.invoices is not None:
        invoices = InvoiceViews(ctx.invoices, ctx.clock)
        add_route(app, GENERATE_INVOICES, invoices.generate, BILLING_SCHEMAS)
        add_route(app, LIST_INVOICES, invoices.list_period, BILLING_SCHEMAS)
        add_route(app, GET_INVOICE, invoices.get, BILLING_SCHEMAS)
        add_route(app, SET_INVOICE_STATUS, invoices.set_status, BILLING_SCHEMAS)
    if ctx.alerts is not None:
        add_route(app, LIST_ALERTS, AlertViews(ctx.alerts).list, ALERT_SCHEMAS)
    if ctx.budgets is not None:
        add_route(app, GET_BUDGETS, BudgetViews(ctx.budgets, ctx.clock).get, BUDGET_SCHEMAS)
    add_route(app, OPENAPI, openapi_handler)
    if operations:
        add_route(app, HEALTHZ, healthz)
        add_route(app, READYZ, ops.readyz)


def operations_app(ctx: ApiContext) -> web.Application:
    """``/metrics``, ``/healthz`` and ``/readyz`` alone: the metrics port's application.

    No ``/v1`` route and no auth middleware: nothing on this port reads a tenant's data
    by id, and Prometheus and the kubelet have no API key. Errors (a 404 for any other
    path) are the API's JSON errors.
    """
    app = web.Application(middlewares=[error_middleware])
    app[CTX_KEY] = ctx
    add_route(app, HEALTHZ, healthz)
    add_route(app, READYZ, OpsViews(ctx).readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
