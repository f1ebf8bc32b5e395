"""USAGE_METRICS_PORT: /metrics, /healthz and /readyz apart from the tenant-facing API.

The worker's real wiring (``create_app``) is checked: which routes each port's aiohttp
application answers, and that the metrics port's server really listens and stops.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from processor.api.operations_server import OperationsServer
from processor.app import UsageApp, create_app
from processor.settings import Settings, SettingsError, load_settings
from tests.integration.harness import build_settings

OPERATIONS = ("/metrics", "/healthz", "/readyz")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Web:
    """What ``UsageApp.on_webserver_init`` reads of Faust's web server."""

    web_app: web.Application


def worker_apps(settings: Settings) -> tuple[UsageApp, web.Application, web.Application | None]:
    """The worker's app, its API port's aiohttp app, and its metrics port's (if any)."""
    app = create_app(settings)
    api = web.Application()
    app.on_webserver_init(_Web(api))
    servers = [s for s in app.extra_services if isinstance(s, OperationsServer)]
    assert len(servers) <= 1
    return app, api, servers[0]._app if servers else None


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Any]]:
    clients: list[TestClient[Any, Any]] = []

    async def start(app: web.Application) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def test_unset_means_the_api_port() -> None:
    settings = build_settings(api_port=7001)
    assert settings.metrics_port is None
    assert settings.operations_port == 7001 and not settings.operations_apart
    same = build_settings(api_port=7001, metrics_port=7001)
    assert same.operations_port == 7001 and not same.operations_apart
    apart = build_settings(api_port=7001, metrics_port=7002)
    assert apart.operations_port == 7002 and apart.operations_apart


def test_metrics_port_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.upper().startswith("USAGE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(os.path.dirname(__file__))  # no .env here
    monkeypatch.setenv("USAGE_METRICS_PORT", "9108")
    assert load_settings().operations_port == 9108
    monkeypatch.setenv("USAGE_METRICS_PORT", "70000")
    with pytest.raises(SettingsError, match="USAGE_METRICS_PORT"):
        load_settings()


async def test_by_default_the_api_port_serves_the_operations_endpoints(
    serve: Callable[[web.Application], Any],
) -> None:
    _, api, apart = worker_apps(build_settings(api_port=free_port()))
    assert apart is None
    client = await serve(api)
    metrics = await client.get("/metrics")
    assert metrics.status == 200
    text = await metrics.text()
    assert "# TYPE usage_entries_total counter" in text
    assert "faust_messages_received_total" in text  # Faust's sensor, same registry
    assert (await client.get("/healthz")).status == 200
    # nothing is started, so not ready: but answered here, not a 404
    assert (await client.get("/readyz")).status == 503
    doc = await (await client.get("/v1/openapi.json")).json()
    assert {"/healthz", "/readyz"} <= set(doc["paths"])


async def test_apart_each_port_serves_only_its_own_routes(
    serve: Callable[[web.Application], Any],
) -> None:
    settings = build_settings(
        api_port=free_port(),
        metrics_port=free_port(),
        api_keys="k:acme",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nobody listens: reads answer 503
    )
    _, api, apart = worker_apps(settings)
    assert apart is not None
    api_client = await serve(api)
    ops_client = await serve(apart)

    for path in OPERATIONS:
        resp = await api_client.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == "not_found"
    # the API itself is all there, behind its keys
    key = {"Authorization": "Bearer k"}
    assert (await api_client.get("/v1/runs")).status == 401
    listed = await api_client.get("/v1/runs", headers=key)
    assert listed.status == 503  # routed, and its Redis is away (a 404 if it were not routed)
    doc = await (await api_client.get("/v1/openapi.json", headers=key)).json()
    assert not {"/healthz", "/readyz", "/metrics"} & set(doc["paths"])

    metrics = await ops_client.get("/metrics")
    assert metrics.status == 200
    assert "# TYPE usage_entries_total counter" in await metrics.text()
    assert (await ops_client.get("/healthz")).status == 200
    ready = await ops_client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["status"] == "not_ready"
    # no tenant data on the metrics port, with or without a key
    for path in ("/v1/runs", "/v1/openapi.json", "/v1/entries"):
        resp = await ops_client.get(path, headers={"Authorization": "Bearer k"})
        assert resp.status == 404, path


async def test_the_metrics_port_listens_until_the_service_stops() -> None:
    port = free_port()
    settings = build_settings(api_port=free_port(), metrics_port=port)
    _, _, apart = worker_apps(settings)
    assert apart is not None
    server = OperationsServer(apart, "127.0.0.1", port)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            assert (await http.get("/metrics")).status_code == 200
    finally:
        await server.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=2) as http:
            await http.get(f"http://127.0.0.1:{port}/healthz")


async def test_a_taken_metrics_port_fails_the_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = build_settings(api_port=free_port(), metrics_port=port)
        _, _, apart = worker_apps(settings)
        assert apart is not None
        server = OperationsServer(apart, "127.0.0.1", port)
        with pytest.raises(OSError):
            await server.start()
        await server.stop()
