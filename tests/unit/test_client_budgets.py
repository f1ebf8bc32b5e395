"""UsageReader.budgets against a small aiohttp server: query, typed result, errors (§3.8)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from usage_client import Budget, Budgets, UsageApiError, UsageReader

_USER_DAY = {
    "rule": "user-daily-spend",
    "subject": {"type": "user", "id": "u/1 x"},
    "window": {"kind": "day", "start": 1795392000000, "end": 1795478400000},
    "metric": "costUsd",
    "observed": "100.25",
    "thresholds": {"warning": "80", "critical": "100"},
    "level": "critical",
    "remaining": "0",
}
_RUN = {
    "rule": "run-token-budget",
    "subject": {"type": "run", "id": "r&1"},
    "window": {"kind": "run", "start": 1795392000000, "end": None},
    "metric": "tokens",
    "observed": "1200",
    "thresholds": {"warning": None, "critical": "100000"},
    "level": "ok",
    "remaining": "98800",
}


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, list[web.Request]]]:
    seen: list[web.Request] = []

    async def budgets(request: web.Request) -> web.Response:
        seen.append(request)
        user_id, run_id = request.query.get("userId"), request.query.get("runId")
        if user_id == "bad":
            return web.json_response(
                {"error": {"code": "bad_request", "message": "userId: must not be empty"}},
                status=400,
            )
        if user_id == "weird":
            return web.json_response({"budgets": [{**_RUN, "observed": 12}], "exceeded": "no"})
        if run_id == "unknown":
            unknown = {**_RUN, "subject": {"type": "run", "id": "unknown"}, "observed": "0"}
            unknown["window"] = {"kind": "run", "start": None, "end": None}
            return web.json_response({"budgets": [unknown], "exceeded": False})
        listed = ([_USER_DAY] if user_id else []) + ([_RUN] if run_id else [])
        return web.json_response(
            {"budgets": listed, "exceeded": any(b["level"] == "critical" for b in listed)}
        )

    app = web.Application()
    app.router.add_get("/v1/budgets", budgets)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv, seen
    finally:
        await srv.close()


def _reader(srv: TestServer, **kwargs: Any) -> UsageReader:
    return UsageReader(str(srv.make_url("")), **kwargs)


async def test_user_and_run(server: tuple[TestServer, list[web.Request]]) -> None:
    srv, seen = server
    result = await _reader(srv, api_key="k1").budgets(user_id="u/1 x", run_id="r&1")
    assert dict(seen[-1].query) == {"userId": "u/1 x", "runId": "r&1"}
    assert seen[-1].raw_path == "/v1/budgets?userId=u%2F1+x&runId=r%261"
    assert seen[-1].headers["Authorization"] == "Bearer k1"
    assert isinstance(result, Budgets) and result.exceeded is True
    assert result.budgets == [
        Budget(
            rule="user-daily-spend",
            subject_type="user",
            subject_id="u/1 x",
            window_kind="day",
            window_start=1795392000000,
            window_end=1795478400000,
            metric="costUsd",
            observed=Decimal("100.25"),
            warning=Decimal("80"),
            critical=Decimal("100"),
            level="critical",
            remaining=Decimal("0"),
        ),
        Budget(
            rule="run-token-budget",
            subject_type="run",
            subject_id="r&1",
            window_kind="run",
            window_start=1795392000000,
            window_end=None,
            metric="tokens",
            observed=Decimal("1200"),
            warning=None,
            critical=Decimal("100000"),
            level="ok",
            remaining=Decimal("98800"),
        ),
    ]


async def test_one_id_is_enough(server: tuple[TestServer, list[web.Request]]) -> None:
    srv, seen = server
    result = await _reader(srv).budgets(run_id="r&1")
    assert dict(seen[-1].query) == {"runId": "r&1"}
    assert "Authorization" not in seen[-1].headers
    assert result.exceeded is False and [b.rule for b in result.budgets] == ["run-token-budget"]
    result = await _reader(srv).budgets(user_id="u")
    assert dict(seen[-1].query) == {"userId": "u"}
    assert result.exceeded is True and result.budgets[0].remaining == Decimal("0")


async def test_unknown_run(server: tuple[TestServer, list[web.Request]]) -> None:
    srv, _ = server
    (budget,) = (await _reader(srv).budgets(run_id="unknown")).budgets
    assert budget.observed == Decimal("0") and budget.level == "ok"
    assert budget.window_start is None and budget.window_end is None


async def test_neither_id(server: tuple[TestServer, list[web.Request]]) -> None:
    srv, seen = server
    with pytest.raises(ValueError, match="user_id"):
        await _reader(srv).budgets()
    assert seen == []


async def test_errors(server: tuple[TestServer, list[web.Request]]) -> None:
    srv, _ = server
    with pytest.raises(UsageApiError, match="userId") as bad:
        await _reader(srv).budgets(user_id="bad")
    assert bad.value.status == 400 and bad.value.code == "bad_request"
    with pytest.raises(UsageApiError) as weird:
        await _reader(srv).budgets(user_id="weird")
    assert weird.value.code == "bad_response"


async def test_unreachable() -> None:
    reader = UsageReader("http://127.0.0.1:1", timeout_s=2)
    with pytest.raises(UsageApiError) as info:
        await reader.budgets(user_id="u")
    assert info.value.status == 0 and info.value.code == "unreachable"
