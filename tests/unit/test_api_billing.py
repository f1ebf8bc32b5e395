"""GET /v1/billing/{YYYY-MM}/users, the invoice routes (generate, list, get, status) against a
real Redis; data written through the real ``RunStore.apply``."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from processor.domain.invoices import invoice_id
from processor.store.runs import RunStore
from schemas.api import BillingUsers, InvoiceList
from schemas.invoice import Invoice
from tests.unit.api_support import custom, make_settings, tokens, tool
from tests.unit.user_api_support import (
    BAD_PERIODS,
    KEYS,
    NOW,
    build_full_app,
    call,
    make_window_store,
    ms,
    start_client,
)

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
FEB = ms("2024-02-10T12:00")


@pytest.fixture
def wstore(redis: Redis, prefix: str) -> RunStore:
    return make_window_store(redis, prefix)


@pytest.fixture
async def make_client(wstore: RunStore, prefix: str) -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(clock: Callable[[], int] = lambda: NOW, **settings: Any) -> TestClient[Any, Any]:
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
    """February: alice (two models), bob (tool calls only), carol; March: dave."""
    await store.apply(
        [
            tokens("r1", FEB, "gpt-4o", 100, 50, 1_234_000_000, reasoning=10, user="alice"),
            tokens("r1", FEB + 1, "claude-3-5-sonnet", 7, 3, 12 * 10**12, user="alice"),
            tokens("r2", FEB + 2, "gpt-4o", 10, 5, 100_000_000, user="alice"),
            tool("rb", FEB, "t", True, 1, user="bob"),
            custom("rb", FEB + 1, "x", "y", 1, user="bob"),
            tokens("rc", FEB, "gpt-4o", 1, 2, 3, user="carol"),
            tokens("rd", ms("2024-03-01T00:00"), "gpt-4o", 1, 1, 1, user="dave"),
        ]
    )


ALICE = {"userId": "alice", "totalTokens": 175, "costUsd": "12.001334", "entryCount": 3}
BOB = {"userId": "bob", "totalTokens": 0, "costUsd": "0", "entryCount": 2}
CAROL = {"userId": "carol", "totalTokens": 3, "costUsd": "0.000000000003", "entryCount": 1}


# --- billing users -----------------------------------------------------------------------


async def test_billing_users_of_a_month(wstore: RunStore, client: TestClient[Any, Any]) -> None:
    await seed(wstore)
    body = await call(client, "/v1/billing/2024-02/users")
    assert body == {"users": [ALICE, BOB, CAROL], "nextCursor": None}
    assert list(body) == ["users", "nextCursor"]
    assert list(body["users"][0]) == ["userId", "totalTokens", "costUsd", "entryCount"]
    BillingUsers.model_validate(body)
    assert await call(client, "/v1/billing/2024-03/users") == {
        "users": [{"userId": "dave", "totalTokens": 2, "costUsd": "0.000000000001",
                   "entryCount": 1}],
        "nextCursor": None,
    }  # fmt: skip
    assert await call(client, "/v1/billing/2024-04/users") == {"users": [], "nextCursor": None}


async def test_billing_pages_return_every_user_once_in_order(
    wstore: RunStore, client: TestClient[Any, Any]
) -> None:
    users = [f"u{i:03d}" for i in range(23)] + ["B", "a|b", "x:y", "ü", "z%", "Ā"]
    await wstore.apply(
        [tokens(f"r-{u}", FEB + i, "m", 1, i, i, user=u) for i, u in enumerate(users)]
    )
    expected = sorted(users)  # code point order = the UTF-8 byte order Redis sorts by
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = "limit=7" + (f"&cursor={cursor}" if cursor else "")
        body = await call(client, f"/v1/billing/2024-02/users?{query}")
        BillingUsers.model_validate(body)
        pages += 1
        seen += [u["userId"] for u in body["users"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
        assert len(body["users"]) == 7
        assert isinstance(cursor, str) and cursor.isascii()
    assert seen == expected
    assert pages == 5  # 29 users: 7 + 7 + 7 + 7 + 1
    by_id = {u: i for i, u in enumerate(users)}
    body = await call(client, "/v1/billing/2024-02/users?limit=1000")
    assert body["nextCursor"] is None
    assert [(u["userId"], u["totalTokens"], u["entryCount"]) for u in body["users"]] == [
        (u, 1 + by_id[u], 1) for u in expected
    ]


async def test_a_full_last_page_has_no_cursor(
    wstore: RunStore, client: TestClient[Any, Any]
) -> None:
    await seed(wstore)
    first = await call(client, "/v1/billing/2024-02/users?limit=2")
    assert first["users"] == [ALICE, BOB] and first["nextCursor"]
    second = await call(client, f"/v1/billing/2024-02/users?limit=1&cursor={first['nextCursor']}")
    assert second == {"users": [CAROL], "nextCursor": None}
    exact = await call(client, "/v1/billing/2024-02/users?limit=3")
    assert exact == {"users": [ALICE, BOB, CAROL], "nextCursor": None}


async def test_billing_default_limit_is_1000(
    wstore: RunStore, client: TestClient[Any, Any]
) -> None:
    await wstore.apply([tokens("r", FEB + i, "m", 1, 1, 0, user=f"u{i:04d}") for i in range(1001)])
    first = await call(client, "/v1/billing/2024-02/users")
    assert [u["userId"] for u in first["users"]] == [f"u{i:04d}" for i in range(1000)]
    assert first["nextCursor"] is not None
    second = await call(client, f"/v1/billing/2024-02/users?cursor={first['nextCursor']}")
    assert second == {
        "users": [{"userId": "u1000", "totalTokens": 2, "costUsd": "0", "entryCount": 1}],
        "nextCursor": None,
    }


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


NOT_UTF8 = base64.urlsafe_b64encode(b"b1|2024-02|\xff").decode()


async def test_bad_limit_or_cursor_is_400(wstore: RunStore, client: TestClient[Any, Any]) -> None:
    await seed(wstore)
    page = await call(client, "/v1/billing/2024-02/users?limit=1")
    again = (await call(client, "/v1/billing/2024-02/users?limit=1"))["nextCursor"]
    assert page["nextCursor"] == again  # deterministic
    for query, param in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=1.5", "limit"),
        ("limit=", "limit"),
        ("limit=1&limit=2", "limit"),
        ("cursor=", "cursor"),
        ("cursor=!!!", "cursor"),
        ("cursor=abc", "cursor"),  # valid base64, not a cursor
        ("cursor=a", "cursor"),  # not even base64
        (f"cursor={b64('b1|2024-02|')}", "cursor"),
        (f"cursor={b64('v9|2024-02|alice')}", "cursor"),
        (f"cursor={b64('alice')}", "cursor"),
        (f"cursor={page['nextCursor']}%3D%3D%3D", "cursor"),
        (f"cursor={NOT_UTF8}", "cursor"),
        (f"cursor={page['nextCursor']}&cursor={page['nextCursor']}", "cursor"),
    ]:
        body = await call(client, f"/v1/billing/2024-02/users?{query}", 400)
        assert body["error"]["code"] == "bad_request"
        assert f"'{param}'" in body["error"]["message"], query
    # a cursor of February is no cursor of March
    body = await call(client, f"/v1/billing/2024-03/users?cursor={page['nextCursor']}", 400)
    assert "'cursor'" in body["error"]["message"] and "2024-02" in body["error"]["message"]


# --- periods, tenants ----------------------------------------------------------------------


@pytest.mark.parametrize("period", BAD_PERIODS)
async def test_bad_period_is_400_on_every_billing_route(
    client: TestClient[Any, Any], period: str
) -> None:
    for method, path in (
        ("GET", f"/v1/billing/{period}/users"),
        ("GET", f"/v1/billing/{period}/invoices"),
        ("POST", f"/v1/billing/{period}/invoices"),
    ):
        body = await call(client, path, 400, method=method)
        assert body["error"]["code"] == "bad_request"
        assert "'period'" in body["error"]["message"]


async def test_a_key_sees_only_its_tenants_billing(
    wstore: RunStore, make_client: ClientFactory
) -> None:
    await seed(wstore)  # tenant default
    await wstore.apply(
        [
            tokens("ra", FEB, "m", 1, 1, 10**12, tenant="tenantA", user="shared"),
            tokens("rb", FEB, "m", 2, 2, 0, tenant="tenantB", user="shared"),
            tokens("rb", FEB, "m", 2, 2, 0, tenant="tenantB", user="only-b", id="ob"),
        ]
    )
    client = await make_client(api_keys=KEYS)
    a = await call(client, "/v1/billing/2024-02/users", key="key-a")
    assert a == {
        "users": [{"userId": "shared", "totalTokens": 2, "costUsd": "1", "entryCount": 1}],
        "nextCursor": None,
    }
    b = await call(client, "/v1/billing/2024-02/users", key="key-b")
    assert [u["userId"] for u in b["users"]] == ["only-b", "shared"]

    made = await call(client, "/v1/billing/2024-02/invoices", method="POST", key="key-a")
    (inv,) = made["invoices"]
    assert (inv["tenantId"], inv["userId"], inv["amountUsd"]) == ("tenantA", "shared", "1")
    assert inv["invoiceId"] == invoice_id("tenantA", "shared", "2024-02")
    await call(client, f"/v1/invoices/{inv['invoiceId']}", key="key-a")
    await call(client, f"/v1/invoices/{inv['invoiceId']}", 404, key="key-b")
    await call(
        client,
        f"/v1/invoices/{inv['invoiceId']}/status",
        404,
        method="POST",
        key="key-b",
        json={"status": "paid"},
    )
    assert await call(client, "/v1/billing/2024-02/invoices", key="key-b") == {"invoices": []}
    await call(client, "/v1/billing/2024-02/invoices", 401)


# --- invoices ------------------------------------------------------------------------------


def expected_invoices(generated_at: int) -> list[dict[str, Any]]:
    def inv(user: str, amount: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "invoiceId": invoice_id("default", user, "2024-02"),
            "tenantId": "default",
            "userId": user,
            "period": "2024-02",
            "amountUsd": amount,
            "lines": lines,
            "adjustmentUsd": "0",
            "status": "pending",
            "generatedAt": generated_at,
        }

    return [
        inv(
            "alice",
            "12.001334",
            [
                {"model": "claude-3-5-sonnet", "tokens": 10, "amountUsd": "12"},
                {"model": "gpt-4o", "tokens": 165, "amountUsd": "0.001334"},
            ],
        ),
        inv("bob", "0", []),
        inv(
            "carol",
            "0.000000000003",
            [{"model": "gpt-4o", "tokens": 3, "amountUsd": "0.000000000003"}],
        ),
    ]


async def test_generate_is_idempotent_and_lists_the_same_invoices(
    wstore: RunStore, make_client: ClientFactory
) -> None:
    await seed(wstore)
    now = [NOW]
    client = await make_client(clock=lambda: now[0])
    assert await call(client, "/v1/billing/2024-02/invoices") == {"invoices": []}

    first = await call(client, "/v1/billing/2024-02/invoices", method="POST")
    assert first == {"invoices": expected_invoices(NOW)}
    assert list(first["invoices"][0]) == [
        "invoiceId", "tenantId", "userId", "period", "amountUsd", "lines", "adjustmentUsd",
        "status", "generatedAt",
    ]  # fmt: skip
    InvoiceList.model_validate(first)

    now[0] = NOW + 60_000
    again = await call(client, "/v1/billing/2024-02/invoices", method="POST")
    assert again == first  # same ids, nothing new (generatedAt unchanged)
    assert await call(client, "/v1/billing/2024-02/invoices") == first
    for inv in first["invoices"]:
        got = await call(client, f"/v1/invoices/{inv['invoiceId']}")
        assert got == inv
        Invoice.model_validate(got)

    march = await call(client, "/v1/billing/2024-03/invoices", method="POST")
    assert [i["userId"] for i in march["invoices"]] == ["dave"]
    assert await call(client, "/v1/billing/2024-05/invoices", method="POST") == {"invoices": []}


async def test_late_entries_become_the_adjustment(
    wstore: RunStore, client: TestClient[Any, Any]
) -> None:
    await seed(wstore)
    await call(client, "/v1/billing/2024-02/invoices", method="POST")
    await wstore.apply([tokens("r9", FEB + 99, "gpt-4o", 1, 1, 250_000_000, user="alice")])
    got = await call(client, f"/v1/invoices/{invoice_id('default', 'alice', '2024-02')}")
    assert (got["amountUsd"], got["adjustmentUsd"]) == ("12.001334", "0.00025")
    users = await call(client, "/v1/billing/2024-02/users")
    assert users["users"][0]["costUsd"] == "12.001584"  # the rollup counts it


async def test_unknown_invoice_is_404(client: TestClient[Any, Any]) -> None:
    body = await call(client, "/v1/invoices/inv_nope", 404)
    assert body["error"]["code"] == "not_found" and "inv_nope" in body["error"]["message"]
    for status in ("paid", "failed", "pending"):
        await call(client, "/v1/invoices/inv_nope/status", 404, method="POST",
                   json={"status": status})  # fmt: skip


async def invoice_of_alice(store: RunStore, client: TestClient[Any, Any]) -> str:
    await seed(store)
    await call(client, "/v1/billing/2024-02/invoices", method="POST")
    return invoice_id("default", "alice", "2024-02")


async def set_status(
    client: TestClient[Any, Any], inv: str, status: Any, code: int = 200
) -> dict[str, Any]:
    body: dict[str, Any] = await call(
        client, f"/v1/invoices/{inv}/status", code, method="POST", json={"status": status}
    )
    return body


@pytest.mark.parametrize(
    "path", [["paid"], ["failed"], ["failed", "paid"]], ids=lambda p: "->".join(p)
)
async def test_allowed_status_changes(
    wstore: RunStore, client: TestClient[Any, Any], path: list[str]
) -> None:
    inv = await invoice_of_alice(wstore, client)
    before = await call(client, f"/v1/invoices/{inv}")
    for status in path:
        body = await set_status(client, inv, status)
        assert body == before | {"status": status}  # the updated invoice, nothing else moved
        Invoice.model_validate(body)
        assert await call(client, f"/v1/invoices/{inv}") == body
    listed = await call(client, "/v1/billing/2024-02/invoices")
    assert [i["status"] for i in listed["invoices"]] == [path[-1], "pending", "pending"]


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ([], "pending"),
        (["paid"], "paid"),
        (["paid"], "failed"),
        (["paid"], "pending"),
        (["failed"], "failed"),
        (["failed"], "pending"),
        (["failed", "paid"], "failed"),
        (["failed", "paid"], "paid"),
    ],
)
async def test_refused_status_changes_are_409(
    wstore: RunStore, client: TestClient[Any, Any], path: list[str], refused: str
) -> None:
    inv = await invoice_of_alice(wstore, client)
    for status in path:
        await set_status(client, inv, status)
    body = await set_status(client, inv, refused, 409)
    assert body["error"]["code"] == "conflict"
    current = path[-1] if path else "pending"
    assert current in body["error"]["message"] and refused in body["error"]["message"]
    assert (await call(client, f"/v1/invoices/{inv}"))["status"] == current


@pytest.mark.parametrize(
    "data",
    [
        b'{"status": "refunded"}',
        b'{"status": "PAID"}',
        b'{"status": ""}',
        b'{"status": 1}',
        b'{"status": null}',
        b'{"status": ["paid"]}',
        b"{}",
        b'{"state": "paid"}',
        b'{"status": "paid", "note": "x"}',
        b'["paid"]',
        b'"paid"',
        b"",
        b"status=paid",
        b'{"status": "paid"',
        b"\xff\xfe",
    ],
)
async def test_malformed_status_body_is_400(
    wstore: RunStore, client: TestClient[Any, Any], data: bytes
) -> None:
    inv = await invoice_of_alice(wstore, client)
    for target in (inv, "inv_nope"):  # the body is checked before the invoice is looked up
        body = await call(client, f"/v1/invoices/{target}/status", 400, method="POST", data=data)
        assert body["error"]["code"] == "bad_request"
    assert (await call(client, f"/v1/invoices/{inv}"))["status"] == "pending"


async def test_invoice_routes_are_in_the_openapi_document(client: TestClient[Any, Any]) -> None:
    doc = await call(client, "/v1/openapi.json")
    schemas = doc["components"]["schemas"]
    for method, path, name in (
        ("get", "/v1/billing/{period}/users", "BillingUsers"),
        ("post", "/v1/billing/{period}/invoices", "InvoiceList"),
        ("get", "/v1/billing/{period}/invoices", "InvoiceList"),
        ("get", "/v1/invoices/{invoiceId}", "Invoice"),
        ("post", "/v1/invoices/{invoiceId}/status", "Invoice"),
    ):
        op = doc["paths"][path][method]
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{name}"}, path
        assert name in schemas and {"401", "500"} <= set(op["responses"])
    status = doc["paths"]["/v1/invoices/{invoiceId}/status"]["post"]
    assert {"400", "404", "409"} <= set(status["responses"])
    assert status["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InvoiceStatusUpdate"
    }
    users = doc["paths"]["/v1/billing/{period}/users"]["get"]
    params = {p["name"]: p for p in users["parameters"]}
    assert set(params) == {"period", "limit", "cursor"}
    assert params["limit"]["schema"]["default"] == 1000
    assert params["limit"]["schema"]["maximum"] == 1000
    assert "nextCursor" in schemas["BillingUsers"]["required"]
