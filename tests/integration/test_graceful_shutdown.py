"""SIGTERM to a worker in the middle of a backlog: it finishes the batch in flight, commits
it to Kafka and exits 0 well within the Kubernetes grace period; the next worker goes on
from there and the total is exact (tools/measure_shutdown.py times this repeatedly)."""

from __future__ import annotations

import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from processor.batch_pipeline import now_ms
from processor.consumer import ingest_group_id
from processor.settings import Settings
from processor.simulate import Fleet, encode
from processor.store.keys import Keys
from tests.integration.harness import WorkerProcess, create_topics, produce, wait_for

ENTRIES = 60_000
#: deploy/k8s: terminationGracePeriodSeconds 25 minus the 5 s preStop sleep
EXIT_BUDGET_S = 20.0


async def _offsets(settings: Settings, redis: Redis) -> tuple[dict[int, int], dict[int, int]]:
    group = ingest_group_id(settings)
    raw = await redis.hgetall(Keys(settings.key_prefix).offsets(group))  # type: ignore[misc]
    held = {int(k.decode().rsplit(":", 1)[1]): int(v) for k, v in raw.items()}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return held, {
        tp.partition: meta.offset
        for tp, meta in committed.items()
        if tp.topic == settings.topic_entries and meta.offset >= 0
    }


async def test_sigterm_finishes_and_commits_the_batch_in_flight(
    settings: Settings, redis_client: Redis, tmp_path: Path
) -> None:
    await create_topics(settings)
    fleet = Fleet(seed=4, run_prefix=settings.app_id, start_ms=now_ms() - 3_600_000)
    await produce(settings, settings.topic_entries, [encode(e) for e in fleet.entries(ENTRIES)])
    stats = Keys(settings.key_prefix).stats()

    async def applied() -> int:
        return int(await redis_client.hget(stats, "applied") or 0)  # type: ignore[misc]

    async def applied_all() -> bool:
        return await applied() >= ENTRIES

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await worker.wait_ready(timeout=90)
        await wait_for(applied, timeout=60, message="a first batch applied")
        started = time.monotonic()
        code = await worker.aterminate(timeout=EXIT_BUDGET_S)
        took = time.monotonic() - started
    except BaseException:
        await worker.aterminate(timeout=10)
        raise
    log = worker.log_path.read_text(errors="replace")
    assert code == 0, f"exit code {code} after SIGTERM\n{worker.log_tail(80)}"
    assert took < EXIT_BUDGET_S
    assert "stopping with a batch in flight" not in log, worker.log_tail(80)
    done = await applied()
    assert 0 < done < ENTRIES, "the worker was not busy when SIGTERM came: produce more"

    held, committed = await _offsets(settings, redis_client)
    assert held and committed == held, (held, committed)

    # the next worker starts where this one stopped: nothing lost, nothing counted twice
    async with WorkerProcess(settings, tmp_path / "worker2.log"):
        await wait_for(applied_all, timeout=120, message="backlog applied")
    assert await applied() == ENTRIES
