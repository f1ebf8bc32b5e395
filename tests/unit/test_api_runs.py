"""GET /v1/runs/{runId}/rollup, /v1/runs/{runId}/entries, /v1/runs against a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from processor.store.runs import RunStore
from schemas.api import EntriesPage, RunList, RunRollup
from tests.unit.api_support import (
    T0,
    build_app,
    custom,
    make_settings,
    subagent,
    tokens,
    tool,
)

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client(store: RunStore, prefix: str) -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(**settings: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(
            TestServer(build_app(make_settings(prefix, **settings), store))
        )
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()


async def get_json(client: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    resp = await client.get(path)
    body = await resp.json()
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    return body


# --- rollup ------------------------------------------------------------------------------


async def seed_tree(store: RunStore) -> None:
    """root -> c1, c2; c1 -> c3; c3 -> root (cycle) and c3 -> c1 (c1 referenced twice)."""
    await store.apply(
        [
            tokens("root", T0 + 10, "gpt-4o", 100, 50, 1_234_000_000, reasoning=10, cached=20,
                   agent="planner", step=1),
            tokens("root", T0 + 30, "gpt-4o", 10, 5, 100_000_000, agent="planner"),
            tool("root", T0 + 5, "search", True, 1.5, agent="planner"),
            tool("root", T0 + 6, "search", False, 2, agent="planner"),
        ]
    )  # fmt: skip
    await store.apply(
        [
            tokens("root", T0 + 20, "claude-3-5-sonnet", 7, 3, 12 * 10**12, agent="planner"),
            tool("root", T0 + 7, "fetch", True, 3, agent="planner"),
            subagent("root", T0 + 40, "researcher", "c1", True, 100, agent="planner"),
            subagent("root", T0 + 41, "researcher", "c2", False, 50.25, agent="planner"),
            custom("root", T0 + 2, "api_calls", "tavily", 2, agent="planner"),
            custom("root", T0 + 50, "api_calls", "tavily", 1.5, agent="planner"),
            custom("root", T0 + 51, "llm.embeddings", "n", 3, agent="planner"),
            tokens("c1", T0 + 100, "gpt-4o", 1000, 200, 5_000_000_000),
            custom("c1", T0 + 101, "api_calls", "tavily", 1),
            subagent("c1", T0 + 102, "coder", "c3"),
            tokens("c2", T0 + 100, "gpt-4o", 1, 1, 1),
        ]
    )
    await store.apply(
        [
            tokens("c3", T0 + 200, "claude-3-5-sonnet", 2, 2, 2),
            subagent("c3", T0 + 201, "planner", "root"),
            subagent("c3", T0 + 202, "researcher", "c1"),
            subagent("c3", T0 + 203, "ghost", "never-seen"),
        ]
    )


CONTRACT_FIELD_ORDER = [
    "runId", "userId", "tenantId", "agentName", "tokens", "tokensByModel", "costUsd",
    "costByModel", "tokensIncludingSubAgents", "costIncludingSubAgentsUsd",
    "customIncludingSubAgents", "toolStats", "subAgentStats", "custom", "subAgentRunIds",
    "startedAt", "lastUpdatedAt", "entryCount",
]  # fmt: skip


def tc(prompt: int, completion: int, reasoning: int = 0, cached: int = 0) -> dict[str, int]:
    return {
        "prompt": prompt,
        "completion": completion,
        "reasoning": reasoning,
        "cached": cached,
        "cacheWrite": 0,
        "total": prompt + completion,
    }


def root_own() -> dict[str, Any]:
    """Every field of root's rollup that does not depend on includeSubAgents."""
    return {
        "runId": "root",
        "userId": "u1",
        "tenantId": "default",
        "agentName": "planner",
        "tokens": tc(117, 58, 10, 20),
        "tokensByModel": {"claude-3-5-sonnet": tc(7, 3), "gpt-4o": tc(110, 55, 10, 20)},
        "costUsd": "12.001334",
        "costByModel": {"claude-3-5-sonnet": "12", "gpt-4o": "0.001334"},
        "toolStats": {
            "totalCalls": 3,
            "successfulCalls": 2,
            "failedCalls": 1,
            "totalDurationMs": 6.5,
            "byTool": {
                "fetch": {"calls": 1, "successfulCalls": 1, "failedCalls": 0,
                          "totalDurationMs": 3},
                "search": {"calls": 2, "successfulCalls": 1, "failedCalls": 1,
                           "totalDurationMs": 3.5},
            },
        },
        "subAgentStats": {
            "totalCalls": 2,
            "successfulCalls": 1,
            "failedCalls": 1,
            "totalDurationMs": 150.25,
            "byType": {
                "researcher": {"calls": 2, "successfulCalls": 1, "failedCalls": 1,
                               "totalDurationMs": 150.25},
            },
        },
        "custom": {"api_calls": {"tavily": 3.5}, "llm.embeddings": {"n": 3}},
        "subAgentRunIds": ["c1", "c2"],
        "startedAt": T0 + 2,
        "lastUpdatedAt": T0 + 51,
        "entryCount": 11,
    }  # fmt: skip


