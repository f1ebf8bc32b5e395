"""``GET /v1/budgets?userId=&runId=`` (CONTRACT §3.8): may this user or run go on?

Every rule that applies to the user's current windows (the hour, day and month containing
now, UTC) and to the run's tree, read live from the rollups. Decisions where the
contract is silent: ``remaining`` counts down to critical, or to warning for a rule with
no critical threshold; an unknown run's window has ``start`` null.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from processor.api.auth import tenant_of
from processor.api.context import Clock
from processor.api.errors import bad_request
from processor.api.openapi import Param, RouteSpec
from processor.api.openapi_schemas import JsonSchema, model_schemas
from processor.api.params import get_str
from processor.domain.budgets import Budget, exceeded, plain
from processor.store.budget_queries import BudgetQueries
from schemas.api import Budgets

GET_BUDGETS: Final = RouteSpec(
    "GET",
    "/v1/budgets",
    "getBudgets",
    "Every rule on the user's current windows and the run's tree: observed, level, remaining",
    "Budgets",
    params=(
        Param("userId", "query", {"type": "string"}, "the user (at least one of the two)"),
        Param("runId", "query", {"type": "string"}, "the run (its sub-agent tree counts)"),
    ),
    errors=(400,),
)
BUDGET_SCHEMAS: Final[dict[str, JsonSchema]] = model_schemas(Budgets)


def budget_to_wire(b: Budget) -> dict[str, Any]:
    return {
        "rule": b.rule.name,
        "subject": {"type": b.subject_type, "id": b.subject_id},
        "window": {"kind": b.window_kind, "start": b.window_start, "end": b.window_end},
        "metric": b.rule.metric,
        "observed": plain(b.observed),
        "thresholds": {"warning": plain(b.rule.warning), "critical": plain(b.rule.critical)},
        "level": b.level,
        "remaining": plain(b.remaining),
    }


class BudgetViews:
    def __init__(self, budgets: BudgetQueries, clock: Clock) -> None:
        self._budgets = budgets
        self._clock = clock

    async def get(self, request: web.Request) -> web.Response:
        user_id = get_str(request.query, "userId")
        run_id = get_str(request.query, "runId")
        if user_id is None and run_id is None:
            raise bad_request("give userId, runId or both")
        tenant = tenant_of(request)
        found: list[Budget] = []
        if user_id is not None:
            found += await self._budgets.user(tenant, user_id, self._clock())
        if run_id is not None:
            found += await self._budgets.run(tenant, run_id)
        return web.json_response(
            {"budgets": [budget_to_wire(b) for b in found], "exceeded": exceeded(found)}
        )
