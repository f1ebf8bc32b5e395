"""SIGKILL a worker in the middle of a stream, restart it: no entry lost, none counted twice.

About 24k entries (all four kinds, sub-agent runs, 5% re-sent duplicates) are produced
before the worker starts, so it is mid-stream whenever it is killed. The kill comes when
the worker's own metrics show a given share of the stream handled: early, in the middle
and late. The restarted worker (same settings, so the same consumer group) re-reads from
the last committed offsets; the idempotent apply must turn that overlap into duplicates.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from processor.consumer import ingest_group_id
from processor.domain.pricing import load_catalog
from processor.settings import Settings
from tests.integration.ground_truth import (
    GroundTruth,
    check_all_runs,
    committed_offsets,
    end_offsets,
    fetch_metrics,
    fleet_entries,
    messages,
    metric_sum,
    redis_offsets,
    wait_caught_up,
    with_duplicates,
)
from tests.integration.harness import WorkerProcess, create_topics, produce, wait_for

ENTRIES = 48_000  # enough that a kill at 75% still lands mid-stream on a fast run


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.75], ids=["early", "middle", "late"])
async def test_sigkill_mid_stream_then_restart_is_exact(
    settings: Settings, tmp_path: Path, fraction: float, redis_client: aioredis.Redis
) -> None:
    # Small batches keep the worker busy for a while (many commits to fall between);
    # the broker's minimum session timeout shortens the wait for the dead member to leave.
    settings = settings.model_copy(
        update={"batch_max_entries": 200, "kafka_session_timeout_ms": 6000}
    )
    fleet = fleet_entries(ENTRIES, seed=int(fraction * 1000), prefix=f"{settings.app_id}-c")
    stream, late = with_duplicates(fleet, fraction=0.05, seed=7)
    stream += late  # the "late" half is re-sent at the end of the same wave
    truth = GroundTruth(load_catalog(None))
    truth.add_all(stream)
    total = len(stream)

    await create_topics(settings)
    await produce(settings, settings.topic_entries, messages(stream))
    group = ingest_group_id(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.start()
        await worker.wait_ready(timeout=90)
        async with httpx.AsyncClient(base_url=worker.url, timeout=5.0) as http:

            async def handled() -> float | None:
                m = await fetch_metrics(http)
                n = metric_sum(m, "usage_entries_total", outcome="accepted") + metric_sum(
                    m, "usage_entries_total", outcome="duplicate"
                )
                return n if n >= fraction * total else None

            seen_at_kill = await wait_for(
                handled, timeout=120, interval=0.02, message=f"{fraction:.0%} handled"
            )
        worker.kill(signal.SIGKILL)
        assert worker.returncode == -signal.SIGKILL

        ends = await end_offsets(settings, settings.topic_entries)
        committed = await committed_offsets(settings, group, settings.topic_entries)
        held = await redis_offsets(settings, group, settings.topic_entries)
        behind = sum(end - held.get(p, 0) for p, end in ends.items())
        # the premise: the worker died with part of the stream not yet applied
        assert behind > 0, f"worker finished before the kill ({seen_at_kill} handled)"
        # Kafka's commit follows the position Redis holds, never leads it
        assert all(committed.get(p, 0) <= held.get(p, 0) for p in ends)

        worker.start()
        await worker.wait_ready(timeout=90)
        await wait_caught_up(settings, group, timeout=120)
        async with httpx.AsyncClient(base_url=worker.url, timeout=10.0) as http:
            m = await fetch_metrics(http)
            again = metric_sum(m, "usage_entries_total", outcome="accepted") + metric_sum(
                m, "usage_entries_total", outcome="duplicate"
            )
            await check_all_runs(http, truth)
            # the restarted worker re-read at least what Redis did not hold
            assert again >= behind
            assert metric_sum(m, "usage_entries_total", outcome="rejected") == 0
    finally:
        await worker.aterminate(timeout=20)
