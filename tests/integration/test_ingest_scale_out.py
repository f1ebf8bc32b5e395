"""Two workers share the entries topic's partitions; one stops mid-stream, the other takes over.

Both run with the same settings except the API port, hence the same consumer group. The
first wave must be split between them (each assigned a share of the 4 partitions, the
union all 4, and each applying entries) and give exact rollups; during the second wave
one worker is stopped with SIGTERM, the survivor gets all 4 partitions, and the final
rollups are exact again.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from processor.consumer import ingest_group_id
from processor.domain.pricing import load_catalog
from processor.settings import Settings
from processor.simulate import Fleet
from processor.stack.ports import pick_port
from tests.integration.ground_truth import (
    GroundTruth,
    check_all_runs,
    fetch_metrics,
    messages,
    metric_sum,
    wait_caught_up,
    with_duplicates,
)
from tests.integration.harness import WorkerProcess, create_topics, produce, wait_for

_ASSIGNED = re.compile(r"ingest partitions assigned: \[([0-9, ]*)\]")
ALL_PARTITIONS = {0, 1, 2, 3}


def assignment(worker: WorkerProcess) -> set[int] | None:
    """The worker's current ingest partitions: the last assignment it logged (eager
    rebalancing hands every member its whole assignment each time)."""
    if not worker.log_path.exists():
        return None
    found = _ASSIGNED.findall(worker.log_path.read_text(errors="replace"))
    if not found:
        return None
    return {int(p) for p in found[-1].replace(" ", "").split(",") if p}


async def handled(http: httpx.AsyncClient) -> float:
    m = await fetch_metrics(http)
    return metric_sum(m, "usage_entries_total", outcome="accepted") + metric_sum(
        m, "usage_entries_total", outcome="duplicate"
    )


async def test_two_workers_share_partitions_and_survive_one_stopping(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    settings = settings.model_copy(
        update={"batch_max_entries": 250, "kafka_session_timeout_ms": 6000}
    )
    other = settings.model_copy(update={"api_port": pick_port()})
    fleet = Fleet(seed=4242, users=10, active_runs=150, run_prefix=f"{settings.app_id}-s")
    wave1, late1 = with_duplicates(list(fleet.entries(6000)), fraction=0.1, seed=1)
    wave1 += late1
    wave2, late2 = with_duplicates(list(fleet.entries(20_000)), fraction=0.1, seed=2)
    wave2 += late2
    truth = GroundTruth(load_catalog(None))
    truth.add_all(wave1)

    await create_topics(settings)
    group = ingest_group_id(settings)
    a = WorkerProcess(settings, tmp_path / "worker-a.log")
    b = WorkerProcess(other, tmp_path / "worker-b.log")
    try:
        a.start()
        b.start()
        await a.wait_ready(timeout=90)
        await b.wait_ready(timeout=90)

        async def shared() -> tuple[set[int], set[int]] | None:
            pa, pb = assignment(a), assignment(b)
            if pa and pb and not pa & pb and pa | pb == ALL_PARTITIONS:
                return pa, pb
            return None

        await wait_for(shared, timeout=60, interval=0.2, message="partitions split between both")

        async with (
            httpx.AsyncClient(base_url=a.url, timeout=10.0) as http_a,
            httpx.AsyncClient(base_url=b.url, timeout=10.0) as http_b,
        ):
            # wave 1: both workers apply their share, together exactly
            await produce(settings, settings.topic_entries, messages(wave1))
            await wait_caught_up(settings, group, timeout=120)

            async def wave1_counted() -> bool:
                return await handled(http_a) + await handled(http_b) == len(wave1)

            await wait_for(wave1_counted, timeout=30, message="wave 1 in both workers' metrics")
            assert await handled(http_a) > 0 and await handled(http_b) > 0
            m_a, m_b = await fetch_metrics(http_a), await fetch_metrics(http_b)
            dups = metric_sum(m_a, "usage_entries_total", outcome="duplicate") + metric_sum(
                m_b, "usage_entries_total", outcome="duplicate"
            )
            assert dups == truth.duplicates
            await check_all_runs(http_a, truth)
            await check_all_runs(http_b, truth, entries=False)  # either worker serves all runs

            # wave 2: stop B with SIGTERM while the wave is still being produced and applied
            truth.add_all(wave2)
            producing = asyncio.create_task(
                produce(settings, settings.topic_entries, messages(wave2))
            )

            async def wave2_underway() -> float | None:
                if producing.done():
                    producing.result()  # surface a failed produce at once
                done = await handled(http_a) + await handled(http_b)
                return done if done - len(wave1) >= 0.15 * len(wave2) else None

            at_stop = await wait_for(
                wave2_underway, timeout=60, interval=0.02, message="wave 2 underway"
            )
            # the premise: B is stopped while part of wave 2 is still to be applied
            assert at_stop is not None and at_stop < len(wave1) + len(wave2)
        code = await b.aterminate(timeout=30)
        assert code == 0, b.log_tail()
        await producing

        await wait_for(
            lambda: assignment(a) == ALL_PARTITIONS,
            timeout=60,
            interval=0.2,
            message="the survivor owns all partitions",
        )
        await wait_caught_up(settings, group, timeout=120)
        async with httpx.AsyncClient(base_url=a.url, timeout=10.0) as http_a:
            await check_all_runs(http_a, truth)
    finally:
        await b.aterminate(timeout=20)
        await a.aterminate(timeout=20)