async def test_rollup_includes_sub_agent_tree_once_each_cycle_cut(
    store: RunStore, client: TestClient[Any, Any]
) -> None:
    await seed_tree(store)
    body = await get_json(client, "/v1/runs/root/rollup")
    expected = root_own() | {
        # root + c1 (1000/200) + c2 (1/1) + c3 (2/2): c1 once although c3 references it
        "tokensIncludingSubAgents": tc(1120, 261, 10, 20),
        "costIncludingSubAgentsUsd": "12.006334000003",
        "customIncludingSubAgents": {"api_calls": {"tavily": 4.5}, "llm.embeddings": {"n": 3}},
    }
    assert body == expected
    assert list(body) == CONTRACT_FIELD_ORDER
    RunRollup.model_validate(body)  # the response models the OpenAPI document publishes
    assert await get_json(client, "/v1/runs/root/rollup?includeSubAgents=true") == expected


@pytest.mark.parametrize("value", ["false", "FALSE", "False"])
async def test_rollup_without_sub_agents_repeats_own_figures(
    store: RunStore, client: TestClient[Any, Any], value: str
) -> None:
    await seed_tree(store)
    body = await get_json(client, f"/v1/runs/root/rollup?includeSubAgents={value}")
    own = root_own()
    assert body == own | {
        "tokensIncludingSubAgents": own["tokens"],
        "costIncludingSubAgentsUsd": own["costUsd"],
        "customIncludingSubAgents": own["custom"],
    }


async def test_rollup_of_a_run_inside_a_cycle_reaches_its_ancestors(
    store: RunStore, client: TestClient[Any, Any]
) -> None:
    await seed_tree(store)
    body = await get_json(client, "/v1/runs/c3/rollup")
    # c3 -> root -> c1, c2 (and c1 -> c3 cut): the whole tree, every run once
    assert body["tokensIncludingSubAgents"] == tc(1120, 261, 10, 20)
    assert body["costIncludingSubAgentsUsd"] == "12.006334000003"
    assert body["subAgentRunIds"] == ["c1", "never-seen", "root"]
    assert body["agentName"] is None
    assert body["subAgentStats"]["byType"] == {
        "ghost": {"calls": 1, "successfulCalls": 1, "failedCalls": 0, "totalDurationMs": 10},
        "planner": {"calls": 1, "successfulCalls": 1, "failedCalls": 0, "totalDurationMs": 10},
        "researcher": {"calls": 1, "successfulCalls": 1, "failedCalls": 0, "totalDurationMs": 10},
    }


async def test_rollup_tree_walk_stops_at_the_depth_limit(
    store: RunStore, make_client: ClientFactory
) -> None:
    await seed_tree(store)
    client = await make_client(subagent_depth_limit=1)
    body = await get_json(client, "/v1/runs/root/rollup")
    # root + c1 + c2 only: c3 sits two levels down
    assert body["tokensIncludingSubAgents"] == tc(1118, 259, 10, 20)
    assert body["costIncludingSubAgentsUsd"] == "12.006334000001"
    assert body["customIncludingSubAgents"] == {
        "api_calls": {"tavily": 4.5},
        "llm.embeddings": {"n": 3},
    }


