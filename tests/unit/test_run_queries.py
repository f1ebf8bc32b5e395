"""RunQueries (the API's reads) against a real redis-server, keys written by hand.

The keys are written here in the layout of processor/store/keys.py, independently of
RunStore.apply, so these tests pin the readers alone: paging through the entry index,
chunked filtered walks, capped children, and the one-index run listing.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from processor.domain.accept import COST_SEPARATOR
from processor.domain.fields import F_COUNT, F_USER
from processor.metrics import UsageMetrics
from processor.store.keys import Keys
from processor.store.run_queries import EntryFilter, EntryPage, RunQueries
from processor.store.runs import RunStore
from tests.unit.api_support import T0, build_app, make_settings

TENANT = "default"
KINDS = ("tokens", "tool", "subagent", "custom")


def stored(entry: dict[str, Any], cost_pico: int | None = None) -> bytes:
    body = json.dumps(entry).encode()
    return body if cost_pico is None else b"%d%s%s" % (cost_pico, COST_SEPARATOR, body)


async def put_run(redis: Redis, keys: Keys, run: str, children: Sequence[str] = ()) -> None:
    await redis.hset(keys.run(TENANT, run), mapping={F_USER: "u1", F_COUNT: "1"})  # type: ignore[misc]
    if children:
        await redis.zadd(keys.run_children(TENANT, run), dict.fromkeys(children, 0))


async def put_entries(
    redis: Redis, keys: Keys, run: str, entries: list[dict[str, Any]], *, bodies: bool = True
) -> None:
    """The run's entry hash and index as the writer leaves them."""
    async with redis.pipeline(transaction=False) as pipe:
        if bodies:
            pipe.hset(keys.run_entries(TENANT, run), mapping={e["id"]: stored(e) for e in entries})
        pipe.zadd(keys.run_entry_index(TENANT, run), {e["id"]: e["timestamp"] for e in entries})
        await pipe.execute()


def reference(
    entries: list[dict[str, Any]], where: EntryFilter, offset: int, limit: int
) -> tuple[list[str], int]:
    """The contract's answer by brute force: ids of the page, total."""
    matching = [
        e
        for e in sorted(entries, key=lambda e: (e["timestamp"], e["id"]))
        if (where.kinds is None or e["kind"] in where.kinds)
        and (where.step_min is None or e.get("stepCount", 0) >= where.step_min)
        and (where.step_max is None or e.get("stepCount", 0) <= where.step_max)
        and (where.start is None or e["timestamp"] >= where.start)
        and (where.end is None or e["timestamp"] <= where.end)
    ]
    return [e["id"] for e in matching[offset : offset + limit]], len(matching)


def ids_of(page: EntryPage | None) -> tuple[list[str], int]:
    assert page is not None
    return [e["id"] for e in page.entries], page.total


