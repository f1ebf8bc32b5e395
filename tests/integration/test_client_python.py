"""The Python client against the real stack: recorded entries reach the run rollup, a broker
that is down at start is a clear error, and a broker outage mid-run loses and duplicates
nothing."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import Usage as AnthropicUsage
from openai.types import CompletionUsage
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails

from processor.settings import Settings
from processor.stack import LocalStack, StackInfo
from processor.stack.ports import pick_port
from tests.integration.harness import (
    WorkerProcess,
    create_topics,
    stack_settings,
    unique_settings,
    wait_for,
)
from usage_client import (
    HttpUsageRecorder,
    RunNotFoundError,
    TokenUsage,
    UsageReader,
    UsageRecorder,
    UsageRecorderError,
)

TOKEN_FIELDS = ("prompt", "completion", "reasoning", "cached", "cacheWrite")
#: How long the broker stays down in the outage test (entries are recorded throughout).
OUTAGE_S = 15.0


async def rollup_with(
    reader: UsageReader, run_id: str, entry_count: int, timeout: float = 60
) -> dict[str, Any]:
    """Poll the run's rollup until it holds ``entry_count`` entries; return it."""

    async def probe() -> dict[str, Any] | None:
        try:
            body = await reader.get_rollup(run_id)
        except RunNotFoundError:
            return None
        return body if body["entryCount"] >= entry_count else None

    body: dict[str, Any] | None = await wait_for(
        probe, timeout=timeout, interval=0.2, message=f"rollup of {run_id}"
    )
    assert body is not None
    return body


# --- (a) every kind of entry reaches the rollup -----------------------------------------


async def test_recorded_entries_arrive_in_the_rollup(settings: Settings, tmp_path: Path) -> None:
    await create_topics(settings)
    async with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        reader = UsageReader(worker.url)
        async with UsageRecorder(
            settings.kafka_bootstrap,
            topic=settings.topic_entries,
            user_id="user-client-a",
            agent_name="planner",
        ) as rec:
            web_calls = rec.define_metric("api_calls", "Paid external API calls")
            run = rec.run()
            openai_usage = CompletionUsage(
                prompt_tokens=1200,
                completion_tokens=300,
                total_tokens=1500,
                prompt_tokens_details=PromptTokensDetails(cached_tokens=1024),
                completion_tokens_details=CompletionTokensDetails(reasoning_tokens=100),
            )
            await run.record_usage("gpt-4o-mini", openai_usage, provider="openai")  # step 1
            async with run.tool("web_search"):
                pass
            with pytest.raises(TimeoutError):
                async with run.tool("web_search"):
                    raise TimeoutError("search backend")
            await run.record_custom(web_calls, "tavily", 2)
            async with run.subagent("researcher") as child:
                anthropic_usage = AnthropicUsage(
                    input_tokens=50,
                    cache_read_input_tokens=3000,
                    cache_creation_input_tokens=1200,
                    output_tokens=400,
                )
                await child.record_usage("claude-3-5-sonnet-20241022", anthropic_usage)
                await child.record_custom("api_calls", "tavily", 1)
            await run.record_tokens("gpt-4o-mini", prompt=10, completion=5)  # step 2
        assert rec.stats.delivered == 8 and rec.stats.failed == 0

        parent = await rollup_with(reader, run.run_id, 6)
        assert parent["entryCount"] == 6
        assert parent["userId"] == "user-client-a" and parent["agentName"] == "planner"
        assert parent["tokens"] == {
            "prompt": 1210,
            "completion": 305,
            "reasoning": 100,
            "cached": 1024,
            "cacheWrite": 0,
            "total": 1515,
        }
        assert set(parent["tokensByModel"]) == {"gpt-4o-mini"}
        tools = parent["toolStats"]
        assert (tools["totalCalls"], tools["successfulCalls"], tools["failedCalls"]) == (2, 1, 1)
        assert parent["subAgentStats"]["byType"]["researcher"]["calls"] == 1
        assert parent["subAgentRunIds"] == [child.run_id]
        assert parent["custom"] == {"api_calls": {"tavily": 2}}

        child_rollup = await rollup_with(reader, child.run_id, 2)
        assert child_rollup["tokens"]["prompt"] == 4250
        assert child_rollup["tokens"]["cached"] == 3000
        assert child_rollup["tokens"]["cacheWrite"] == 1200
        assert child_rollup["agentName"] == "researcher"

        with_children = await reader.get_rollup(run.run_id)
        assert with_children["tokensIncludingSubAgents"]["total"] == 1515 + 4250 + 400
        assert with_children["customIncludingSubAgents"] == {"api_calls": {"tavily": 3}}
        own_only = await reader.get_rollup(run.run_id, include_sub_agents=False)
        assert own_only["tokensIncludingSubAgents"] == own_only["tokens"]

        page = await reader.get_entries(run.run_id)
        assert page.total == 6
        kinds = [e["kind"] for e in page.entries]
        assert sorted(kinds) == sorted(["tokens", "tool", "tool", "custom", "subagent", "tokens"])
        assert all(e["runId"] == run.run_id for e in page.entries)
        tokens_only = await reader.get_entries(run.run_id, kinds=["tokens"])
        assert tokens_only.total == 2
        assert sorted(e["stepCount"] for e in tokens_only.entries) == [1, 2]
        step_two = await reader.get_entries(run.run_id, step_range=(2, 2))
        assert [e["kind"] for e in step_two.entries] == ["tokens"]
        first = page.entries[0]["timestamp"]
        in_time = await reader.get_entries(run.run_id, time_range=(first, first))
        assert 1 <= in_time.total <= 6
        second_page = await reader.get_entries(run.run_id, limit=2, offset=2)
        assert second_page.total == 6
        assert [e["id"] for e in second_page.entries] == [e["id"] for e in page.entries[2:4]]
        child_entries = await reader.get_entries(child.run_id)
        assert {e["parentRunId"] for e in child_entries.entries} == {run.run_id}


