"""The batch step against a real redis-server: no input can stop it or half-apply it.

Raw messages go through the real pipeline (parse, validate, price, fold, the Lua step);
only the dead-letter publisher is a callable that records what it is given (the DLQ on
a real broker is covered by tests/integration/test_dead_letters.py).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis

from processor.domain.pricing import PriceCatalog, load_catalog
from processor.store.keys import Keys
from processor.store.runs import OffsetUpdate, StaleOffsets
from tests.unit.batch_rig import (
    TOPIC,
    Rig,
    as_messages,
    entry,
    llm,
)


@pytest.fixture
def rig(redis: Redis, prefix: str) -> Rig:
    return Rig(redis, prefix)


async def test_a_run_with_thousands_of_models_tools_and_customs_applies_with_the_rest(
    rig: Rig,
) -> None:
    small = [llm(f"small{r}", i, "gpt-4o-mini") for r in range(5) for i in range(10)]
    full = {"prompt": 1000, "completion": 500, "reasoning": 100, "cached": 300, "cacheWrite": 200}
    models = [llm("huge", i, f"model-{i}", **full) for i in range(3000)]
    tools = [
        entry("huge", 3000 + i, kind="tool", toolName=f"tool-{i}", durationMs=1.5, success=i % 2)
        for i in range(3000)
    ]
    tools = [{**t, "success": bool(t["success"])} for t in tools]
    customs = [
        entry("huge", 6000 + i, kind="custom", type=f"type-{i}", name="n", value=0.1)
        for i in range(3000)
    ]
    batch = rig.pipeline.prepare(as_messages([*small, *models, *tools, *customs]))
    outcome = await rig.pipeline.apply(batch)
    assert len(outcome.accepted) == 9050 and outcome.rejected == 0
    huge = await rig.rollup("huge")
    assert huge.entry_count == 9000
    assert len(huge.tokens_by_model) == 3000
    assert huge.tokens.prompt == 3000 * 1000 and huge.tokens.cache_write == 3000 * 200
    assert len(huge.tools) == 3000 and sum(t.failed for t in huge.tools.values()) == 1500
    assert len(huge.custom) == 3000
    assert all(v == {"n": 100_000_000} for v in huge.custom.values())
    for r in range(5):
        assert (await rig.rollup(f"small{r}")).entry_count == 10
    # the same batch again, as after a crash: nothing changes
    again = await rig.pipeline.apply(rig.pipeline.prepare(batch.messages))
    assert len(again.duplicates) == 9050
    assert (await rig.rollup("small0")).entry_count == 10
    assert (await rig.rollup("huge")).entry_count == 9000


async def test_maximum_size_entries_are_split_into_bounded_calls(rig: Rig) -> None:
    pad = "x" * (64 * 1024 - 300)
    entries = [
        entry("big", i, kind="tool", toolName="t", durationMs=1, success=True, error=pad)
        for i in range(400)
    ]
    assert all(len(json.dumps(e)) <= 64 * 1024 for e in entries)
    batch = rig.pipeline.prepare(as_messages(entries))
    assert batch.plan is not None and len(batch.plan.calls or []) >= 3  # 25 MiB of bodies
    outcome = await rig.pipeline.apply(batch)
    assert len(outcome.accepted) == 400
    assert (await rig.rollup("big")).entry_count == 400


async def test_an_unexpected_exception_in_preparation_dead_letters_that_message(
    redis: Redis, prefix: str
) -> None:
    class ExplodingCatalog(PriceCatalog):
        def price_tokens(self, model: str, **kw: Any) -> Any:
            if model == "explode":
                raise ZeroDivisionError("a bug of ours")
            return super().price_tokens(model, **kw)

    base = load_catalog(None)
    catalog = ExplodingCatalog.__new__(ExplodingCatalog)
    catalog.__dict__.update(base.__dict__)
    rig = Rig(redis, prefix, catalog)
    messages = as_messages([llm("r", 0, "gpt-4o"), llm("r", 1, "explode"), llm("r", 2, "gpt-4o")])
    outcome = await rig.pipeline.process(messages)
    assert len(outcome.accepted) == 2 and outcome.rejected == 1
    assert rig.letters.codes() == ["internal"]
    letter = rig.letters.sent[0]
    assert letter["offset"] == 1 and json.loads(letter["value"])["model"] == "explode"
    assert "ZeroDivisionError" in letter["error"]["message"]
    assert rig.count("tokens", "rejected") == 1
    assert (await rig.rollup("r")).entry_count == 2


async def test_an_entry_on_which_the_script_fails_is_isolated_and_dead_lettered(
    rig: Rig, redis: Redis
) -> None:
    # someone else's key where a run's hash belongs: every Redis command on it fails
    await redis.set(rig.keys.run("default", "clobbered"), "not a hash")
    entries = [llm("a", 0, "gpt-4o"), llm("clobbered", 1, "gpt-4o"), llm("b", 2, "gpt-4o")]
    outcome = await rig.pipeline.process(as_messages(entries))
    assert sorted(e.run_id for e in outcome.accepted) == ["a", "b"]
    assert rig.letters.codes() == ["internal"]
    assert "WRONGTYPE" in rig.letters.sent[0]["error"]["message"]


async def test_a_failed_dead_letter_publish_retried_counts_each_entry_once(rig: Rig) -> None:
    messages = as_messages([llm("r", 0, "gpt-4o"), b"{not json", llm("r", 2, "gpt-4o")])
    batch = rig.pipeline.prepare(messages)
    rig.letters.fail_next = 1
    with pytest.raises(OSError):
        await rig.pipeline.apply(batch)
    outcome = await rig.pipeline.apply(batch)
    assert len(outcome.accepted) == 2 and not outcome.duplicates
    assert rig.count("tokens", "accepted") == 2 and rig.count("tokens", "duplicate") == 0
    assert rig.count("unknown", "rejected") == 1
    assert rig.letters.codes() == ["json"]


async def test_an_overflow_letter_is_published_once_when_the_offsets_write_is_retried(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2**53 - 2 priced prompt tokens overflow the run's cost counter: a letter only the
    # store's verdict reveals; then the offsets write (after that letter) fails once
    huge = llm("r", 0, "gpt-4o", prompt=2**53 - 2, completion=0)
    batch = rig.pipeline.prepare(as_messages([huge, llm("r", 1, "gpt-4o")]))
    update = rig.store.offset_update("group", [(TOPIC, 0, None, 2)])
    real = rig.store.write_offsets
    failures = [ConnectionError("redis went away")]

    async def flaky(offsets: OffsetUpdate) -> None:
        if failures:
            raise failures.pop()
        await real(offsets)

    monkeypatch.setattr(rig.store, "write_offsets", flaky)
    with pytest.raises(ConnectionError):
        await rig.pipeline.apply(batch, update)
    outcome = await rig.pipeline.apply(batch, update)
    assert len(outcome.accepted) == 1 and outcome.rejected == 1
    assert rig.letters.codes() == ["invariant"]
    assert rig.count("tokens", "rejected") == 1 and rig.count("tokens", "accepted") == 1


async def test_a_lost_reply_retried_counts_applied_entries_as_accepted(rig: Rig) -> None:
    batch = rig.pipeline.prepare(as_messages([llm("r", i, "gpt-4o") for i in range(5)]))
    # the script ran but its reply never came back; the retry sends the same batch
    # (same token) again: its own marks tell it the entries were applied by it
    assert batch.plan is not None
    lost = rig.store.plan(batch.valid)
    lost.token = batch.plan.token
    await rig.store.execute(lost)
    result = await rig.store.execute(batch.plan)
    assert len(result.accepted) == 5 and not result.duplicates
    assert (await rig.rollup("r")).entry_count == 5
    # another batch with the same ids is a duplicate, as ever
    other = await rig.store.execute(rig.store.plan(batch.valid))
    assert len(other.duplicates) == 5


async def test_the_kind_of_a_rejected_entry_is_counted_when_it_can_be_read(rig: Rig) -> None:
    bad_tool = entry("r", 0, kind="tool", toolName="t", durationMs=1e308, success=True)
    bad_tokens = llm("r", 1, "m", prompt=1, completion=1, reasoning=2)
    await rig.pipeline.process(as_messages([bad_tool, bad_tokens, b"[1]"]))
    assert rig.count("tool", "rejected") == 1
    assert rig.count("tokens", "rejected") == 1
    assert rig.count("unknown", "rejected") == 1
    assert sorted(rig.letters.codes()) == ["invariant", "schema", "schema"]


@pytest.mark.parametrize("batch_size", [1, 7, 64, 3000])
async def test_custom_values_sum_exactly_however_they_are_batched(
    rig: Rig, batch_size: int
) -> None:
    values = [0.1, 0.2, 1e-9, 123456.789, -0.3, 1e15, -1e15, 5e-324, -0.0, 7]
    entries = [
        entry("c", i, kind="custom", type="t", name="n", value=values[i % len(values)])
        for i in range(3000)
    ]
    messages = as_messages(entries)
    for start in range(0, len(messages), batch_size):
        await rig.pipeline.process(messages[start : start + batch_size])
    exact = sum((Decimal(repr(values[i % len(values)])) for i in range(3000)), Decimal(0))
    got = (await rig.rollup("c")).custom["t"]["n"]
    assert Decimal(got).scaleb(-9) == exact.quantize(Decimal("1e-9"))
    tenths = [entry("t", i, kind="custom", type="t", name="n", value=0.1) for i in range(3000)]
    await rig.pipeline.process(as_messages(tenths))
    assert (await rig.rollup("t")).custom["t"]["n"] == 300 * 10**9


async def test_offsets_are_written_with_the_effects_and_checked(rig: Rig, redis: Redis) -> None:
    key = rig.keys.offsets("group")
    field = Keys.offset_field(TOPIC, 0)

    def update(expected: int | None, target: int) -> OffsetUpdate:
        return rig.store.offset_update("group", [(TOPIC, 0, expected, target)])

    first = rig.pipeline.prepare(as_messages([llm("r", 0, "gpt-4o"), llm("r", 1, "gpt-4o")]))
    await rig.pipeline.apply(first, update(None, 2))
    assert await redis.hget(key, field) == "2"  # type: ignore[misc]
    # Redis lost that write (a failover): the next batch is refused, nothing written
    await redis.hset(key, field, "1")  # type: ignore[misc]
    second = rig.pipeline.prepare(as_messages([llm("r", 2, "gpt-4o")]))
    with pytest.raises(StaleOffsets) as stale:
        await rig.pipeline.apply(second, update(2, 3))
    assert stale.value.stored == {field: "1"}
    assert (await rig.rollup("r")).entry_count == 2
    # a batch with only dead letters still moves its partition on
    letters_only = rig.pipeline.prepare(as_messages([b"nope"]))
    await rig.pipeline.apply(letters_only, update(1, 5))
    assert await redis.hget(key, field) == "5"  # type: ignore[misc]
    # a retry of a batch whose offsets were already written (lost reply) goes through
    third = rig.pipeline.prepare(as_messages([llm("r", 3, "gpt-4o")]))
    await rig.pipeline.apply(third, update(5, 6))
    third.outcome = None
    await rig.pipeline.apply(third, update(5, 6))
    assert await redis.hget(key, field) == "6"  # type: ignore[misc]
    assert (await rig.rollup("r")).entry_count == 3
