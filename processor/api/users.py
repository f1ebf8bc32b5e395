"""Views of users (CONTRACT §3.2): all-time usage, days, one month, the dashboard.

Decisions where the contract is silent:

* ``from`` and ``to`` of the daily view are both required and inclusive; ``from`` must not
  be after ``to`` and one request covers at most ``MAX_DAYS`` days (a 400 otherwise), so
  every answer reads a bounded number of windows.
* Days are kept ``USAGE_DAY_RETENTION_SECONDS`` after they end; older days have no window
  and are simply absent from ``days`` (the month and all-time figures still hold them).
* A user is known once one of its entries was accepted in the tenant; an unknown user is a
  404 on every route. A known user's month without usage is all zeros.
* ``byModel`` is ordered by model and ``byAgent`` by cost, descending, then agent.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from datetime import date
from typing import Any, Final

from aiohttp import web

from processor.api.auth import tenant_of
from processor.api.context import Clock
from processor.api.errors import ApiError, bad_request, not_found
from processor.api.openapi import Param, RouteSpec
from processor.api.openapi_schemas import JsonSchema, model_schemas
from processor.api.params import get_str
from processor.domain.money import format_usd, round_half_even_pico
from processor.domain.windows import WindowUsage, day_of, month_of, parse_day, parse_month
from processor.store.user_queries import AllTimeUsage, UserQueries
from schemas.api import DailyUsage, Dashboard, MonthlyUsage, UserUsage

#: Most days one daily request may cover (inclusive).
MAX_DAYS: Final = 400
#: Days' JSON kept per worker (a day of 40 models is about 8 KB).
DAY_CACHE_ENTRIES: Final = 4096

_DAY_PATTERN: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_DAY_RE: Final = re.compile(_DAY_PATTERN, re.ASCII)
_DAY: Final = {"type": "string", "format": "date", "pattern": _DAY_PATTERN}
PERIOD_SCHEMA: Final = {"type": "string", "pattern": r"^[0-9]{4}-(0[1-9]|1[0-2])$"}
_USER_ID: Final = Param("userId", "path", {"type": "string"}, "the user's id")

USER_USAGE: Final = RouteSpec(
    "GET",
    "/v1/users/{userId}/usage",
    "getUserUsage",
    "A user's all-time usage",
    "UserUsage",
    params=(_USER_ID,),
    errors=(404,),
)
USER_DAILY: Final = RouteSpec(
    "GET",
    "/v1/users/{userId}/usage/daily",
    "getUserDailyUsage",
    f"A user's usage per UTC day from..to (inclusive, at most {MAX_DAYS} days); only days "
    "with usage",
    "DailyUsage",
    params=(
        _USER_ID,
        Param("from", "query", _DAY, "first UTC day (required)"),
        Param("to", "query", _DAY, "last UTC day, inclusive (required)"),
    ),
    errors=(400, 404),
)
USER_MONTHLY: Final = RouteSpec(
    "GET",
    "/v1/users/{userId}/usage/monthly/{period}",
    "getUserMonthlyUsage",
    "A user's usage in one UTC month, by model and by agent",
    "MonthlyUsage",
    params=(_USER_ID, Param("period", "path", PERIOD_SCHEMA, "UTC month, YYYY-MM")),
    errors=(400, 404),
)
USER_DASHBOARD: Final = RouteSpec(
    "GET",
    "/v1/users/{userId}/dashboard",
    "getUserDashboard",
    "A user's current UTC month, all time, and the month's average cost per day so far",
    "Dashboard",
    params=(_USER_ID,),
    errors=(404,),
)
#: Component schemas of the routes' bodies.
USER_SCHEMAS: Final[dict[str, JsonSchema]] = model_schemas(
    UserUsage, DailyUsage, MonthlyUsage, Dashboard
)


def path_period(request: web.Request) -> str:
    """The ``{period}`` path part, checked: 400 unless a real month ``YYYY-MM``."""
    period = request.match_info["period"]
    try:
        parse_month(period)
    except ValueError as exc:
        raise bad_request(f"path parameter 'period': {exc}") from None
    return period


def _day_param(request: web.Request, name: str) -> date:
    raw = get_str(request.query, name)
    if raw is None:
        raise bad_request(f"query parameter '{name}' is required (a UTC day, YYYY-MM-DD)")
    try:
        if _DAY_RE.fullmatch(raw) is None:  # parse_day alone also takes ISO week dates
            raise ValueError(f"expected YYYY-MM-DD, got {raw[:40]!r}")
        return parse_day(raw)
    except ValueError as exc:
        raise bad_request(f"query parameter '{name}': {exc}") from None


def day_range(request: web.Request) -> tuple[date, date]:
    """``from`` and ``to``: both required, ``from <= to``, at most ``MAX_DAYS`` days."""
    first = _day_param(request, "from")
    last = _day_param(request, "to")
    if first > last:
        raise bad_request(
            f"query parameter 'from' ({first.isoformat()}) must be <= 'to' ({last.isoformat()})"
        )
    days = (last - first).days + 1
    if days > MAX_DAYS:
        raise bad_request(
            f"query parameters 'from'..'to' span {days} days; at most {MAX_DAYS} days "
            "(inclusive) per request"
        )
    return first, last


def by_model_to_wire(usage: WindowUsage) -> dict[str, Any]:
    return {
        model: {"tokens": counts.to_wire(), "costUsd": format_usd(usage.cost_by_model[model])}
        for model, counts in sorted(usage.tokens_by_model.items())
    }


def user_usage_to_wire(user_id: str, found: AllTimeUsage) -> dict[str, Any]:
    usage = found.usage
    return {
        "userId": user_id,
        "tokens": usage.tokens.to_wire(),
        "costUsd": format_usd(usage.cost_pico),
        "entryCount": usage.entry_count,
        "runCount": found.run_count,
    }


def day_to_wire(day: str, usage: WindowUsage) -> dict[str, Any]:
    return {
        "date": day,
        "tokens": usage.tokens.to_wire(),
        "costUsd": format_usd(usage.cost_pico),
        "entryCount": usage.entry_count,
        "byModel": by_model_to_wire(usage),
    }


def month_to_wire(period: str, usage: WindowUsage) -> dict[str, Any]:
    return {
        "period": period,
        "tokens": usage.tokens.to_wire(),
        "costUsd": format_usd(usage.cost_pico),
        "entryCount": usage.entry_count,
        "byModel": by_model_to_wire(usage),
        "byAgent": [
            {
                "agent": a.agent,
                "tokens": a.tokens.to_wire(),
                "costUsd": format_usd(a.cost_pico),
                "calls": a.calls,
            }
            for a in usage.agents
        ],
    }


def totals_to_wire(usage: WindowUsage) -> dict[str, Any]:
    return {"totalTokens": usage.tokens.total, "costUsd": format_usd(usage.cost_pico)}


def dashboard_to_wire(
    month: WindowUsage, all_time: WindowUsage, day_of_month: int
) -> dict[str, Any]:
    """The month's average divides its cost by ``day_of_month``, exactly, half-even to the
    pico-dollar (12 decimal places)."""
    return {
        "monthly": totals_to_wire(month),
        "allTime": totals_to_wire(all_time),
        "averageDailyCostUsd": format_usd(round_half_even_pico(month.cost_pico, day_of_month)),
    }


def _user_not_found(user_id: str) -> ApiError:
    return not_found(f"user {user_id!r} not found")


class UserViews:
    def __init__(self, users: UserQueries, clock: Clock) -> None:
        self._users = users
        self._clock = clock
        # A day's JSON by (tenant, user, day, version): a day changes only when written
        # (then its version changes), so a 30-day range re-reads just the days that moved.
        self._days: OrderedDict[tuple[str, str, str, str], str] = OrderedDict()

    async def usage(self, request: web.Request) -> web.Response:
        user_id = request.match_info["userId"]
        found = await self._users.all_time(tenant_of(request), user_id)
        if found is None:
            raise _user_not_found(user_id)
        return web.json_response(user_usage_to_wire(user_id, found))

    async def daily(self, request: web.Request) -> web.Response:
        user_id = request.match_info["userId"]
        first, last = day_range(request)
        tenant = tenant_of(request)
        versions = await self._users.day_versions(tenant, user_id, first, last)
        if versions is None:
            raise _user_not_found(user_id)
        cache = self._days
        parts: dict[str, str] = {}
        missing = []
        for day, version in versions:
            key = (tenant, user_id, day, version)
            text = cache.get(key)
            if text is None:
                missing.append((day, key))
            else:
                cache.move_to_end(key)
                parts[day] = text
        if missing:
            fetched = await self._users.days(tenant, user_id, [d for d, _ in missing])
            for (day, key), usage in zip(missing, fetched, strict=True):
                parts[day] = cache[key] = json.dumps(day_to_wire(day, usage))
            while len(cache) > DAY_CACHE_ENTRIES:
                cache.popitem(last=False)
        body = '{"days": [' + ", ".join(parts[day] for day, _ in versions) + "]}"
        return web.Response(text=body, content_type="application/json")

    async def monthly(self, request: web.Request) -> web.Response:
        user_id = request.match_info["userId"]
        period = path_period(request)
        usage = await self._users.month(tenant_of(request), user_id, period)
        if usage is None:
            raise _user_not_found(user_id)
        return web.json_response(month_to_wire(period, usage))

    async def dashboard(self, request: web.Request) -> web.Response:
        user_id = request.match_info["userId"]
        now_ms = self._clock()
        period, day_of_month = month_of(now_ms), int(day_of(now_ms)[8:])
        found = await self._users.month_and_all_time(tenant_of(request), user_id, period)
        if found is None:
            raise _user_not_found(user_id)
        month, all_time = found
        return web.json_response(dashboard_to_wire(month, all_time, day_of_month))
