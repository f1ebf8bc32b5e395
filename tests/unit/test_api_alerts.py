"""GET /v1/alerts against a real Redis; the alerts are fired by the real ``RunStore.apply``
with alert rules, so the records listed are the ones the batch step stored."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from processor.api.context import ApiContext
from processor.api.routes import setup_routes
from processor.domain.alert_rules import AlertRule
from processor.domain.windows import DAY_MS, Retention
from processor.settings import Settings
from processor.store.alert_queries import SCAN_FACTOR, AlertQueries
from processor.store.keys import Keys
from processor.store.runs import ALERTS_OUTBOX, RunStore
from schemas.api import AlertList
from tests.unit.api_support import make_queries, make_settings, ready_probe, tokens
from tests.unit.user_api_support import KEYS, build_full_app, call, start_client

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
USD = 10**12
DAY0 = 1_733_011_200_000  # 2024-12-01T00:00:00Z
NOW = DAY0 + 3 * DAY_MS
KEEP = Retention(hour_s=100 * 365 * 86400, day_s=100 * 365 * 86400)
SPEND = AlertRule("spend", "user", "day", "costUsd", Decimal("1"), Decimal("2"))
TOKENS = AlertRule("hourly-tokens", "user", "hour", "tokens", None, Decimal("1000"))
FIELDS = ["alertId", "rule", "level", "tenantId", "subject", "window", "metric", "observed",
          "threshold", "triggeredAt", "entryId", "message"]  # fmt: skip


class Clock:
    """The store's clock (seconds); the batch step stamps triggeredAt with it."""

    def __init__(self) -> None:
        self.ms = NOW

    def __call__(self) -> float:
        return self.ms / 1000


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def astore(redis: Redis, prefix: str, clock: Clock) -> RunStore:
    return RunStore(
        redis,
        Keys(prefix),
        dedup_ttl_s=3600,
        entry_ttl_s=3600,
        retention=KEEP,
        rules=[SPEND, TOKENS],
        clock=clock,
    )


def build_app(settings: Settings, store: RunStore) -> web.Application:
    app = web.Application()
    ctx = ApiContext(
        settings=settings,
        runs=make_queries(store, settings),
        registry=CollectorRegistry(),
        readiness=ready_probe(),
        alerts=AlertQueries(store._redis, store._keys),
    )
    setup_routes(app, ctx)
    return app


@pytest.fixture
async def make_client(astore: RunStore, prefix: str) -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(**settings: Any) -> TestClient[Any, Any]:
        client = await start_client(build_app(make_settings(prefix, **settings), astore))
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()


async def published(redis: Redis, prefix: str) -> list[dict[str, Any]]:
    """Every alert the batch step decided (its outbox), newest first as the API orders."""
    rows = await redis.xrange(Keys(prefix).outbox(ALERTS_OUTBOX))
    alerts = [json.loads(fields["v"]) for _, fields in rows]
    return sorted(alerts, key=lambda a: (a["triggeredAt"], a["alertId"].encode()), reverse=True)