async def test_rollup_of_a_run_with_only_custom_entries(
    store: RunStore, client: TestClient[Any, Any]
) -> None:
    await store.apply([custom("solo", T0, "api_calls", "x", -2.25, user="u9")])
    body = await get_json(client, "/v1/runs/solo/rollup")
    zero_calls = {"totalCalls": 0, "successfulCalls": 0, "failedCalls": 0, "totalDurationMs": 0}
    assert body == {
        "runId": "solo",
        "userId": "u9",
        "tenantId": "default",
        "agentName": None,
        "tokens": tc(0, 0),
        "tokensByModel": {},
        "costUsd": "0",
        "costByModel": {},
        "tokensIncludingSubAgents": tc(0, 0),
        "costIncludingSubAgentsUsd": "0",
        "customIncludingSubAgents": {"api_calls": {"x": -2.25}},
        "toolStats": zero_calls | {"byTool": {}},
        "subAgentStats": zero_calls | {"byType": {}},
        "custom": {"api_calls": {"x": -2.25}},
        "subAgentRunIds": [],
        "startedAt": T0,
        "lastUpdatedAt": T0,
        "entryCount": 1,
    }
    RunRollup.model_validate(body)


async def test_rollup_of_an_unknown_run_is_404(client: TestClient[Any, Any]) -> None:
    body = await get_json(client, "/v1/runs/nope/rollup", 404)
    assert body["error"]["code"] == "not_found"
    assert "nope" in body["error"]["message"]


async def test_run_ids_with_reserved_characters_round_trip(
    store: RunStore, client: TestClient[Any, Any]
) -> None:
    run = "tenant/run:1 ü%"
    await store.apply([tokens(run, T0, "m", 1, 1, 0)])
    body = await get_json(client, "/v1/runs/tenant%2Frun%3A1%20%C3%BC%25/rollup")
    assert body["runId"] == run
    page = await get_json(client, "/v1/runs/tenant%2Frun%3A1%20%C3%BC%25/entries")
    assert page["total"] == 1


# --- entries -----------------------------------------------------------------------------


async def seed_entries(store: RunStore) -> list[str]:
    """Ten entries of run r; returns their ids in (timestamp, id) order."""
    batch = [
        tokens("r", T0 + 30, "m", 1, 1, 10**12, id="b", step=3),
        tokens("r", T0 + 30, "m", 2, 2, 2 * 10**12, id="a", step=3),
        tool("r", T0 + 10, "t", True, 1, id="c", step=1),
        tool("r", T0 + 20, "t", False, 1, id="d"),
        subagent("r", T0 + 40, "s", "child", id="e", step=4),
        custom("r", T0 + 50, "x", "y", 1, id="f", step=5),
        custom("r", T0 + 5, "x", "y", 1, id="g", step=0),
        tokens("r", T0 + 60, "m", 3, 3, 0, id="h", step=6),
        tool("r", T0 + 70, "t", True, 1, id="i", step=7),
        tokens("other", T0 + 1, "m", 1, 1, 0, id="z"),
    ]
    await store.apply(batch)
    return ["g", "c", "d", "a", "b", "e", "f", "h", "i"]


async def test_entries_are_raw_ordered_by_timestamp_then_id(
    store: RunStore, client: TestClient[Any, Any]
) -> None:
    order = await seed_entries(store)
    page = await get_json(client, "/v1/runs/r/entries")
    assert [e["id"] for e in page["entries"]] == order
    assert page["total"] == 9
    assert list(page) == ["entries", "total"]
    EntriesPage.model_validate(page)
    first_tokens = page["entries"][3]
    assert first_tokens == {
        "id": "a",
        "kind": "tokens",
        "runId": "r",
        "userId": "u1",
        "timestamp": T0 + 30,
        "stepCount": 3,
        "model": "m",
        "tokens": {"prompt": 2, "completion": 2},
        "costUsd": "2",
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("kinds=tokens", ["a", "b", "h"]),
        ("kinds=tool,custom", ["g", "c", "d", "f", "i"]),
        ("kinds=tokens,%20subagent", ["a", "b", "e", "h"]),
        ("kinds=tokens,tokens", ["a", "b", "h"]),
        ("stepMin=3&stepMax=5", ["a", "b", "e", "f"]),
        ("stepMax=0", ["g", "d"]),  # d has no stepCount: counts as 0
        ("stepMin=7", ["i"]),
        ("stepMin=3&stepMax=3", ["a", "b"]),
        (f"start={T0 + 20}&end={T0 + 40}", ["d", "a", "b", "e"]),
        (f"start={T0 + 60}", ["h", "i"]),
        (f"end={T0 + 5}", ["g"]),
        (f"kinds=tokens&stepMin=4&start={T0}", ["h"]),
        ("stepMin=100", []),
    ],
)
async def test_entries_filters_are_inclusive(
    store: RunStore, client: TestClient[Any, Any], query: str, expected: list[str]
) -> None:
    await seed_entries(store)
    page = await get_json(client, f"/v1/runs/r/entries?{query}")
    assert [e["id"] for e in page["entries"]] == expected
    assert page["total"] == len(expected)


