"""RunStore against a real redis-server: idempotence, key isolation, no partial writes."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from processor.store.keys import Keys
from processor.store.run_queries import EntryFilter, RunQueries
from processor.store.runs import RunStore
from tests.unit.api_support import (
    custom,
    make_queries,
    make_settings,
    subagent,
    tokens,
    tool,
)

T0 = 1_763_000_000_000


def queries(store: RunStore) -> RunQueries:
    return make_queries(store, make_settings("unused"))


PICO_9M_USD = 9_000_000 * 10**12


async def test_replaying_a_batch_changes_nothing(store: RunStore) -> None:
    batch = [
        tokens("r", T0, "gpt-4o", 10, 5, 700, id="a"),
        tool("r", T0 + 1, "search", False, 12.5, id="b"),
        custom("r", T0 + 2, "api_calls", "tavily", 2.5, id="c"),
    ]
    first = await store.apply(batch)
    assert len(first.accepted) == 3 and not first.duplicates
    before = await queries(store).get_rollup("default", "r")
    again = await store.apply(batch)
    assert not again.accepted and len(again.duplicates) == 3
    assert await queries(store).get_rollup("default", "r") == before


async def test_a_group_with_one_seen_id_applies_only_the_new_ones(store: RunStore) -> None:
    await store.apply([tokens("r", T0, "m", 1, 1, 1, id="a")])
    result = await store.apply(
        [tokens("r", T0, "m", 1, 1, 1, id="a"), tokens("r", T0, "m", 2, 2, 2, id="b")]
    )
    assert [e.entry_id for e in result.accepted] == ["b"]
    assert [e.entry_id for e in result.duplicates] == ["a"]
    rollup = await queries(store).get_rollup("default", "r")
    assert rollup is not None
    assert (rollup.entry_count, rollup.tokens.prompt, rollup.cost_pico) == (2, 3, 3)


async def test_run_ids_that_look_like_key_suffixes_stay_apart(store: RunStore) -> None:
    await store.apply(
        [
            subagent("x", T0, "helper", "child", id="1"),
            tokens("x:children", T0, "m", 5, 5, 10, id="2"),
            tokens("x:entries", T0, "m", 7, 7, 14, id="3"),
        ]
    )
    x = await queries(store).get_rollup("default", "x")
    kids = await queries(store).get_rollup("default", "x:children")
    entries = await queries(store).get_rollup("default", "x:entries")
    assert x is not None and kids is not None and entries is not None
    assert x.children == ["child"] and x.entry_count == 1
    assert kids.tokens.prompt == 5 and entries.tokens.prompt == 7
    page = await queries(store).entries_page("default", "x", EntryFilter(), offset=0, limit=10)
    assert page is not None and [e["id"] for e in page.entries] == ["1"]


async def test_tenant_ids_with_separators_cannot_reach_other_indexes(
    store: RunStore, redis: Redis, prefix: str
) -> None:
    await store.apply([tokens("r1", T0, "m", 1, 1, 1, id="1", tenant="t:user:bob")])
    await store.apply([tokens("r2", T0, "m", 1, 1, 1, id="2", tenant="t", user="bob")])
    assert await queries(store).list_runs(
        "t", user_id="bob", agent_name=None, since=None, limit=10
    ) == ["r2"]
    assert await queries(store).list_runs(
        "t:user:bob", user_id=None, agent_name=None, since=None, limit=10
    ) == ["r1"]
    assert all(":user:" not in k for k in await redis.keys(f"{prefix}:*"))


async def test_an_overflowing_entry_is_reported_and_nothing_of_it_written(
    store: RunStore, redis: Redis
) -> None:
    big = [tokens("r", T0 + i, "m", 1, 1, PICO_9M_USD // 10, id=f"b{i}") for i in range(9)]
    assert len((await store.apply(big)).accepted) == 9
    before = await redis.hgetall(Keys(store._keys.prefix).run("default", "r"))
    result = await store.apply(
        [
            tokens("r", T0 + 20, "m", 1, 1, PICO_9M_USD // 10, id="too-much"),
            tool("r", T0 + 21, "search", True, 1.0, id="fine"),
        ]
    )
    assert [(e.entry_id, counter) for e, counter in result.overflowed] == [("too-much", "c|m")]
    assert [e.entry_id for e in result.accepted] == ["fine"]
    after = await redis.hgetall(Keys(store._keys.prefix).run("default", "r"))
    assert after["c|m"] == before["c|m"]
    assert int(after["n"]) == 10
    # the rejected entry's id was not marked applied (the applied ones were)
    generation = await server_generation(redis, 3600)
    seen = Keys(store._keys.prefix).seen("default", generation)
    assert await redis.hexists(seen, "fine")  # type: ignore[misc]
    assert not await redis.hexists(seen, "too-much")  # type: ignore[misc]


async def server_generation(redis: Redis, ttl: int) -> int:
    seconds, _ = await redis.time()
    return int(seconds) // ttl


async def test_generations_follow_the_redis_server_clock(redis: Redis, prefix: str) -> None:
    # one-second generations: an id is remembered in its own and the next generation
    store = RunStore(redis, Keys(prefix), dedup_ttl_s=1, entry_ttl_s=1000)
    entry = tokens("r", T0, "m", 1, 1, 1, id="once")
    now = await server_generation(redis, 1)
    assert len((await store.apply([entry])).accepted) == 1
    marked = [
        g
        for g in (now, now + 1)
        if await redis.hexists(Keys(prefix).seen("default", g), "once")  # type: ignore[misc]
    ]
    assert len(marked) == 1
    deadline = time.monotonic() + 10
    while await server_generation(redis, 1) != marked[0] + 1:
        assert time.monotonic() < deadline, "Redis clock did not move on"
        await asyncio.sleep(0.05)
    assert len((await store.apply([entry])).duplicates) == 1
    ttl = await redis.ttl(Keys(prefix).seen("default", marked[0]))
    assert 0 < ttl <= 2
