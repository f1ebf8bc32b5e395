"""GET /v1/users/{userId}/usage, .../usage/daily, .../usage/monthly/{YYYY-MM}, .../dashboard
against a real Redis; data written through the real ``RunStore.apply``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from processor.api.context import Clock
from processor.store.runs import RunStore
from schemas.api import DailyUsage, Dashboard, MonthlyUsage, UserUsage
from tests.unit.api_support import (
    custom,
    make_settings,
    tokens,
    tool,
)
from tests.unit.user_api_support import (
    BAD_PERIODS,
    KEYS,
    NOW,
    ClientFactory,
    build_full_app,
    call,
    make_window_store,
    ms,
    start_client,
)


def tc(
    prompt: int, completion: int, reasoning: int = 0, cached: int = 0, cache_write: int = 0
) -> dict[str, int]:
    return {
        "prompt": prompt,
        "completion": completion,
        "reasoning": reasoning,
        "cached": cached,
        "cacheWrite": cache_write,
        "total": prompt + completion,
    }


@pytest.fixture
def wstore(redis: Redis, prefix: str) -> RunStore:
    return make_window_store(redis, prefix)


@pytest.fixture
async def make_client(wstore: RunStore, prefix: str) -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(clock: Clock = lambda: NOW, **settings: Any) -> TestClient[Any, Any]:
        client = await start_client(
            build_full_app(make_settings(prefix, **settings), wstore, clock)
        )
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()


async def seed(store: RunStore) -> None:
    """alice: Jan 31 (custom), Feb 10 (writer: two LLM calls and a tool call), Feb 11
    (no agent), Mar 1 (coder); bob: Feb 10."""
    await store.apply(
        [
            custom("r1", ms("2024-01-31T23:59:59.999"), "api_calls", "x", 1, user="alice",
                   agent="writer"),
            tokens("r1", ms("2024-02-10T12:00"), "gpt-4o", 100, 50, 1_234_000_000,
                   reasoning=10, cached=20, user="alice", agent="writer"),
            tokens("r1", ms("2024-02-10T23:59:59.999"), "claude-3-5-sonnet", 7, 3, 12 * 10**12,
                   user="alice", agent="writer"),
            tool("r1", ms("2024-02-10T13:00"), "search", True, 5, user="alice", agent="writer"),
        ]
    )  # fmt: skip
    await store.apply(
        [
            tokens("r2", ms("2024-02-11T00:00"), "gpt-4o", 10, 5, 100_000_000, user="alice"),
            tokens("r3", ms("2024-03-01T00:00"), "gpt-4o", 1, 1, 1, user="alice", agent="coder"),
            tokens("rb", ms("2024-02-10T08:00"), "gpt-4o", 3, 4, 5, user="bob"),
        ]
    )


# --- all time ----------------------------------------------------------------------------


async def test_usage_is_all_time(wstore: RunStore, client: TestClient[Any, Any]) -> None:
    await seed(wstore)
    body = await call(client, "/v1/users/alice/usage")
    assert body == {
        "userId": "alice",
        "tokens": tc(118, 59, 10, 20),
        "costUsd": "12.001334000001",
        "entryCount": 6,
        "runCount": 3,
    }
    assert list(body) == ["userId", "tokens", "costUsd", "entryCount", "runCount"]
    UserUsage.model_validate(body)
    assert await call(client, "/v1/users/bob/usage") == {
        "userId": "bob",
        "tokens": tc(3, 4),
        "costUsd": "0.000000000005",
        "entryCount": 1,
        "runCount": 1,
    }


async def test_usage_of_a_user_without_tokens_is_zeros(
    wstore: RunStore, client: TestClient[Any, Any]
) -> None:
    await wstore.apply([tool("r", ms("2024-02-01T00:00"), "t", False, 1, user="tooler")])
    assert await call(client, "/v1/users/tooler/usage") == {
        "userId": "tooler",
        "tokens": tc(0, 0),
        "costUsd": "0",
        "entryCount": 1,
        "runCount": 1,
    }


async def test_user_ids_with_reserved_characters_round_trip(
    wstore: RunStore, client: TestClient[Any, Any]
) -> None:
    user = "org/u:1 ü%"
    await wstore.apply([tokens("r", ms("2024-02-01T00:00"), "m", 1, 1, 0, user=user)])
    body = await call(client, "/v1/users/org%2Fu%3A1%20%C3%BC%25/usage")
    assert body["userId"] == user and body["entryCount"] == 1


# --- daily -------------------------------------------------------------------------------

FEB_10 = {
    "date": "2024-02-10",
    "tokens": tc(107, 53, 10, 20),
    "costUsd": "12.001234",
    "entryCount": 3,
    "byModel": {
        "claude-3-5-sonnet": {"tokens": tc(7, 3), "costUsd": "12"},
        "gpt-4o": {"tokens": tc(100, 50, 10, 20), "costUsd": "0.001234"},
    },
}
FEB_11 = {
    "date": "2024-02-11",
    "tokens": tc(10, 5),
    "costUsd": "0.0001",
    "entryCount": 1,
    "byModel": {"gpt-4o": {"tokens": tc(10, 5), "costUsd": "0.0001"}},
}
JAN_31 = {"date": "2024-01-31", "tokens": tc(0, 0), "costUsd": "0", "entryCount": 1, "byModel": {}}
MAR_01 = {
    "date": "2024-03-01",
    "tokens": tc(1, 1),
    "costUsd": "0.000000000001",
    "entryCount": 1,
    "byModel": {"gpt-4o": {"tokens": tc(1, 1), "costUsd": "0.000000000001"}},
}


@pytest.mark.parametrize(
    ("query", "days"),
    [
        ("from=2024-02-10&to=2024-02-11", [FEB_10, FEB_11]),
        ("from=2024-02-10&to=2024-02-10", [FEB_10]),
        ("to=2024-02-11&from=2024-02-11", [FEB_11]),
        ("from=2024-02-01&to=2024-02-29", [FEB_10, FEB_11]),
        ("from=2024-01-01&to=2024-12-31", [JAN_31, FEB_10, FEB_11, MAR_01]),
        ("from=2023-02-01&to=2024-03-06", [JAN_31, FEB_10, FEB_11, MAR_01]),  # 400 days
        ("from=2024-02-12&to=2024-02-29", []),
        ("from=2024-02-11&to=2024-02-11&unknown=ignored", [FEB_11]),
    ],
)
async def test_daily_lists_only_days_with_usage_in_order(
    wstore: RunStore, client: TestClient[Any, Any], query: str, days: list[dict[str, Any]]
) -> None:
    await seed(wstore)
    body = await call(client, f"/v1/users/alice/usage/daily?{query}")
    assert body == {"days": days}
    DailyUsage.model_validate(body)
    if days:
        assert list(body["days"][0]) == ["date", "tokens", "costUsd", "entryCount", "byModel"]


BAD_DAILY = [
    ("", "from"),
    ("to=2024-02-11", "from"),
    ("from=2024-02-10", "to"),
    ("from=&to=2024-02-11", "from"),
    ("from=2024-02-10&to=", "to"),
    ("from=2024-02-30&to=2024-03-01", "from"),
    ("from=2023-02-29&to=2023-03-01", "from"),
    ("from=2024-2-10&to=2024-02-11", "from"),
    ("from=20240210&to=2024-02-11", "from"),
    ("from=2024-02-10T00:00&to=2024-02-11", "from"),
    ("from=2024-W06-6&to=2024-02-11", "from"),  # an ISO week date (2024-02-10)
    ("from=2024-02-10&to=2024-W06-7", "to"),
    ("from=2024-02-10&to=2024-13-01", "to"),
    ("from=2024-02-10&to=yesterday", "to"),
    ("from=%D9%A2024-02-10&to=2024-02-11", "from"),  # a non-ASCII digit
    ("from=2024-02-10&from=2024-02-10&to=2024-02-11", "from"),
    ("from=2024-02-12&to=2024-02-11", "from"),
    ("from=2023-02-01&to=2024-03-07", "from"),  # 401 days
    ("from=2000-01-01&to=2024-02-11", "from"),
]


@pytest.mark.parametrize(("query", "param"), BAD_DAILY)
async def test_bad_daily_range_is_400_naming_the_parameter(
    wstore: RunStore, client: TestClient[Any, Any], query: str, param: str
) -> None:
    await seed(wstore)
    for user in ("alice", "nobody"):  # checked before the user is looked up
        body = await call(client, f"/v1/users/{user}/usage/daily?{query}", 400)
        assert body["error"]["code"] == "bad_request"
        assert f"'{param}'" in body["error"]["message"]


async def test_a_range_over_400_days_says_so(
    wstore: RunStore, client: TestClient[Any, Any]
) -> None:
    await seed(wstore)
    body = await call(client, "/v1/users/alice/usage/daily?from=2023-02-01&to=2024-03-07", 400)
    assert "401 days" in body["error"]["message"] and "400" in body["error"]["message"]


# --- monthly -----------------------------------------------------------------------------


async def test_monthly_by_model_and_by_agent_sorted_by_cost(
    wstore: RunStore, client: TestClient[Any, Any]
) -> None:
    await seed(wstore)
    body = await call(client, "/v1/users/alice/usage/monthly/2024-02")
    assert body == {
        "period": "2024-02",
        "tokens": tc(117, 58, 10, 20),
        "costUsd": "12.001334",
        "entryCount": 4,
        "byModel": {
            "claude-3-5-sonnet": {"tokens": tc(7, 3), "costUsd": "12"},
            "gpt-4o": {"tokens": tc(110, 55, 10, 20), "costUsd": "0.001334"},
        },
        # by cost, descending (alphabetically "unknown" would come first)
        "byAgent": [
            {"agent": "writer", "tokens": tc(107, 53, 10, 20), "costUsd": "12.001234", "calls": 2},
            {"agent": "unknown", "tokens": tc(10, 5), "costUsd": "0.0001", "calls": 1},
        ],
    }
    assert list(body) == ["period", "tokens", "costUsd", "entryCount", "byModel", "byAgent"]
    MonthlyUsage.model_validate(body)


async def test_monthly_of_other_months(wstore: RunStore, client: TestClient[Any, Any]) -> None:
    await seed(wstore)
    jan = await call(client, "/v1/users/alice/usage/monthly/2024-01")
    assert jan == {
        "period": "2024-01",
        "tokens": tc(0, 0),
        "costUsd": "0",
        "entryCount": 1,
        "byModel": {},
        "byAgent": [],
    }
    mar = await call(client, "/v1/users/alice/usage/monthly/2024-03")
    assert mar["byAgent"] == [
        {"agent": "coder", "tokens": tc(1, 1), "costUsd": "0.000000000001", "calls": 1}
    ]
    empty = await call(client, "/v1/users/alice/usage/monthly/2024-04")
    assert empty == jan | {"period": "2024-04", "entryCount": 0}


@pytest.mark.parametrize("period", BAD_PERIODS)
async def test_bad_month_is_400(
    wstore: RunStore, client: TestClient[Any, Any], period: str
) -> None:
    await seed(wstore)
    for user in ("alice", "nobody"):
        body = await call(client, f"/v1/users/{user}/usage/monthly/{period}", 400)
        assert body["error"]["code"] == "bad_request"
        assert "'period'" in body["error"]["message"]


# --- dashboard ---------------------------------------------------------------------------


def half_even_average(cost_usd: str, days: int) -> str:
    """The contract's rule, computed independently with Decimal."""
    with localcontext() as ctx:
        ctx.prec = 60
        avg = (Decimal(cost_usd) / days).quantize(Decimal("1E-12"), rounding=ROUND_HALF_EVEN)
    text = format(avg, "f").rstrip("0").rstrip(".")
    return text or "0"


