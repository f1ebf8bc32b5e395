"""The real stack answers: a message through a fresh Kafka topic, a key through Redis."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from processor.settings import Settings
from processor.stack import StackInfo
from tests.integration.harness import consume_all, create_topics, owned_topics, produce


async def test_kafka_roundtrip(settings: Settings) -> None:
    await create_topics(settings)
    messages: list[tuple[bytes | None, bytes]] = [
        (b"run-1", b'{"n": 1}'),
        (b"run-2", b'{"n": 2}'),
        (b"run-1", b'{"n": 3}'),
        (None, b'{"n": 4}'),
    ]
    sent = await produce(settings, settings.topic_entries, messages)
    assert [m.topic for m in sent] == [settings.topic_entries] * len(messages)

    got = await consume_all(settings, settings.topic_entries, len(messages), timeout=30)

    def order(m: tuple[bytes | None, bytes]) -> tuple[bytes, bytes]:
        return (m[0] or b"", m[1])

    assert sorted(((r.key, r.value) for r in got), key=order) == sorted(messages, key=order)
    # same key, same partition, in order
    run1 = [r.value for r in sorted(got, key=lambda r: r.offset) if r.key == b"run-1"]
    assert run1 == [b'{"n": 1}', b'{"n": 3}']
    assert len({r.partition for r in got if r.key == b"run-1"}) == 1


async def test_topics_are_per_test(settings: Settings) -> None:
    await create_topics(settings)
    assert await consume_all(settings, settings.topic_dlq, 0, timeout=1) == []
    assert len(set(owned_topics(settings))) == 4
    assert all(t.startswith(settings.topic_entries.split(".")[0]) for t in owned_topics(settings))


async def test_redis_roundtrip(redis_client: aioredis.Redis, settings: Settings) -> None:
    assert await redis_client.ping()
    key = f"{settings.key_prefix}:roundtrip:{uuid.uuid4().hex}"
    await redis_client.set(key, "value-1")
    assert await redis_client.get(key) == b"value-1"
    assert await redis_client.incrby(f"{key}:n", 5) == 5


async def test_local_redis_persists_with_aof(
    stack: StackInfo, redis_client: aioredis.Redis
) -> None:
    if stack.redis_pid is None:
        pytest.skip("an external Redis (USAGE_TEST_REDIS_URL): its persistence is its owner's")
    config = await redis_client.config_get("append*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