@pytest.mark.parametrize(
    ("query", "ids", "total"),
    [
        ("limit=2", ["g", "c"], 9),
        ("limit=2&offset=2", ["d", "a"], 9),
        ("offset=8", ["i"], 9),
        ("offset=9", [], 9),
        ("offset=1000000", [], 9),
        ("limit=1000", ["g", "c", "d", "a", "b", "e", "f", "h", "i"], 9),
        ("kinds=tokens&limit=1&offset=1", ["b"], 3),
    ],
)
async def test_entries_paging_counts_total_before_paging(
    store: RunStore, client: TestClient[Any, Any], query: str, ids: list[str], total: int
) -> None:
    await seed_entries(store)
    page = await get_json(client, f"/v1/runs/r/entries?{query}")
    assert [e["id"] for e in page["entries"]] == ids
    assert page["total"] == total


async def test_entries_default_limit_is_100(store: RunStore, client: TestClient[Any, Any]) -> None:
    await store.apply([custom("big", T0 + i, "x", "y", 1, id=f"n{i:04d}") for i in range(150)])
    page = await get_json(client, "/v1/runs/big/entries")
    assert page["total"] == 150
    assert [e["id"] for e in page["entries"]] == [f"n{i:04d}" for i in range(100)]


async def test_entries_of_an_unknown_run_are_404(client: TestClient[Any, Any]) -> None:
    body = await get_json(client, "/v1/runs/nope/entries", 404)
    assert body["error"]["code"] == "not_found"


# --- run listing ---------------------------------------------------------------------------


async def seed_runs(store: RunStore) -> None:
    await store.apply(
        [
            tokens("r1", T0 + 100, "m", 1, 1, 0, user="alice", agent="planner"),
            tokens("r2", T0 + 200, "m", 1, 1, 0, user="bob", agent="planner"),
            tokens("r3", T0 + 300, "m", 1, 1, 0, user="alice", agent="coder"),
            tokens("r4", T0 + 400, "m", 1, 1, 0, user="alice"),
        ]
    )
    # a later entry of r1 does not make it newer: runs are ordered by startedAt
    await store.apply([tokens("r1", T0 + 999, "m", 1, 1, 0, user="alice", agent="planner")])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["r4", "r3", "r2", "r1"]),
        ("limit=2", ["r4", "r3"]),
        ("userId=alice", ["r4", "r3", "r1"]),
        ("userId=bob", ["r2"]),
        ("userId=nobody", []),
        ("agentName=planner", ["r2", "r1"]),
        ("agentName=coder", ["r3"]),
        ("userId=alice&agentName=planner", ["r1"]),
        ("userId=alice&agentName=planner&limit=1", ["r1"]),
        (f"since={T0 + 200}", ["r4", "r3", "r2"]),
        (f"since={T0 + 201}", ["r4", "r3"]),
        (f"userId=alice&since={T0 + 300}&limit=1", ["r4"]),
        (f"since={T0 + 10_000}", []),
    ],
)
async def test_list_runs_newest_first_with_filters(
    store: RunStore, client: TestClient[Any, Any], query: str, expected: list[str]
) -> None:
    await seed_runs(store)
    body = await get_json(client, f"/v1/runs?{query}")
    assert body == {"runIds": expected}
    RunList.model_validate(body)


async def test_list_runs_default_limit_is_100(
    store: RunStore, client: TestClient[Any, Any]
) -> None:
    await store.apply([tokens(f"run{i:03d}", T0 + i, "m", 1, 1, 0) for i in range(120)])
    body = await get_json(client, "/v1/runs")
    assert body["runIds"] == [f"run{i:03d}" for i in range(119, 19, -1)]
    body = await get_json(client, "/v1/runs?limit=1000")
    assert len(body["runIds"]) == 120
