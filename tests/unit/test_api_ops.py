"""Operations (CONTRACT §3.6): /healthz, /readyz, /v1/openapi.json, the metrics handler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from processor.api.context import Readiness
from processor.api.openapi import Param, RouteSpec, add_route
from processor.api.ops import metrics_handler
from processor.store.runs import RunStore
from tests.unit.api_support import (
    build_app,
    make_settings,
    make_store,
    ready_probe,
    redis_server,
    unique_prefix,
)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RunStore]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield make_store(client, unique_prefix())
    await client.aclose()


async def serve(app: web.Application) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_healthz(store: RunStore) -> None:
    client = await serve(build_app(make_settings("p"), store, ready_probe(False)))
    try:
        resp = await client.get("/healthz")
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (Readiness(kafka=True, redis=True, partitions_assigned=True), 200),
        (Readiness(kafka=False, redis=True, partitions_assigned=True, detail="no broker"), 503),
        (Readiness(kafka=True, redis=False, partitions_assigned=True), 503),
        (Readiness(kafka=True, redis=True, partitions_assigned=False), 503),
        (
            Readiness(
                kafka=True, redis=True, partitions_assigned=True, applying=False, detail="stall"
            ),
            503,
        ),
    ],
)
async def test_readyz_reports_every_part(store: RunStore, state: Readiness, status: int) -> None:
    async def probe() -> Readiness:
        return state

    client = await serve(build_app(make_settings("p"), store, probe))
    try:
        resp = await client.get("/readyz")
        assert resp.status == status
        assert await resp.json() == {
            "status": "ready" if status == 200 else "not_ready",
            "kafka": state.kafka,
            "redis": state.redis,
            "partitionsAssigned": state.partitions_assigned,
            "applying": state.applying,
            "detail": state.detail,
        }
    finally:
        await client.close()


async def test_readyz_is_503_when_the_probe_itself_fails(store: RunStore) -> None:
    async def probe() -> Readiness:
        raise ConnectionError("broker gone")

    client = await serve(build_app(make_settings("p"), store, probe))
    try:
        resp = await client.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["status"] == "not_ready" and "broker gone" in body["detail"]
    finally:
        await client.close()


def resolve(doc: dict[str, Any], node: Any) -> None:
    """Every ``$ref`` in ``node`` points at an existing component."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].removeprefix("#/components/schemas/")
            assert name in doc["components"]["schemas"], node["$ref"]
        for value in node.values():
            resolve(doc, value)
    elif isinstance(node, list):
        for value in node:
            resolve(doc, value)


async def test_openapi_lists_every_route_with_parameters_and_schemas(store: RunStore) -> None:
    app = build_app(make_settings("p"), store)

    async def extra(request: web.Request) -> web.Response:
        return web.json_response({})

    # routes other modules add through add_route are listed too
    add_route(
        app,
        RouteSpec("GET", "/v1/users/{userId}/usage", "getUserUsage", "usage", "UserUsage",
                  params=(Param("userId", "path", {"type": "string"}),)),
        extra,
        {"UserUsage": {"type": "object"}},
    )  # fmt: skip
    client = await serve(app)
    try:
        resp = await client.get("/v1/openapi.json")
        assert resp.status == 200
        doc = await resp.json()
    finally:
        await client.close()

    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert set(doc["paths"]) == {
        "/v1/runs/{runId}/rollup",
        "/v1/runs/{runId}/entries",
        "/v1/runs",
        "/v1/entries",
        "/v1/openapi.json",
        "/healthz",
        "/readyz",
        "/v1/users/{userId}/usage",
    }
    ingest = doc["paths"]["/v1/entries"]["post"]
    assert ingest["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/IngestRequest"
    }
    assert "/metrics" not in doc["paths"]
    resolve(doc, doc)

    def params(path: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in doc["paths"][path]["get"]["parameters"]}

    assert set(params("/v1/runs/{runId}/rollup")) == {"runId", "includeSubAgents"}
    assert params("/v1/runs/{runId}/rollup")["runId"]["required"] is True
    assert params("/v1/runs/{runId}/rollup")["includeSubAgents"]["schema"]["default"] is True
    entries = params("/v1/runs/{runId}/entries")
    assert set(entries) == {"runId", "kinds", "stepMin", "stepMax", "start", "end", "limit",
                            "offset"}  # fmt: skip
    assert entries["limit"]["schema"] == {
        "type": "integer", "minimum": 1, "maximum": 1000, "default": 100,
    }  # fmt: skip
    assert set(params("/v1/runs")) == {"userId", "agentName", "since", "limit"}

    rollup = doc["paths"]["/v1/runs/{runId}/rollup"]["get"]
    ok = rollup["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/RunRollup"}
    assert {"200", "400", "401", "404", "500"} <= set(rollup["responses"])
    assert rollup["security"] == [{"bearer": []}]
    schema = doc["components"]["schemas"]["RunRollup"]
    assert schema["required"] == list(schema["properties"])
    assert set(schema["properties"]) == {
        "runId", "userId", "tenantId", "agentName", "tokens", "tokensByModel", "costUsd",
        "costByModel", "tokensIncludingSubAgents", "costIncludingSubAgentsUsd",
        "customIncludingSubAgents", "toolStats", "subAgentStats", "custom", "subAgentRunIds",
        "startedAt", "lastUpdatedAt", "entryCount",
    }  # fmt: skip
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert set(doc["paths"]["/readyz"]["get"]["responses"]) >= {"200", "503"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    error = doc["paths"]["/v1/runs"]["get"]["responses"]["400"]["content"]["application/json"]
    assert error["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


async def test_metrics_handler_renders_the_context_registry(store: RunStore) -> None:
    registry = CollectorRegistry()
    Counter("usage_entries", "entries", ["kind", "outcome"], registry=registry).labels(
        "tokens", "accepted"
    ).inc(3)
    app = build_app(make_settings("p", api_keys="k:t"), store, registry=registry)
    app.router.add_get("/metrics", metrics_handler)
    client = await serve(app)
    try:
        resp = await client.get("/metrics")  # no key needed outside /v1
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
        assert 'usage_entries_total{kind="tokens",outcome="accepted"} 3.0' in text
    finally:
        await client.close()


def test_setup_routes_does_not_register_metrics(store: RunStore) -> None:
    app = build_app(make_settings("p"), store)
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert "/metrics" not in paths
    assert "/v1/runs/{runId}/rollup" in paths
