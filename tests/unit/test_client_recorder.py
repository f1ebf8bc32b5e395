"""UsageRecorder and RunHandle against a fake producer: entries, validation, steps, tool
timers, sub-agent links, back-pressure, re-sends and failures."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, OutOfOrderSequenceNumber

from schemas.entry import parse_entry
from tests.unit.client_fakes import FakeBroker, fake_recorder
from usage_client import (
    EntryValidationError,
    TokenUsage,
    UsageRecorder,
    UsageRecorderError,
    uuid7_time_ms,
)
from usage_client.validation import now_ms


async def test_entries_of_every_kind_are_valid_and_keyed_by_run() -> None:
    broker = FakeBroker()
    async with fake_recorder(broker, tenant_id="acme", agent_name="planner") as rec:
        run = rec.run("run-1", thread_id="t-1")
        await run.record_tokens("gpt-4o-mini", prompt=100, completion=20, cached=10)
        await run.record_usage("claude-x", TokenUsage(prompt=5, completion=3, reasoning=1))
        await run.record_tool("search", duration_ms=12.5)
        await run.record_subagent("researcher", "run-2", duration_ms=1, success=False, error="x")
        await run.record_custom("api_calls", "tavily", 2)
    assert [k for k, _ in broker.acked] == [b"run-1"] * 5
    entries = broker.acked_entries()
    assert [e["kind"] for e in entries] == ["tokens", "tokens", "tool", "subagent", "custom"]
    for raw, entry in zip((v for _, v in broker.acked), entries, strict=True):
        parse_entry(raw, now_ms=now_ms())  # what the processor will do
        assert entry["runId"] == "run-1"
        assert entry["userId"] == "user-1"
        assert entry["tenantId"] == "acme"
        assert entry["agentName"] == "planner"
        assert entry["threadId"] == "t-1"
        assert abs(entry["timestamp"] - now_ms()) < 60_000
        assert abs(uuid7_time_ms(entry["id"]) - entry["timestamp"]) < 60_000
    assert entries[0]["tokens"] == {"prompt": 100, "completion": 20, "cached": 10}
    assert entries[1]["tokens"] == {"prompt": 5, "completion": 3, "reasoning": 1}
    assert entries[3]["subAgentRunId"] == "run-2" and entries[3]["success"] is False
    assert entries[4] == entries[4] | {"type": "api_calls", "name": "tavily", "value": 2}
    assert len({e["id"] for e in entries}) == 5
    assert rec.stats.delivered == 5 and rec.stats.pending == 0


async def test_generated_run_ids_are_unique() -> None:
    broker = FakeBroker()
    async with fake_recorder(broker) as rec:
        ids = {rec.run().run_id for _ in range(100)}
    assert len(ids) == 100


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (
            lambda run: run.record_tokens("m", prompt=1, completion=1, reasoning=5),
            "tokens.reasoning",
        ),
        (lambda run: run.record_tokens("m", prompt=1, cached=2), "tokens.cached"),
        (lambda run: run.record_tokens("m", prompt=1, completion=1, total=3), "tokens.total"),
        (lambda run: run.record_tokens("m"), "tokens"),
        (lambda run: run.record_tokens("", prompt=1), "model"),
        (lambda run: run.record_tokens("m", prompt=-1), "tokens.prompt"),
        (lambda run: run.record_tokens("m", prompt=1, cost_usd="1e-3"), "costUsd"),
        (lambda run: run.record_tool("search", duration_ms=-1), "durationMs"),
        (lambda run: run.record_tool("", duration_ms=1), "toolName"),
        (lambda run: run.record_custom("api_calls", "tavily", float("nan")), "value"),
        (lambda run: run.record_custom("", "tavily", 1), "type"),
        (lambda run: run.record_subagent("r", "", duration_ms=1), "subAgentRunId"),
    ],
)
async def test_validation_errors_name_the_field_and_send_nothing(call, field) -> None:  # type: ignore[no-untyped-def]
    broker = FakeBroker()
    async with fake_recorder(broker) as rec:
        run = rec.run("run-1")
        with pytest.raises(ValueError) as info:
            await call(run)
        assert isinstance(info.value, EntryValidationError)
        assert info.value.field == field
        assert field in str(info.value)
    assert broker.sent == []


async def test_run_id_and_user_id_are_validated() -> None:
    async with fake_recorder(FakeBroker()) as rec:
        with pytest.raises(ValueError, match="runId"):
            await rec.run("x" * 300).record_custom("c", "n", 1)
    with pytest.raises(ValueError, match="userId"):
        UsageRecorder("fake:1", user_id="")


async def test_step_count_per_run() -> None:
    broker = FakeBroker()
    async with fake_recorder(broker) as rec:
        a, b = rec.run("a"), rec.run("b")
        await a.record_custom("c", "before", 1)  # step 0: before any LLM call
        await a.record_tokens("m", prompt=1, completion=1)  # step 1
        await a.record_tool("t", duration_ms=1)  # still step 1
        await b.record_tokens("m", prompt=1, completion=1)  # b: step 1
        await a.record_tokens("m", prompt=1, completion=1)  # step 2
        with pytest.raises(ValueError):
            await a.record_tokens("m", prompt=1, cached=5)  # rejected: not a step
        await a.record_tokens("m", prompt=1, completion=1)  # step 3
        await a.record_tool("t", duration_ms=1, step=10)  # explicit
        await a.record_custom("c", "after", 1)
    steps = [(e["runId"], e["kind"], e["stepCount"]) for e in broker.acked_entries()]
    assert steps == [
        ("a", "custom", 0),
        ("a", "tokens", 1),
        ("a", "tool", 1),
        ("b", "tokens", 1),
        ("a", "tokens", 2),
        ("a", "tokens", 3),
        ("a", "tool", 10),
        ("a", "custom", 10),
    ]
    assert a.step == 10 and b.step == 1


async def test_tool_timer_records_success_and_failure_and_propagates() -> None:
    broker = FakeBroker()
    async with fake_recorder(broker) as rec:
        run = rec.run("r")
        async with run.tool("fetch") as timer:
            await asyncio.sleep(0.01)
        assert timer.entry_id is not None
        with pytest.raises(KeyError, match="boom"):
            async with run.tool("fetch"):
                raise KeyError("boom")
    ok, failed = broker.acked_entries()
    assert ok["kind"] == "tool" and ok["toolName"] == "fetch" and ok["success"] is True
    assert ok["durationMs"] >= 5 and "error" not in ok
    assert ok["id"] == timer.entry_id
    assert failed["success"] is False and failed["error"] == "KeyError: 'boom'"
    assert failed["durationMs"] >= 0


async def test_child_run_links_both_ways() -> None:
    broker = FakeBroker()
    async with fake_recorder(broker, agent_name="planner") as rec:
        parent = rec.run("parent")
        async with parent.subagent("researcher") as child:
            await child.record_tokens("m", prompt=3, completion=4)
        with pytest.raises(RuntimeError):
            async with parent.subagent("coder", run_id="child-2") as child2:
                raise RuntimeError("bad")
        manual = parent.child(agent_name="x")
        await manual.record_custom("c", "n", 1)
        await parent.record_subagent("x", manual.run_id, duration_ms=5)
    child_tokens, link1, link2, manual_custom, link3 = broker.acked_entries()
    assert child_tokens["runId"] == child.run_id != "parent"
    assert child_tokens["parentRunId"] == "parent"
    assert child_tokens["agentName"] == "researcher"
    assert link1["runId"] == "parent" and link1["kind"] == "subagent"
    assert link1["subAgentRunId"] == child.run_id and link1["success"] is True
    assert link1["subAgentType"] == "researcher" and "parentRunId" not in link1
    assert link2["subAgentRunId"] == child2.run_id == "child-2"
    assert link2["success"] is False and link2["error"] == "RuntimeError: bad"
    assert manual_custom["parentRunId"] == "parent"
    assert link3["subAgentRunId"] == manual.run_id


async def test_define_metric_and_strict_metrics() -> None:
    broker = FakeBroker()
    async with fake_recorder(broker, strict_metrics=True) as rec:
        api_calls = rec.define_metric("api_calls", "Calls to paid external APIs")
        run = rec.run("r")
        await run.record_custom(api_calls, "tavily", 1)
        await run.record_custom("api_calls", "serp", -0.5)
        with pytest.raises(ValueError, match="type"):
            await run.record_custom("undefined", "x", 1)
        with pytest.raises(ValueError, match="type"):
            rec.define_metric("", "empty")
        assert rec.metrics["api_calls"].description == "Calls to paid external APIs"
    assert [e["value"] for e in broker.acked_entries()] == [1, -0.5]


async def test_use_outside_the_context_raises() -> None:
    rec = fake_recorder(FakeBroker())
    run = rec.run("r")
    with pytest.raises(UsageRecorderError, match="async with"):
        await run.record_tokens("m", prompt=1)
    async with rec:
        pass
    with pytest.raises(UsageRecorderError):
        await run.record_tokens("m", prompt=1)


async def test_back_pressure_when_the_buffer_is_full() -> None:
    broker = FakeBroker(decide=lambda key, value, n: "hold")
    async with fake_recorder(broker, max_buffer=3) as rec:
        run = rec.run("r")
        for i in range(3):
            await run.record_custom("c", "n", i)
        blocked = asyncio.create_task(run.record_custom("c", "n", 3))
        await asyncio.sleep(0.05)
        assert not blocked.done()  # waits for a free slot
        assert rec.stats.pending == 3
        broker.decide = lambda key, value, n: None
        broker.release_held()
        await asyncio.wait_for(blocked, 5)
    assert sorted(e["value"] for e in broker.acked_entries()) == [0, 1, 2, 3]


async def test_buffer_full_for_too_long_raises() -> None:
    broker = FakeBroker(decide=lambda key, value, n: "hold")
    rec = fake_recorder(broker, max_buffer=1, delivery_timeout_s=0.2)
    await rec.start()
    run = rec.run("r")
    await run.record_custom("c", "n", 1)
    with pytest.raises(UsageRecorderError, match="buffer of 1 entries stayed full"):
        await run.record_custom("c", "n", 2)
    with pytest.raises(UsageRecorderError, match="not acknowledged"):
        await rec.close()


async def test_retriable_failures_resend_the_same_bytes() -> None:
    def decide(key: bytes, value: bytes, n: int) -> BaseException | None:
        return KafkaConnectionError("broker down") if n < 3 else None

    broker = FakeBroker(decide=decide)
    async with fake_recorder(broker) as rec:
        run = rec.run("r")
        entry_id = await run.record_tokens("m", prompt=1, completion=2)
    assert len(broker.sent) == 4
    assert len({v for _, v in broker.sent}) == 1  # the very same entry, same id
    assert broker.acked_entries()[0]["id"] == entry_id
    assert rec.stats.resent == 3 and rec.stats.delivered == 1


async def test_permanent_failure_raises_on_exit_and_on_next_record() -> None:
    broker = FakeBroker(decide=lambda key, value, n: MessageSizeTooLargeError())
    rec = fake_recorder(broker)
    await rec.start()
    run = rec.run("r")
    await run.record_custom("c", "n", 1)
    with pytest.raises(UsageRecorderError, match="could not be delivered"):
        await rec.flush()
    with pytest.raises(UsageRecorderError, match="could not be delivered"):
        await run.record_custom("c", "n", 2)
    with pytest.raises(UsageRecorderError):
        await rec.close()
    assert broker.producers[0].stopped


async def test_entries_past_their_deadline_fail() -> None:
    broker = FakeBroker(decide=lambda key, value, n: KafkaConnectionError("down"))
    rec = fake_recorder(broker, delivery_timeout_s=0.3)
    await rec.start()
    await rec.run("r").record_custom("c", "n", 1)
    with pytest.raises(UsageRecorderError, match="KafkaConnectionError"):
        await rec.close()
    assert rec.stats.failed == 1 and len(broker.sent) > 1


async def test_fatal_producer_error_replaces_the_producer() -> None:
    def decide(key: bytes, value: bytes, n: int) -> BaseException | None:
        return OutOfOrderSequenceNumber() if n == 0 else None

    broker = FakeBroker(decide=decide)
    async with fake_recorder(broker) as rec:
        await rec.run("r").record_custom("c", "n", 1)
        await rec.flush()
    assert len(broker.producers) == 2
    assert broker.producers[0].stopped
    assert len(broker.acked) == 1


async def test_start_failure_is_a_clear_error() -> None:
    broker = FakeBroker(start_error=KafkaConnectionError("Unable to bootstrap"))
    rec = fake_recorder(broker)
    with pytest.raises(UsageRecorderError, match=r"cannot connect to Kafka at fake:9092"):
        await rec.start()


async def test_body_exception_wins_over_delivery_error(caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker(decide=lambda key, value, n: MessageSizeTooLargeError())
    with pytest.raises(ZeroDivisionError):
        async with fake_recorder(broker) as rec:
            await rec.run("r").record_custom("c", "n", 1)
            raise ZeroDivisionError
    assert "usage entries lost" in caplog.text


def test_entry_bytes_are_compact_json() -> None:
    broker = FakeBroker()

    async def go() -> None:
        async with fake_recorder(broker) as rec:
            await rec.run("r").record_tokens("m", prompt=1, completion=1)

    asyncio.run(go())
    raw = broker.acked[0][1]
    assert b" " not in raw and json.loads(raw)["kind"] == "tokens"