async def seed(store: RunStore, clock: Clock) -> None:
    """alice: spend warning at NOW, critical at NOW+2s; bob: both levels at NOW+1s (a tie);
    carol: hourly tokens critical at NOW+3s."""
    await store.apply([tokens("r1", DAY0 + 1, "m", 10, 5, USD * 3 // 2, user="alice")])
    clock.ms = NOW + 1000
    await store.apply([tokens("r2", DAY0 + 2, "m", 10, 5, USD * 5, user="bob")])
    clock.ms = NOW + 2000
    await store.apply([tokens("r1", DAY0 + 3, "m", 10, 5, USD, user="alice")])
    clock.ms = NOW + 3000
    await store.apply([tokens("r3", DAY0 + 4, "m", 600, 400, 1, user="carol")])


async def alerts_of(client: TestClient[Any, Any], query: str = "", **kw: Any) -> Any:
    body = await call(client, f"/v1/alerts{query}", **kw)
    AlertList.model_validate(body)
    assert list(body) == ["alerts", "nextCursor"]
    return body


async def test_newest_first_as_published(
    astore: RunStore, clock: Clock, client: TestClient[Any, Any], redis: Redis, prefix: str
) -> None:
    assert await alerts_of(client) == {"alerts": [], "nextCursor": None}
    await seed(astore, clock)
    expected = await published(redis, prefix)
    assert len(expected) == 5
    body = await alerts_of(client)
    assert body == {"alerts": expected, "nextCursor": None}
    got = body["alerts"]
    assert [(a["subject"]["id"], a["rule"]) for a in got] == [
        ("carol", "hourly-tokens"),
        ("alice", "spend"),
        ("bob", "spend"),
        ("bob", "spend"),
        ("alice", "spend"),
    ]
    assert [a["level"] for a in got[:2]] == ["critical", "critical"]
    assert {a["level"] for a in got[2:4]} == {"warning", "critical"}
    assert got[2]["alertId"] > got[3]["alertId"]  # a tie of triggeredAt: by alertId, descending
    assert [a["triggeredAt"] for a in got] == [NOW + 3000, NOW + 2000, NOW + 1000, NOW + 1000, NOW]
    assert all(list(a) == FIELDS for a in got)
    for a in got:  # the stored record, exactly
        record = await redis.get(Keys(prefix).alert("default", a["alertId"]))
        assert record is not None and json.loads(record) == a


async def test_filters(
    astore: RunStore, clock: Clock, client: TestClient[Any, Any], redis: Redis, prefix: str
) -> None:
    await seed(astore, clock)
    expected = await published(redis, prefix)

    async def ids(query: str) -> list[str]:
        body = await alerts_of(client, query)
        assert body["nextCursor"] is None
        return [a["alertId"] for a in body["alerts"]]

    def where(**cond: Any) -> list[str]:
        return [a["alertId"] for a in expected if all(f(a) for f in cond.values())]

    assert await ids("?userId=alice") == where(u=lambda a: a["subject"]["id"] == "alice")
    assert await ids("?userId=nobody") == []
    assert await ids("?rule=hourly-tokens") == where(r=lambda a: a["rule"] == "hourly-tokens")
    assert await ids("?rule=nope") == []
    assert await ids("?level=warning") == where(lv=lambda a: a["level"] == "warning")
    assert await ids("?level=critical&userId=bob&rule=spend") == where(
        lv=lambda a: a["level"] == "critical", u=lambda a: a["subject"]["id"] == "bob"
    )
    # since is inclusive
    assert await ids(f"?since={NOW + 1000}") == where(t=lambda a: a["triggeredAt"] >= NOW + 1000)
    assert await ids(f"?since={NOW + 1001}") == where(t=lambda a: a["triggeredAt"] > NOW + 1000)
    assert await ids(f"?since={NOW + 3001}") == []
    assert await ids("?since=0") == where()
    assert await ids(f"?userId=alice&since={NOW + 1}") == where(
        u=lambda a: a["subject"]["id"] == "alice", t=lambda a: a["triggeredAt"] > NOW
    )
    # only user alerts exist so far: a run has none (also with a user)
    assert await ids("?runId=r1") == []
    assert await ids("?runId=r1&userId=alice") == []


async def test_pages_return_every_alert_once_in_order(
    astore: RunStore, clock: Clock, client: TestClient[Any, Any], redis: Redis, prefix: str
) -> None:
    # 3 batches of 9 users crossing both levels: 54 alerts, in 3 groups of 18 equal times
    for b in range(3):
        clock.ms = NOW + b * 1000
        await astore.apply(
            [tokens(f"r{b}{i}", DAY0 + i, "m", 1, 1, USD * 3, user=f"u{b}{i}") for i in range(9)]
        )
    expected = await published(redis, prefix)
    assert len(expected) == 54

    async def walk(query: str, page: int) -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            sep = "&" if query else ""
            body = await alerts_of(
                client, f"?{query}{sep}limit={page}" + (f"&cursor={cursor}" if cursor else "")
            )
            seen += [a["alertId"] for a in body["alerts"]]
            cursor = body["nextCursor"]
            if cursor is None:
                return seen
            assert len(body["alerts"]) == page
            assert isinstance(cursor, str) and cursor.isascii()

    every = [a["alertId"] for a in expected]
    for page in (1, 7, 18, 53, 54, 1000):
        assert await walk("", page) == every
    critical = [a["alertId"] for a in expected if a["level"] == "critical"]
    assert await walk("level=critical", 4) == critical
    assert await walk(f"level=critical&since={NOW + 1000}", 5) == critical[:18]
    user = [a["alertId"] for a in expected if a["subject"]["id"] == "u14"]
    assert await walk("userId=u14", 1) == user
    # a full last page: the next one is empty, without a cursor
    first = await alerts_of(client, "?limit=54")
    assert first["nextCursor"] is None or (
        await alerts_of(client, f"?limit=1&cursor={first['nextCursor']}")
    ) == {"alerts": [], "nextCursor": None}


async def test_a_sparse_filter_scans_a_bounded_number_of_ids_per_page(
    astore: RunStore, clock: Clock, client: TestClient[Any, Any], redis: Redis, prefix: str
) -> None:
    # one hourly-tokens alert, then many spend alerts newer than it
    await astore.apply([tokens("old", DAY0, "m", 600, 400, 1, user="old")])
    for b in range(SCAN_FACTOR + 5):
        clock.ms = NOW + 1000 * (b + 1)
        await astore.apply([tokens(f"r{b}", DAY0 + b, "m", 1, 1, USD * 3 // 2, user=f"u{b}")])
    first = await alerts_of(client, "?rule=hourly-tokens&limit=1")
    assert first["alerts"] == [] and first["nextCursor"] is not None
    second = await alerts_of(client, f"?rule=hourly-tokens&limit=1&cursor={first['nextCursor']}")
    ((alert,),) = [second["alerts"]]
    assert (alert["rule"], alert["subject"]["id"]) == ("hourly-tokens", "old")


async def test_expired_records_are_skipped_and_dropped_from_the_index(
    astore: RunStore, clock: Clock, client: TestClient[Any, Any], redis: Redis, prefix: str
) -> None:
    await seed(astore, clock)
    expected = await published(redis, prefix)
    gone = expected[1]["alertId"]
    await redis.delete(Keys(prefix).alert("default", gone))
    body = await alerts_of(client, "?limit=2")
    assert [a["alertId"] for a in body["alerts"]] == [
        expected[0]["alertId"],
        expected[2]["alertId"],
    ]
    assert await redis.zscore(Keys(prefix).alerts("default"), gone) is None
    rest = await alerts_of(client, f"?cursor={body['nextCursor']}")
    assert rest["alerts"] == expected[3:]


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("level=info", "level"),
        ("level=", "level"),
        ("level=Critical", "level"),
        ("since=-1", "since"),
        ("since=abc", "since"),
        ("since=1.5", "since"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("cursor=", "cursor"),
        ("cursor=!!!", "cursor"),
        ("cursor=abc", "cursor"),
        ("cursor=a", "cursor"),
        (f"cursor={b64('b1|2024-02|alice')}", "cursor"),
        (f"cursor={b64('a1|x|id')}", "cursor"),
        (f"cursor={b64('a1|-5|id')}", "cursor"),
        (f"cursor={b64('a1|5|')}", "cursor"),
        ("userId=a&userId=b", "userId"),
    ],
)
async def test_bad_parameters_are_400(client: TestClient[Any, Any], query: str, name: str) -> None:
    body = await call(client, f"/v1/alerts?{query}", 400)
    assert body["error"]["code"] == "bad_request"
    assert f"'{name}'" in body["error"]["message"]


async def test_a_key_sees_only_its_tenants_alerts(
    astore: RunStore, make_client: ClientFactory
) -> None:
    await astore.apply(
        [
            tokens("ra", DAY0, "m", 1, 1, USD * 3, tenant="tenantA", user="ua"),
            tokens("rb", DAY0, "m", 1, 1, USD * 3 // 2, tenant="tenantB", user="ub"),
            tokens("rd", DAY0, "m", 1, 1, USD * 3, user="ua"),
        ]
    )
    client = await make_client(api_keys=KEYS)
    a = await alerts_of(client, key="key-a")
    assert {(x["tenantId"], x["subject"]["id"], x["level"]) for x in a["alerts"]} == {
        ("tenantA", "ua", "warning"),
        ("tenantA", "ua", "critical"),
    }
    b = await alerts_of(client, key="key-b")
    assert [(x["tenantId"], x["subject"]["id"], x["level"]) for x in b["alerts"]] == [
        ("tenantB", "ub", "warning")
    ]
    assert await alerts_of(client, "?userId=ua", key="key-b") == {"alerts": [], "nextCursor": None}
    # a cursor is only a position: in another tenant it still lists that tenant's alerts
    page = await alerts_of(client, "?limit=1", key="key-a")
    other = await alerts_of(client, f"?cursor={page['nextCursor']}", key="key-b")
    assert {x["tenantId"] for x in other["alerts"]} <= {"tenantB"}
    await call(client, "/v1/alerts", 401)


async def test_route_is_in_the_openapi_document_and_needs_the_store(
    client: TestClient[Any, Any], redis: Redis, prefix: str
) -> None:
    doc = await call(client, "/v1/openapi.json")
    op = doc["paths"]["/v1/alerts"]["get"]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/AlertList"}
    assert {"AlertList", "Alert"} <= set(doc["components"]["schemas"])
    assert {p["name"] for p in op["parameters"]} == {
        "userId", "runId", "rule", "level", "since", "limit", "cursor"
    }  # fmt: skip
    assert {"400", "401", "500"} <= set(op["responses"])
    # without an AlertQueries the route is not served
    store = RunStore(redis, Keys(prefix), dedup_ttl_s=3600, entry_ttl_s=3600)
    plain = await start_client(build_full_app(make_settings(prefix), store, lambda: NOW))
    try:
        resp = await plain.get("/v1/alerts")
        assert resp.status == 404
    finally:
        await plain.close()
