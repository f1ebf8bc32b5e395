"""SIGKILL a worker, several times, while a stream crosses a day end and a month end.

The stream follows event time from 2025-12-30 20:00 to 2026-01-01 20:00 UTC (a day end,
then the end of December and of the year), with jitter (entries arrive up to ten minutes
out of order), the first and last millisecond of each day and hour around the ends, all
four kinds, and 8% re-sent ids. It is produced at a steady rate while the worker applies
it; the worker is SIGKILLed at random moments (one of them when the applied stream is
around the month end) and restarted each time with the same settings. Once everything is
applied, every hourly (Redis), daily, monthly and all-time figure of every user and every
billing list must equal the model, and every run's rollup the run model.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import signal
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from processor.consumer import ingest_group_id
from processor.domain.pricing import load_catalog
from processor.settings import Settings
from processor.store.keys import Keys
from tests.integration.ground_truth import (
    Entry,
    GroundTruth,
    UserWindowsTruth,
    check_all_runs,
    check_billing,
    check_user,
    check_user_hours,
    messages,
    utc_ms,
    wait_caught_up,
    with_duplicates,
)
from tests.integration.harness import WorkerProcess, create_topics
from tests.integration.redis_control import PacedProducer
from tests.integration.user_streams import (
    EntryMaker,
    applied_count,
    decoding_redis,
    wait_applied,
    window_settings,
)

USERS = [f"user-{i}" for i in range(8)]
START = utc_ms("2025-12-30T20:00:00Z")
END = utc_ms("2026-01-01T20:00:00Z")
MONTH_END = utc_ms("2026-01-01T00:00:00Z")
EDGES = [
    "2025-12-30T23:59:59.999Z",
    "2025-12-31T00:00:00.000Z",
    "2025-12-31T12:59:59.999Z",
    "2025-12-31T13:00:00.000Z",
    "2025-12-31T23:59:59.999Z",
    "2026-01-01T00:00:00.000Z",
    "2026-01-01T00:59:59.999Z",
    "2026-01-01T01:00:00.000Z",
]
ENTRIES = 3_000
RATE = 200.0  # entries per second (paused while the worker is down)
KILLS = 3
JITTER_MS = 600_000


def crossing_stream(maker: EntryMaker) -> list[Entry]:
    """Event time moving forward over the period, each entry up to JITTER_MS early or
    late; edges inserted where event time reaches them."""
    rnd = maker.rnd
    step = (END - START) / ENTRIES
    stamps = []
    for i in range(ENTRIES):
        ts = int(START + i * step) + rnd.randint(-JITTER_MS, JITTER_MS)
        stamps.append(min(END - 1, max(START, ts)))
    for edge in EDGES:
        at = utc_ms(edge)
        i = min(ENTRIES - 1, int((at - START) / step))
        stamps[i:i] = [at] * 3
    return maker.many(stamps)


async def test_sigkill_across_a_month_end_keeps_every_window_exact(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    # small batches: many Redis steps for a kill to fall between; the broker's minimum
    # session timeout so that a killed member's partitions move quickly
    settings = window_settings(settings, batch_max_entries=100, kafka_session_timeout_ms=6000)
    rnd = random.Random(20251231)
    maker = EntryMaker(20260101, settings.app_id, USERS, runs_per_user=4)
    entries = crossing_stream(maker)
    stream, late = with_duplicates(entries, fraction=0.08, seed=7)
    stream += late
    truth = UserWindowsTruth(load_catalog(None))
    truth.add_all(stream)
    runs = GroundTruth(load_catalog(None))
    runs.add_all(stream)
    assert truth.periods("default") == ["2025-12", "2026-01"]

    # kill moments, as shares of the distinct entries applied: one around the month end
    # (the share of the stream produced before it), the others anywhere
    crossing = bisect.bisect_left([e["timestamp"] for e in entries], MONTH_END) / len(entries)
    moments = sorted(
        [crossing + rnd.uniform(-0.03, 0.03)] + [rnd.uniform(0.05, 0.9) for _ in range(KILLS - 1)]
    )

    await create_topics(settings)
    redis = decoding_redis(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    producer = PacedProducer(settings, settings.topic_entries, messages(stream), rate=RATE)
    try:
        worker.start()
        await worker.wait_ready(timeout=90)
        producer.start()
        mid_stream = 0
        for i, share in enumerate(moments):
            await wait_applied(
                redis, settings, int(share * truth.accepted), timeout=120, workers=[worker]
            )
            worker.kill(signal.SIGKILL)
            assert worker.returncode == -signal.SIGKILL
            # no new entries while it is down: the next moment is aimed in applied entries
            await producer.pause()
            at_kill = await applied_count(redis, settings)
            if at_kill < truth.accepted:
                mid_stream += 1
            print(f"kill {i + 1}: {at_kill}/{truth.accepted} applied (aimed at {share:.0%})")
            worker.start()
            await worker.wait_ready(timeout=90)
            producer.resume()
        # the premise: the worker died with part of the stream not yet applied
        assert mid_stream >= 1, "every kill came after the whole stream was applied"
        await producer.wait_done(timeout=180)

        await wait_applied(redis, settings, truth.accepted, timeout=120, workers=[worker])
        await wait_caught_up(settings, ingest_group_id(settings), timeout=120)
        assert await applied_count(redis, settings) == truth.accepted
        async with httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http:
            users = truth.users("default")
            assert users == USERS
            await asyncio.gather(*(check_user(http, truth, "default", u) for u in users))
            keys = Keys(settings.key_prefix)
            for user in users:
                await check_user_hours(redis, keys, truth, "default", user)
            for period in truth.periods("default"):
                await check_billing(http, truth, "default", period, limit=3)
            await check_all_runs(http, runs, entries=False)
    finally:
        await producer.stop()
        await worker.aterminate(timeout=20)
        await redis.aclose()