async def test_dashboard_of_the_current_month(wstore: RunStore, make_client: ClientFactory) -> None:
    await seed(wstore)
    client = await make_client(clock=lambda: ms("2024-02-29T23:59:59.999"))
    body = await call(client, "/v1/users/alice/dashboard")
    assert body == {
        "monthly": {"totalTokens": 175, "costUsd": "12.001334"},
        "allTime": {"totalTokens": 177, "costUsd": "12.001334000001"},
        # 12.001334 / 29 = 0.41383910344827586..., rounded to 12 places
        "averageDailyCostUsd": "0.413839103448",
    }
    assert body["averageDailyCostUsd"] == half_even_average("12.001334", 29)
    assert list(body) == ["monthly", "allTime", "averageDailyCostUsd"]
    Dashboard.model_validate(body)


@pytest.mark.parametrize(
    ("now", "monthly", "average"),
    [
        ("2024-02-01T00:00", {"totalTokens": 175, "costUsd": "12.001334"}, "12.001334"),
        ("2024-02-03T12:00", {"totalTokens": 175, "costUsd": "12.001334"}, "4.000444666667"),
        ("2024-02-10T00:00", {"totalTokens": 175, "costUsd": "12.001334"}, "1.2001334"),
        ("2024-03-01T00:00", {"totalTokens": 2, "costUsd": "0.000000000001"}, "0.000000000001"),
        ("2024-03-02T00:00", {"totalTokens": 2, "costUsd": "0.000000000001"}, "0"),  # 0.5 -> 0
        ("2024-03-31T23:59", {"totalTokens": 2, "costUsd": "0.000000000001"}, "0"),
        ("2024-05-15T00:00", {"totalTokens": 0, "costUsd": "0"}, "0"),
    ],
)
async def test_dashboard_follows_the_injected_clock(
    wstore: RunStore,
    make_client: ClientFactory,
    now: str,
    monthly: dict[str, Any],
    average: str,
) -> None:
    await seed(wstore)
    client = await make_client(clock=lambda: ms(now))
    body = await call(client, "/v1/users/alice/dashboard")
    assert body == {
        "monthly": monthly,
        "allTime": {"totalTokens": 177, "costUsd": "12.001334000001"},
        "averageDailyCostUsd": average,
    }
    assert average == half_even_average(monthly["costUsd"], int(now[8:10]))


