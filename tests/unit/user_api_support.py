"""Helpers of the API tests over users' windows, billing, alerts and budgets: an app with
every store, a test client, and a JSON call that checks the error shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from processor.api.context import ApiContext, Clock
from processor.api.routes import setup_routes
from processor.domain.windows import Retention
from processor.settings import Settings
from processor.store.invoices import InvoiceStore
from processor.store.keys import Keys
from processor.store.runs import RunStore
from processor.store.user_queries import UserQueries
from schemas.api import ErrorResponse
from tests.unit.api_support import (
    make_queries,
    ready_probe,
)

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
KEYS = "key-a:tenantA, key-b:tenantB"
#: Windows kept until deleted, so the fixed dates below never expire under the tests.
KEEP_ALL = Retention(hour_s=0, day_s=0, month_s=0)


def ms(text: str) -> int:
    """Epoch ms of a UTC ISO time such as ``2024-02-10T12:00:00.250``."""
    when = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(when.replace(microsecond=0).timestamp()) * 1000 + when.microsecond // 1000


NOW = ms("2024-02-29T10:00")


def make_window_store(redis: Redis, prefix: str) -> RunStore:
    return RunStore(redis, Keys(prefix), dedup_ttl_s=3600, entry_ttl_s=3600, retention=KEEP_ALL)


def build_full_app(settings: Settings, store: RunStore, clock: Clock) -> web.Application:
    """The API with every store: runs, users' windows, invoices; ``clock`` is "now"."""
    redis, keys = store._redis, store._keys
    app = web.Application()
    ctx = ApiContext(
        settings=settings,
        runs=make_queries(store, settings),
        registry=CollectorRegistry(),
        readiness=ready_probe(),
        users=UserQueries(redis, keys),
        invoices=InvoiceStore(redis, keys),
        clock=clock,
    )
    setup_routes(app, ctx)
    return app


async def start_client(app: web.Application) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


async def call(
    client: TestClient[Any, Any],
    path: str,
    status: int = 200,
    *,
    method: str = "GET",
    key: str | None = None,
    **kw: Any,
) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    resp = await client.request(method, path, headers=headers, **kw)
    body = await resp.json()
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    if status >= 400:
        ErrorResponse.model_validate(body)
        assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    return body


BAD_PERIODS = ["2024-13", "2024-00", "2024-1", "24-01", "2024-01-01", "abcd-ef", "0000-01",
               "2024_01", "%D9%A2024-01", "2024-1%20"]  # fmt: skip
