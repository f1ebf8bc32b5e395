"""Kafka's committed offsets catch up with what Redis holds, even for a partition with
nothing left to read: a worker that crashed after applying a partition to its end, but
before committing that to Kafka, gets no batch of it again, so it commits the offsets
Redis holds when the partition is assigned (lag monitoring reads Kafka's commits)."""

from __future__ import annotations

from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.consumer import ingest_group_id
from processor.settings import Settings
from tests.integration.ground_truth import (
    committed_offsets,
    end_offsets,
    fleet_entries,
    messages,
    redis_offsets,
    wait_caught_up,
)
from tests.integration.harness import WorkerProcess, create_topics, produce
from tests.integration.user_streams import applied_count, decoding_redis


async def _commit(settings: Settings, group: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` for ``group`` as a member of no group generation (the group has
    no live member): what a worker that died before its commit leaves behind."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = {TopicPartition(settings.topic_entries, p): o for p, o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


async def test_offsets_redis_holds_are_committed_on_assignment(
    settings: Settings, tmp_path: Path
) -> None:
    await create_topics(settings)
    entries = fleet_entries(400, seed=5, prefix=f"{settings.app_id}-o")
    await produce(settings, settings.topic_entries, messages(entries))
    group = ingest_group_id(settings)
    redis = decoding_redis(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.start()
        await worker.wait_ready(timeout=90)
        await wait_caught_up(settings, group, timeout=60)
        applied = await applied_count(redis, settings)
        await worker.aterminate(timeout=30)

        ends = await end_offsets(settings, settings.topic_entries)
        assert await redis_offsets(settings, group, settings.topic_entries) == ends
        # Kafka's commits behind what Redis holds, on every partition
        await _commit(settings, group, dict.fromkeys(ends, 0))
        assert set((await committed_offsets(settings, group, settings.topic_entries)).values()) == {
            0
        }

        worker.start()
        await worker.wait_ready(timeout=90)
        # nothing new to read, yet the group's commits reach the end offsets
        await wait_caught_up(settings, group, timeout=60)
        assert await applied_count(redis, settings) == applied  # and nothing was re-applied
    finally:
        await worker.aterminate(timeout=20)
        await redis.aclose()