@pytest.mark.parametrize(
    ("cost_pico", "average"),
    [
        (5, "0.000000000002"),  # 2.5 pico -> 2 (ties to even)
        (7, "0.000000000004"),  # 3.5 pico -> 4
        (3, "0.000000000002"),  # 1.5 pico -> 2
        (9, "0.000000000004"),  # 4.5 pico -> 4
        (11, "0.000000000006"),  # 5.5 pico -> 6
        (2 * 10**12 + 1, "1"),  # 1.0000000000005 -> 1
    ],
)
async def test_dashboard_average_rounds_half_even_at_the_pico_dollar(
    wstore: RunStore, make_client: ClientFactory, cost_pico: int, average: str
) -> None:
    await wstore.apply([tokens("r", ms("2024-06-01T10:00"), "m", 1, 1, cost_pico, user="tie")])
    client = await make_client(clock=lambda: ms("2024-06-02T00:00"))
    body = await call(client, "/v1/users/tie/dashboard")
    assert body["averageDailyCostUsd"] == average


# --- unknown users, tenants ----------------------------------------------------------------

USER_PATHS = [
    "/v1/users/{}/usage",
    "/v1/users/{}/usage/daily?from=2024-02-01&to=2024-02-29",
    "/v1/users/{}/usage/monthly/2024-02",
    "/v1/users/{}/dashboard",
]