async def command_calls(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def random_entries(rng: random.Random, n: int) -> list[dict[str, Any]]:
    entries = []
    for i in range(n):
        entry: dict[str, Any] = {
            # ids of several lengths, so ties on timestamp are broken as strings are
            "id": f"{rng.randrange(36**3):x}"[: rng.randint(1, 5)] + f"-{i}",
            "kind": rng.choice(KINDS),
            "runId": "r",
            "userId": "u1",
            "timestamp": T0 + rng.randrange(200),  # many ties
        }
        if rng.random() < 0.8:
            entry["stepCount"] = rng.randrange(10)
        entries.append(entry)
    return entries


# --- entries -------------------------------------------------------------------------------


async def test_entry_pages_match_the_contract_order_and_filters(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    rng = random.Random(7)
    entries = random_entries(rng, 600)
    await put_run(redis, keys, "r")
    await put_entries(redis, keys, "r", entries)
    # a small chunk: the filtered walks cross many chunk boundaries
    queries = RunQueries(redis, keys, entry_chunk=7)
    for _ in range(300):
        where = EntryFilter(
            kinds=frozenset(rng.sample(KINDS, rng.randint(1, 3))) if rng.random() < 0.4 else None,
            step_min=rng.randrange(10) if rng.random() < 0.3 else None,
            step_max=rng.randrange(5, 12) if rng.random() < 0.3 else None,
            start=T0 + rng.randrange(-5, 150) if rng.random() < 0.5 else None,
            end=T0 + rng.randrange(100, 210) if rng.random() < 0.5 else None,
        )
        offset = rng.choice([0, 0, rng.randrange(700), 10**6, 2**63 - 1])
        limit = rng.choice([1, 2, 100, 1000])
        got = await queries.entries_page(TENANT, "r", where, offset=offset, limit=limit)
        assert ids_of(got) == reference(entries, where, offset, limit), (where, offset, limit)


async def test_entries_come_back_as_stored_with_cost(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    entry = {"id": "a", "kind": "tokens", "runId": "r", "userId": "u1", "timestamp": T0}
    await put_run(redis, keys, "r")
    await redis.hset(keys.run_entries(TENANT, "r"), mapping={"a": stored(entry, 2 * 10**12)})  # type: ignore[misc]
    await redis.zadd(keys.run_entry_index(TENANT, "r"), {"a": T0})
    page = await RunQueries(redis, keys).entries_page(
        TENANT, "r", EntryFilter(), offset=0, limit=10
    )
    assert page == EntryPage([entry | {"costUsd": "2"}], 1)


async def test_an_unfiltered_page_reads_only_its_own_bodies(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    entries = [
        {"id": f"e{i:05d}", "kind": "tool", "runId": "r", "userId": "u1", "timestamp": T0 + i}
        for i in range(5000)
    ]
    await put_run(redis, keys, "r")
    await put_entries(redis, keys, "r", entries)
    queries = RunQueries(redis, keys)
    await redis.config_resetstat()
    page = await queries.entries_page(
        TENANT, "r", EntryFilter(start=T0 + 1000), offset=3000, limit=3
    )
    assert ids_of(page) == (["e04000", "e04001", "e04002"], 4000)
    calls = await command_calls(redis)
    assert calls.get("hmget") == 1  # the page's three ids, nothing else
    assert not {"hgetall", "hvals", "hkeys", "hscan", "zrangebyscore"} & set(calls)


async def test_a_filtered_walk_reads_one_chunk_at_a_time(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    entries = [
        {"id": f"e{i:04d}", "kind": KINDS[i % 4], "runId": "r", "userId": "u1",
         "timestamp": T0 + i}
        for i in range(2500)
    ]  # fmt: skip
    await put_run(redis, keys, "r")
    await put_entries(redis, keys, "r", entries)
    queries = RunQueries(redis, keys, entry_chunk=100)
    await redis.config_resetstat()
    where = EntryFilter(kinds=frozenset({"tool"}), end=T0 + 2049)
    page = await queries.entries_page(TENANT, "r", where, offset=500, limit=2)
    assert ids_of(page) == (["e2001", "e2005"], 513)
    calls = await command_calls(redis)
    chunks = math.ceil(2050 / 100)
    assert calls["hmget"] == chunks and calls["zrange"] == chunks
    assert "hgetall" not in calls


async def test_ids_whose_body_is_gone_are_skipped(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    entry = {"kind": "tool", "runId": "r", "userId": "u1"}
    kept = [entry | {"id": f"k{i}", "timestamp": T0 + 2 * i} for i in range(4)]
    gone = [entry | {"id": f"g{i}", "timestamp": T0 + 2 * i + 1} for i in range(4)]
    await put_run(redis, keys, "r")
    await put_entries(redis, keys, "r", kept)
    await put_entries(redis, keys, "r", gone, bodies=False)
    queries = RunQueries(redis, keys, entry_chunk=3)
    page = await queries.entries_page(TENANT, "r", EntryFilter(), offset=0, limit=4)
    # the count comes from the index alone; the page leaves out what it cannot read
    assert ids_of(page) == (["k0", "k1"], 8)
    where = EntryFilter(kinds=frozenset({"tool"}))
    page = await queries.entries_page(TENANT, "r", where, offset=0, limit=100)
    assert ids_of(page) == (["k0", "k1", "k2", "k3"], 4)


async def test_entries_of_an_unknown_run_are_none_and_an_empty_run_has_none(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    queries = RunQueries(redis, keys)
    assert await queries.entries_page(TENANT, "nope", EntryFilter(), offset=0, limit=1) is None
    await put_run(redis, keys, "expired")  # rollup kept, entries past retention
    for where in (EntryFilter(), EntryFilter(kinds=frozenset({"tool"}))):
        page = await queries.entries_page(TENANT, "expired", where, offset=0, limit=1)
        assert page == EntryPage([], 0)


# --- run listing -----------------------------------------------------------------------------


async def test_user_and_agent_read_only_their_combined_index(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    await redis.zadd(keys.runs_by_user(TENANT, "alice"), {f"u{i}": T0 + i for i in range(50)})
    await redis.zadd(keys.runs_by_agent(TENANT, "planner"), {f"a{i}": T0 + i for i in range(50)})
    await redis.zadd(keys.runs_by_user_agent(TENANT, "alice", "planner"), {"r1": T0, "r2": T0 + 5})
    queries = RunQueries(redis, keys)
    await redis.config_resetstat()

    async def listing(since: int | None = None, limit: int = 10) -> list[str]:
        return await queries.list_runs(
            TENANT, user_id="alice", agent_name="planner", since=since, limit=limit
        )

    assert await listing() == ["r2", "r1"]
    assert await listing(limit=1) == ["r2"]
    assert await listing(since=T0 + 1) == ["r2"]
    assert (await command_calls(redis))["zrevrangebyscore"] == 3  # one read each
    assert (
        await queries.list_runs(TENANT, user_id="bob", agent_name="planner", since=None, limit=10)
        == []
    )


# --- sub-agent trees ---------------------------------------------------------------------------


async def seed_wide_tree(redis: Redis, keys: Keys) -> None:
    """root -> k0..k4; k0 -> root (cycle), k9 (never seen); k1 -> x0..x3; x0 -> y0..y2."""
    await put_run(redis, keys, "root", [f"k{i}" for i in range(5)])
    await put_run(redis, keys, "k0", ["root", "k9"])
    await put_run(redis, keys, "k1", [f"x{i}" for i in range(4)])
    for run in ("k2", "k3", "k4", "x1", "x2", "x3", "y0", "y1", "y2"):
        await put_run(redis, keys, run)
    await put_run(redis, keys, "x0", ["y0", "y1", "y2"])


async def test_tree_walk_caps_children_per_run_and_counts_the_cut(
    redis: Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    await seed_wide_tree(redis, keys)
    metrics = UsageMetrics()
    queries = RunQueries(redis, keys, children_limit=2, metrics=metrics)
    tree = await queries.get_tree(TENANT, "root", depth_limit=2)
    assert [r.run_id for r in tree] == ["root", "k0", "k1", "x0", "x1"]
    assert tree[0].children == ["k0", "k1"]
    # root leaves out 3, k1 leaves out 2; k0 has exactly 2; x0 sits at the depth limit
    assert metrics.registry.get_sample_value("usage_subagent_children_cut_total") == 5
    tree = await queries.get_tree(TENANT, "root", depth_limit=3)
    assert [r.run_id for r in tree] == ["root", "k0", "k1", "x0", "x1", "y0", "y1"]
    assert metrics.registry.get_sample_value("usage_subagent_children_cut_total") == 5 + 6
    assert await queries.get_tree(TENANT, "nope", depth_limit=3) == []


async def test_rollups_carry_the_capped_children(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    await seed_wide_tree(redis, keys)
    queries = RunQueries(redis, keys, children_limit=3)
    rollups = await queries.get_rollups(TENANT, ["root", "k1", "k1", "nope"])
    assert {r: v.children for r, v in rollups.items()} == {
        "root": ["k0", "k1", "k2"],
        "k1": ["x0", "x1", "x2"],
    }
    unlimited = await RunQueries(redis, keys).get_tree(TENANT, "root", depth_limit=10)
    assert len(unlimited) == 13  # every known run once: k9 is never seen


# --- through the HTTP API ----------------------------------------------------------------------


@pytest.fixture
async def api(
    store: RunStore, prefix: str
) -> AsyncIterator[tuple[TestClient[Any, Any], UsageMetrics]]:
    metrics = UsageMetrics()
    settings = make_settings(prefix, subagent_children_limit=2)
    client: TestClient[Any, Any] = TestClient(
        TestServer(build_app(settings, store, metrics=metrics))
    )
    await client.start_server()
    yield client, metrics
    await client.close()


async def test_rollup_lists_capped_children_and_the_metric_counts_the_cut(
    redis: Redis, prefix: str, api: tuple[TestClient[Any, Any], UsageMetrics]
) -> None:
    client, metrics = api
    await seed_wide_tree(redis, Keys(prefix))
    cut = "usage_subagent_children_cut_total"
    resp = await client.get("/v1/runs/root/rollup")
    assert resp.status == 200
    assert (await resp.json())["subAgentRunIds"] == ["k0", "k1"]
    assert metrics.registry.get_sample_value(cut) == 3 + 2 + 1  # root, k1, x0 (depth 64)
    resp = await client.get("/v1/runs/root/rollup?includeSubAgents=false")
    assert (await resp.json())["subAgentRunIds"] == ["k0", "k1"]
    assert metrics.registry.get_sample_value(cut) == 6  # no walk, nothing counted


async def test_entries_endpoint_pages_through_the_index(
    redis: Redis, prefix: str, api: tuple[TestClient[Any, Any], UsageMetrics]
) -> None:
    client, _ = api
    keys = Keys(prefix)
    entries = random_entries(random.Random(3), 300)
    await put_run(redis, keys, "r")
    await put_entries(redis, keys, "r", entries)
    cases = [
        ("limit=5&offset=7", EntryFilter(), 7, 5),
        (f"kinds=tool,custom&stepMin=2&stepMax=6&start={T0 + 50}&end={T0 + 150}&offset=3",
         EntryFilter(kinds=frozenset({"tool", "custom"}), step_min=2, step_max=6,
                     start=T0 + 50, end=T0 + 150), 3, 100),
        (f"end={T0 + 20}", EntryFilter(end=T0 + 20), 0, 100),
    ]  # fmt: skip
    for query, where, offset, limit in cases:
        resp = await client.get(f"/v1/runs/r/entries?{query}")
        body = await resp.json()
        assert resp.status == 200, body
        assert ([e["id"] for e in body["entries"]], body["total"]) == reference(
            entries, where, offset, limit
        )
    resp = await client.get("/v1/runs/nope/entries")
    assert resp.status == 404
