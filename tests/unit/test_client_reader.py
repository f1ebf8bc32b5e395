"""UsageReader against a small aiohttp server: URLs, query parameters, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from usage_client import RunNotFoundError, UsageApiError, UsageReader


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, list[web.Request]]]:
    seen: list[web.Request] = []

    async def rollup(request: web.Request) -> web.Response:
        seen.append(request)
        if request.match_info["runId"] == "missing":
            return web.json_response(
                {"error": {"code": "not_found", "message": "run 'missing' not found"}}, status=404
            )
        return web.json_response({"runId": request.match_info["runId"], "entryCount": 3})

    async def entries(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"entries": [{"id": "a"}], "total": 7})

    async def runs(request: web.Request) -> web.Response:
        seen.append(request)
        if request.query.get("limit") == "0":
            return web.json_response(
                {"error": {"code": "bad_request", "message": "limit: must be >= 1"}}, status=400
            )
        return web.json_response({"runIds": ["r2", "r1"]})

    app = web.Application()
    app.router.add_get("/v1/runs/{runId}/rollup", rollup)
    app.router.add_get("/v1/runs/{runId}/entries", entries)
    app.router.add_get("/v1/runs", runs)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv, seen
    finally:
        await srv.close()


def _reader(srv: TestServer, **kwargs: Any) -> UsageReader:
    return UsageReader(str(srv.make_url("")), **kwargs)


async def test_rollup_and_query(server: tuple[TestServer, list[web.Request]]) -> None:
    srv, seen = server
    reader = _reader(srv, api_key="k1")
    body = await reader.get_rollup("run/1 x", include_sub_agents=False)
    assert body == {"runId": "run/1 x", "entryCount": 3}
    assert seen[-1].query["includeSubAgents"] == "false"
    assert seen[-1].headers["Authorization"] == "Bearer k1"
    await reader.get_rollup("r")
    assert seen[-1].query["includeSubAgents"] == "true"


async def test_entries_filters(server: tuple[TestServer, list[web.Request]]) -> None:
    srv, seen = server
    page = await _reader(srv).get_entries(
        "r",
        kinds=["tokens", "tool"],
        step_range=(1, None),
        time_range=(1000, 2000),
        limit=5,
        offset=10,
    )
    assert page.total == 7 and page.entries == [{"id": "a"}]
    assert dict(seen[-1].query) == {
        "kinds": "tokens,tool",
        "stepMin": "1",
        "start": "1000",
        "end": "2000",
        "limit": "5",
        "offset": "10",
    }
    await _reader(srv).get_entries("r")
    assert dict(seen[-1].query) == {}


async def test_list_runs(server: tuple[TestServer, list[web.Request]]) -> None:
    srv, seen = server
    assert await _reader(srv).list_runs(user_id="u", limit=2) == ["r2", "r1"]
    assert dict(seen[-1].query) == {"userId": "u", "limit": "2"}


async def test_errors(server: tuple[TestServer, list[web.Request]]) -> None:
    srv, _ = server
    with pytest.raises(RunNotFoundError) as info:
        await _reader(srv).get_rollup("missing")
    assert info.value.status == 404 and info.value.code == "not_found"
    assert isinstance(info.value, LookupError)
    with pytest.raises(UsageApiError, match="limit") as bad:
        await _reader(srv).list_runs(limit=0)
    assert bad.value.status == 400 and bad.value.code == "bad_request"


async def test_unreachable() -> None:
    reader = UsageReader("http://127.0.0.1:1", timeout_s=2)
    with pytest.raises(UsageApiError) as info:
        await reader.get_rollup("r")
    assert info.value.status == 0 and info.value.code == "unreachable"