@pytest.mark.parametrize("path", USER_PATHS)
async def test_unknown_user_is_404(
    wstore: RunStore, client: TestClient[Any, Any], path: str
) -> None:
    await seed(wstore)
    body = await call(client, path.format("nobody"), 404)
    assert body["error"]["code"] == "not_found"
    assert "'nobody'" in body["error"]["message"]


async def test_a_key_sees_only_its_tenants_users(
    wstore: RunStore, make_client: ClientFactory
) -> None:
    await seed(wstore)  # tenant default
    await wstore.apply(
        [
            tokens(
                "ra", ms("2024-02-10T01:00"), "m", 1, 1, 10**12, tenant="tenantA", user="shared"
            ),
            tokens("ra", ms("2024-02-10T02:00"), "m", 1, 1, 0, tenant="tenantA", user="only-a"),
            tokens("rb", ms("2024-02-11T01:00"), "m", 2, 2, 0, tenant="tenantB", user="shared"),
        ]
    )
    client = await make_client(api_keys=KEYS)
    a = await call(client, "/v1/users/shared/usage", key="key-a")
    b = await call(client, "/v1/users/shared/usage", key="key-b")
    assert (a["tokens"]["total"], a["costUsd"]) == (2, "1")
    assert (b["tokens"]["total"], b["costUsd"]) == (4, "0")
    days = "/v1/users/shared/usage/daily?from=2024-02-01&to=2024-02-29"
    assert [d["date"] for d in (await call(client, days, key="key-a"))["days"]] == ["2024-02-10"]
    assert [d["date"] for d in (await call(client, days, key="key-b"))["days"]] == ["2024-02-11"]
    for path in USER_PATHS:
        await call(client, path.format("only-a"), 404, key="key-b")
        await call(client, path.format("alice"), 404, key="key-a")  # tenant default's user
        await call(client, path.format("only-a"), 200, key="key-a")
        await call(client, path.format("alice"), 401)


async def test_user_routes_are_in_the_openapi_document(client: TestClient[Any, Any]) -> None:
    doc = await call(client, "/v1/openapi.json")
    schemas = doc["components"]["schemas"]
    for path, name in (
        ("/v1/users/{userId}/usage", "UserUsage"),
        ("/v1/users/{userId}/usage/daily", "DailyUsage"),
        ("/v1/users/{userId}/usage/monthly/{period}", "MonthlyUsage"),
        ("/v1/users/{userId}/dashboard", "Dashboard"),
    ):
        op = doc["paths"][path]["get"]
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{name}"}
        assert name in schemas
        assert {"401", "404", "500"} <= set(op["responses"])
        assert op["security"] == [{"bearer": []}]
    daily = doc["paths"]["/v1/users/{userId}/usage/daily"]["get"]
    assert {p["name"] for p in daily["parameters"]} == {"userId", "from", "to"}
    assert "400" in daily["responses"]
    assert "400" in doc["paths"]["/v1/users/{userId}/usage/monthly/{period}"]["get"]["responses"]
    assert set(schemas["MonthlyUsage"]["required"]) == {
        "period", "tokens", "costUsd", "entryCount", "byModel", "byAgent",
    }  # fmt: skip