async def test_http_recorder_entries_arrive_in_the_rollup(
    settings: Settings, tmp_path: Path
) -> None:
    await create_topics(settings)
    async with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        async with HttpUsageRecorder(worker.url, user_id="user-http", batch_size=2) as rec:
            run = rec.run()
            await run.record_tokens("gpt-4o-mini", prompt=100, completion=20, cached=40)
            await run.record_tool("fetch", duration_ms=3)
            await run.record_custom("api_calls", "tavily", 1)
        assert rec.accepted == 3
        rollup = await rollup_with(UsageReader(worker.url), run.run_id, 3)
        assert rollup["entryCount"] == 3
        assert rollup["tokens"]["total"] == 120 and rollup["tokens"]["cached"] == 40


# --- (b) broker unreachable at start ----------------------------------------------------


async def test_broker_down_at_start_is_a_clear_error_within_the_timeout() -> None:
    port = pick_port()  # free: nothing listens there
    recorder = UsageRecorder(f"127.0.0.1:{port}", user_id="u", start_timeout_s=3)
    with pytest.raises(
        UsageRecorderError, match=rf"cannot connect to Kafka at 127\.0\.0\.1:{port}"
    ):
        await asyncio.wait_for(recorder.__aenter__(), timeout=3 + 10)
    with pytest.raises(UsageRecorderError):
        await recorder.run().record_tokens("m", prompt=1)


async def test_broker_that_never_answers_times_out_at_start() -> None:
    # A listener that accepts connections but never speaks Kafka.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        recorder = UsageRecorder(
            f"127.0.0.1:{port}", user_id="u", start_timeout_s=2, request_timeout_ms=60_000
        )
        with pytest.raises(UsageRecorderError, match=rf"127\.0\.0\.1:{port}.*within 2s"):
            await asyncio.wait_for(recorder.start(), timeout=2 + 10)
    finally:
        server.close()


# --- (c) broker down mid-run and back ---------------------------------------------------


@dataclass
class OwnStack:
    local: LocalStack
    info: StackInfo

    def stop_kafka(self) -> None:
        """Stop only the Kafka broker of this stack (Redis and its data stay)."""
        self.local.down(services=("kafka",))


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[OwnStack]:
    # The restarted broker must come back on the same port (the recorder's bootstrap
    # address is fixed): LocalStack reuses a recorded port when free.
    local = LocalStack(
        stack_settings(tmp_path / "own-stack"), partitions=4, prefer_default_ports=False
    )
    try:
        info = local.up()
        yield OwnStack(local, info)
    finally:
        local.down()
        shutil.rmtree(tmp_path / "own-stack", ignore_errors=True)


async def test_broker_down_mid_run_and_back_loses_and_duplicates_nothing(
    own_stack: OwnStack, tmp_path: Path
) -> None:
    settings = unique_settings(own_stack.info.kafka_bootstrap, own_stack.info.redis_url)
    await create_topics(settings)
    runs = [f"outage-run-{i}" for i in range(4)]
    expected: dict[str, list[TokenUsage]] = {r: [] for r in runs}

    async def record_batch(handles: dict[str, Any], batch: int, pause_s: float = 0.0) -> None:
        for i in range(10):
            if pause_s:
                await asyncio.sleep(pause_s)  # pacing: keeps the broker down that long
            run_id = runs[i % len(runs)]
            usage = TokenUsage(
                prompt=1000 * batch + 10 * i + 7,
                completion=100 * batch + i + 1,
                reasoning=i,
                cached=i * 3,
                cache_write=i,
            )
            await handles[run_id].record_usage("gpt-4o-mini", usage, provider="openai")
            expected[run_id].append(usage)

    worker = WorkerProcess(settings, tmp_path / "worker.log")
    async with worker:
        reader = UsageReader(worker.url)
        async with UsageRecorder(
            settings.kafka_bootstrap,
            topic=settings.topic_entries,
            user_id="user-outage",
            delivery_timeout_s=180,
        ) as rec:
            handles = {r: rec.run(r) for r in runs}
            await record_batch(handles, 1)
            await rec.flush()
            assert rec.stats.delivered == 10

            await asyncio.to_thread(own_stack.stop_kafka)
            # buffered while the broker is down: nothing can be acknowledged meanwhile
            await record_batch(handles, 2, pause_s=OUTAGE_S / 10)
            assert rec.stats.pending == 10
            assert rec.stats.delivered == 10

            info = await asyncio.to_thread(own_stack.local.up)
            assert info.kafka_bootstrap == settings.kafka_bootstrap
            await record_batch(handles, 3)
        # leaving the context flushed everything without error
        assert rec.stats.delivered == 30 and rec.stats.failed == 0 and rec.stats.pending == 0

        if not worker.alive:  # the worker's own resilience is not under test here
            pytest.fail("the worker died during the Kafka outage\n" + worker.log_tail())

        for run_id in runs:
            want = expected[run_id]
            rollup = await rollup_with(reader, run_id, len(want), timeout=120)
            assert rollup["entryCount"] == len(want), run_id
            sums = {f: 0 for f in TOKEN_FIELDS}
            for usage in want:
                for field, value in usage.to_wire().items():
                    sums[field] += value
            sums["total"] = sums["prompt"] + sums["completion"]
            assert rollup["tokens"] == sums, run_id
            page = await reader.get_entries(run_id, limit=1000)
            assert page.total == len(want)
            assert len({e["id"] for e in page.entries}) == len(want)
