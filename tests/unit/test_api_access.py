"""Errors and access (CONTRACT §3.7): 400s naming the parameter, JSON 404/405/500/503, keys."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from processor.stack.ports import pick_port
from processor.store.keys import Keys
from processor.store.runs import RunStore
from schemas.api import ErrorResponse
from tests.unit.api_support import (
    T0,
    build_app,
    make_settings,
    make_store,
    tokens,
    unique_prefix,
)

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
KEYS = "key-a:tenantA, key-b:tenantB"


@pytest.fixture
async def make_client(prefix: str, store: RunStore) -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(run_store: RunStore | None = None, **settings: Any) -> TestClient[Any, Any]:
        app = build_app(make_settings(prefix, **settings), run_store or store)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()


async def expect_error(
    client: TestClient[Any, Any],
    path: str,
    status: int,
    code: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    resp = await client.request(method, path, headers=headers)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    ErrorResponse.model_validate(body)
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


# --- 400: every bad query parameter, named in the message ---------------------------------

BAD_QUERIES = [
    ("/v1/runs/r/rollup?includeSubAgents=yes", "includeSubAgents"),
    ("/v1/runs/r/rollup?includeSubAgents=1", "includeSubAgents"),
    ("/v1/runs/r/rollup?includeSubAgents=", "includeSubAgents"),
    ("/v1/runs/r/rollup?includeSubAgents=true&includeSubAgents=false", "includeSubAgents"),
    ("/v1/runs/r/entries?kinds=bogus", "kinds"),
    ("/v1/runs/r/entries?kinds=tokens,", "kinds"),
    ("/v1/runs/r/entries?kinds=Tokens", "kinds"),
    ("/v1/runs/r/entries?kinds=", "kinds"),
    ("/v1/runs/r/entries?stepMin=-1", "stepMin"),
    ("/v1/runs/r/entries?stepMin=abc", "stepMin"),
    ("/v1/runs/r/entries?stepMin=1.5", "stepMin"),
    ("/v1/runs/r/entries?stepMax=1e3", "stepMax"),
    ("/v1/runs/r/entries?stepMax=-3", "stepMax"),
    ("/v1/runs/r/entries?stepMin=5&stepMax=4", "stepMin"),
    ("/v1/runs/r/entries?start=-5", "start"),
    ("/v1/runs/r/entries?start=x", "start"),
    ("/v1/runs/r/entries?end=1.0", "end"),
    ("/v1/runs/r/entries?start=20&end=10", "start"),
    ("/v1/runs/r/entries?limit=0", "limit"),
    ("/v1/runs/r/entries?limit=1001", "limit"),
    ("/v1/runs/r/entries?limit=-1", "limit"),
    ("/v1/runs/r/entries?limit=ten", "limit"),
    ("/v1/runs/r/entries?limit=%2B5", "limit"),
    ("/v1/runs/r/entries?limit=%205", "limit"),
    ("/v1/runs/r/entries?limit=", "limit"),
    ("/v1/runs/r/entries?offset=-1", "offset"),
    ("/v1/runs/r/entries?offset=1.0", "offset"),
    ("/v1/runs/r/entries?offset=99999999999999999999", "offset"),
    ("/v1/runs/r/entries?offset=9223372036854775808", "offset"),
    ("/v1/runs/r/entries?offset=%D9%A3", "offset"),  # Arabic-Indic digit three
    ("/v1/runs?limit=0", "limit"),
    ("/v1/runs?limit=1001", "limit"),
    ("/v1/runs?limit=5&limit=6", "limit"),
    ("/v1/runs?since=-1", "since"),
    ("/v1/runs?since=yesterday", "since"),
    ("/v1/runs?userId=", "userId"),
    ("/v1/runs?agentName=", "agentName"),
]


@pytest.mark.parametrize(("path", "param"), BAD_QUERIES)
async def test_bad_query_parameter_is_400_naming_it(
    store: RunStore, client: TestClient[Any, Any], path: str, param: str
) -> None:
    await store.apply([tokens("r", T0, "m", 1, 1, 0)])
    error = await expect_error(client, path, 400, "bad_request")
    assert f"'{param}'" in error["message"]


async def test_bad_parameter_of_an_unknown_run_is_still_400(
    client: TestClient[Any, Any],
) -> None:
    await expect_error(client, "/v1/runs/nope/entries?limit=0", 400, "bad_request")


async def test_limits_at_the_edges_are_accepted(
    store: RunStore, client: TestClient[Any, Any]
) -> None:
    await store.apply([tokens("r", T0, "m", 1, 1, 0)])
    for path in (
        "/v1/runs/r/entries?limit=1&offset=0&stepMin=0&stepMax=0&start=0&end=0",
        "/v1/runs/r/entries?limit=1000&offset=9223372036854775807",
        "/v1/runs?limit=1&since=0",
        "/v1/runs?limit=1000&unknownParameter=ignored",
    ):
        resp = await client.get(path)
        assert resp.status == 200, (path, await resp.text())


# --- 404, 405, 500, 503 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/nope", "/v1", "/v1/runs/r", "/v1/runs/r/rollup/extra", "/nope"]
)
async def test_unknown_routes_are_json_404(client: TestClient[Any, Any], path: str) -> None:
    await expect_error(client, path, 404, "not_found")


async def test_wrong_method_is_json_405(client: TestClient[Any, Any]) -> None:
    error = await expect_error(client, "/v1/runs", 405, "method_not_allowed", method="POST")
    assert "GET" in error["message"]
    resp = await client.delete("/v1/runs/r/rollup")
    assert resp.status == 405 and "GET" in resp.headers["Allow"]


async def test_unexpected_exception_is_json_500_and_logged(
    redis: Redis, prefix: str, client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # a run hash no writer would produce: its field cannot be decoded
    await redis.hset(
        Keys(prefix).run("default", "broken"), mapping={"n": "1", "tk|model-without-type": "1"}
    )  # type: ignore[misc]
    with caplog.at_level(logging.ERROR, logger="processor.api"):
        error = await expect_error(client, "/v1/runs/broken/rollup", 500, "internal")
    assert error["message"] == "internal error"  # no internals leak to the caller
    assert any("GET /v1/runs/broken/rollup" in r.getMessage() for r in caplog.records)


async def test_redis_down_is_json_503(make_client: ClientFactory) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{pick_port()}/0", decode_responses=True)
    try:
        client = await make_client(make_store(dead, unique_prefix()))
        for path in ("/v1/runs/r/rollup", "/v1/runs/r/entries", "/v1/runs"):
            await expect_error(client, path, 503, "unavailable")
        assert (await client.get("/healthz")).status == 200
    finally:
        await dead.aclose()


# --- API keys and tenants ----------------------------------------------------------------


async def seed_two_tenants(store: RunStore) -> None:
    await store.apply(
        [
            tokens("a-only", T0, "m", 1, 1, 10**12, tenant="tenantA", user="ua"),
            tokens("same-id", T0 + 1, "m", 10, 10, 0, tenant="tenantA", user="ua"),
            tokens("same-id", T0 + 2, "m", 20, 20, 0, tenant="tenantB", user="ub"),
            tokens("default-run", T0 + 3, "m", 1, 1, 0, user="ua"),
        ]
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_key_sees_only_its_tenant(store: RunStore, make_client: ClientFactory) -> None:
    await seed_two_tenants(store)
    client = await make_client(api_keys=KEYS)

    resp = await client.get("/v1/runs/a-only/rollup", headers=bearer("key-a"))
    assert resp.status == 200
    assert (await resp.json())["tenantId"] == "tenantA"
    for path in ("/v1/runs/a-only/rollup", "/v1/runs/a-only/entries"):
        await expect_error(client, path, 404, "not_found", headers=bearer("key-b"))
    await expect_error(
        client, "/v1/runs/default-run/rollup", 404, "not_found", headers=bearer("key-a")
    )

    for key, tenant, total in (("key-a", "tenantA", 20), ("key-b", "tenantB", 40)):
        resp = await client.get("/v1/runs/same-id/rollup", headers=bearer(key))
        body = await resp.json()
        assert (body["tenantId"], body["tokens"]["total"]) == (tenant, total)
        resp = await client.get("/v1/runs/same-id/entries", headers=bearer(key))
        (entry,) = (await resp.json())["entries"]
        assert entry["tenantId"] == tenant

    resp = await client.get("/v1/runs", headers=bearer("key-a"))
    assert await resp.json() == {"runIds": ["same-id", "a-only"]}
    resp = await client.get("/v1/runs?userId=ua", headers=bearer("key-b"))
    assert await resp.json() == {"runIds": []}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer key-a-suffix"},
        {"Authorization": "Bearer key"},
        {"Authorization": "Basic key-a"},
        {"Authorization": "Bearer"},
        {"Authorization": "key-a"},
        {"Authorization": ""},
        {"Authorization": "Bearer tenantA"},
    ],
)
async def test_missing_or_unknown_key_is_401(
    store: RunStore, make_client: ClientFactory, headers: dict[str, str]
) -> None:
    await seed_two_tenants(store)
    client = await make_client(api_keys=KEYS)
    for path in ("/v1/runs/a-only/rollup", "/v1/runs", "/v1/openapi.json", "/v1/no-such-route"):
        await expect_error(client, path, 401, "unauthorized", headers=headers)
    resp = await client.get("/v1/runs", headers=headers)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_bearer_scheme_is_case_insensitive(
    store: RunStore, make_client: ClientFactory
) -> None:
    await seed_two_tenants(store)
    client = await make_client(api_keys=KEYS)
    for header in ("bearer key-a", "BEARER key-a", "Bearer   key-a  "):
        resp = await client.get("/v1/runs/a-only/rollup", headers={"Authorization": header})
        assert resp.status == 200, header


async def test_operations_endpoints_need_no_key(make_client: ClientFactory) -> None:
    client = await make_client(api_keys=KEYS)
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    await expect_error(client, "/v1/nope", 404, "not_found", headers=bearer("key-b"))


async def test_without_keys_the_api_serves_tenant_default_and_warns(
    store: RunStore, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await seed_two_tenants(store)
    with caplog.at_level(logging.WARNING, logger="processor.api"):
        client = await make_client()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "unauthenticated" in warnings[0] and "'default'" in warnings[0]

    resp = await client.get("/v1/runs/default-run/rollup")
    assert (await resp.json())["tenantId"] == "default"
    await expect_error(client, "/v1/runs/a-only/rollup", 404, "not_found")
    resp = await client.get("/v1/runs", headers=bearer("anything"))  # ignored without keys
    assert await resp.json() == {"runIds": ["default-run"]}


async def test_with_keys_no_warning_is_logged(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="processor.api"):
        await make_client(api_keys=KEYS)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
