"""GET /v1/budgets against a real Redis, compared with figures worked out by hand: a
user's current windows, and run trees including a cycle and a shared child."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from processor.api.context import ApiContext
from processor.api.routes import setup_routes
from processor.domain.alert_rules import DEFAULT_RULES, AlertRule
from processor.domain.windows import DAY_MS, HOUR_MS, Retention
from processor.store.budget_queries import BudgetQueries
from processor.store.keys import Keys
from processor.store.runs import RunStore
from schemas.api import Budgets
from tests.unit.api_support import (
    make_queries,
    make_settings,
    ready_probe,
    subagent,
    tokens,
    tool,
)
from tests.unit.user_api_support import call, start_client

USD = 10**12
DAY0 = 1_733_011_200_000  # 2024-12-01T00:00:00Z
NOW = DAY0 + 5 * DAY_MS + 3 * HOUR_MS + 17  # 2024-12-06T03:00:00.017Z
KEEP = Retention(hour_s=100 * 365 * 86400, day_s=100 * 365 * 86400)
HOURLY = AlertRule("hourly-tokens", "user", "hour", "tokens", Decimal("100"), None)
MONTHLY = AlertRule("monthly-spend", "user", "month", "costUsd", Decimal("5"), Decimal("10"))
FAILS = AlertRule("fails", "run", "run", "toolFailureRate", None, Decimal("0.5"), 3)
RULES = (*DEFAULT_RULES, HOURLY, MONTHLY, FAILS)


async def client_for(redis: Redis, prefix: str) -> Any:
    store = RunStore(redis, Keys(prefix), dedup_ttl_s=3600, entry_ttl_s=3600, retention=KEEP)
    settings = make_settings(prefix)
    queries = make_queries(store, settings)
    app = web.Application()
    setup_routes(
        app,
        ApiContext(
            settings=settings,
            runs=queries,
            registry=CollectorRegistry(),
            readiness=ready_probe(),
            budgets=BudgetQueries(redis, Keys(prefix), RULES, depth_limit=64, children_limit=1000),
            clock=lambda: NOW,
        ),
    )
    return store, await start_client(app)


def row(body: dict[str, Any], rule: str) -> dict[str, Any]:
    (found,) = [b for b in body["budgets"] if b["rule"] == rule]
    return found


async def test_a_users_current_windows(redis: Redis, prefix: str) -> None:
    store, client = await client_for(redis, prefix)
    this_hour = NOW - 17
    await store.apply(
        [
            tokens("r1", this_hour + 1, "m", 60, 30, 70 * USD, user="alice"),  # this hour
            tokens("r1", this_hour - 1, "m", 5, 5, 20 * USD, user="alice"),  # earlier today
            tokens("r2", DAY0 + 1, "m", 1, 1, USD // 2, user="alice"),  # this month
            tokens("r3", DAY0 - 1, "m", 1, 1, 999 * USD, user="alice"),  # last month
        ]
    )
    body = await call(client, "/v1/budgets?userId=alice")
    Budgets.model_validate(body)
    assert [b["rule"] for b in body["budgets"]] == [
        "user-daily-spend",
        "hourly-tokens",
        "monthly-spend",
    ]
    assert row(body, "user-daily-spend") == {
        "rule": "user-daily-spend",
        "subject": {"type": "user", "id": "alice"},
        "window": {"kind": "day", "start": DAY0 + 5 * DAY_MS, "end": DAY0 + 6 * DAY_MS},
        "metric": "costUsd",
        "observed": "90",
        "thresholds": {"warning": "80", "critical": "100"},
        "level": "warning",
        "remaining": "10",
    }
    hourly = row(body, "hourly-tokens")
    assert (hourly["observed"], hourly["level"], hourly["remaining"]) == ("90", "ok", "10")
    assert hourly["window"] == {"kind": "hour", "start": this_hour, "end": this_hour + HOUR_MS}
    monthly = row(body, "monthly-spend")
    assert (monthly["observed"], monthly["level"], monthly["remaining"]) == (
        "90.5",
        "critical",
        "0",
    )
    assert body["exceeded"] is True
    # an unknown user: every rule with 0
    body = await call(client, "/v1/budgets?userId=nobody")
    assert [(b["observed"], b["level"]) for b in body["budgets"]] == [("0", "ok")] * 3
    assert body["exceeded"] is False
    await client.close()


async def test_run_trees_count_each_run_once_and_cut_cycles(redis: Redis, prefix: str) -> None:
    store, client = await client_for(redis, prefix)
    t = DAY0
    # root -> a, root -> b, a -> shared, b -> shared, shared -> root (a cycle)
    await store.apply(
        [
            tokens("shared", t, "m", 30_000, 0, 1),  # the child's entries first
            subagent("shared", t + 1, "loop", "root"),
            tool("shared", t + 2, "x", False, 1.0),
            tokens("a", t + 3, "m", 20_000, 0, 1),
            subagent("a", t + 4, "w", "shared"),
            tokens("b", t + 5, "m", 25_000, 5_000, 1),
            subagent("b", t + 6, "w", "shared"),
            tool("b", t + 7, "x", True, 1.0),
            tool("b", t + 8, "x", False, 1.0),
            tokens("root", t + 9, "m", 1_000, 0, 1),
            subagent("root", t + 10, "w", "a"),
            subagent("root", t + 11, "w", "b"),
        ]
    )
    body = await call(client, "/v1/budgets?runId=root")
    Budgets.model_validate(body)
    budget = row(body, "run-token-budget")
    # root 1,000 + a 20,000 + b 30,000 + shared 30,000, each once
    assert budget["observed"] == "81000"
    assert (budget["level"], budget["remaining"]) == ("warning", "19000")
    assert budget["window"]["kind"] == "run" and budget["window"]["end"] is None
    assert budget["window"]["start"] == t + 9
    fails = row(body, "fails")
    # 2 failed of 3 tool calls in the tree (shared once), minCalls 3 reached, 0.666667 >= 0.5
    assert (fails["observed"], fails["level"]) == ("0.666667", "critical")
    assert body["exceeded"] is True
    # a subtree: b and shared (and, through the cycle, root and a)
    body = await call(client, "/v1/budgets?runId=shared")
    assert row(body, "run-token-budget")["observed"] == "81000"
    body = await call(client, "/v1/budgets?runId=a")
    assert row(body, "run-token-budget")["observed"] == "81000"
    # an unknown run, and both subjects at once
    body = await call(client, "/v1/budgets?runId=ghost&userId=u1")
    ghost = row(body, "run-token-budget")
    assert (ghost["observed"], ghost["window"]["start"]) == ("0", None)
    assert {b["subject"]["type"] for b in body["budgets"]} == {"user", "run"}
    await client.close()


async def test_neither_id_is_a_400(redis: Redis, prefix: str) -> None:
    _, client = await client_for(redis, prefix)
    body = await call(client, "/v1/budgets", 400)
    assert body["error"]["code"]
    await client.close()
