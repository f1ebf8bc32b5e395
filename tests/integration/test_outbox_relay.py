"""The outbox relay against the real Kafka and Redis: every outbox entry exactly once.

Each test appends entries (``k``, ``v``, ``id``) to its own outbox stream, runs relays, and
then reads the target topic from the start with a read_committed consumer up to its last
stable offset. Every test ends with a ``drain`` (a fresh relay, which fences every other
and ends their open transactions), so nothing is left undecided when the topic is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import ProducerFenced
from aiokafka.structs import ConsumerRecord

from processor.outbox import OutboxRelay, drain, encode_progress
from processor.settings import ENV_PREFIX, Settings, settings_env
from processor.store.keys import Keys
from processor.topics import ensure_topics
from tests.integration.harness import REPO_ROOT, create_topics, wait_for
from tests.integration.redis_control import RedisServer, restore_from_rdb, snapshot_rdb

pytestmark = pytest.mark.integration

OUTBOX = "alerts"
KEYS = [f"subject-{i}" for i in range(7)]


def message(i: int, prefix: str = "m") -> tuple[str, str, str]:
    """(k, v, id) of logical message ``i``: the value carries its id and sequence."""
    mid = f"{prefix}{i}"
    key = KEYS[i % len(KEYS)]
    return key, json.dumps({"id": mid, "seq": i, "key": key}), mid


async def append(
    redis: aioredis.Redis, stream: str, messages: Sequence[tuple[str, str, str]]
) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for k, v, mid in messages:
            pipe.xadd(stream, {"k": k, "v": v, "id": mid})
        await pipe.execute()


@pytest.fixture
async def outbox(settings: Settings) -> Settings:
    """The test's settings with a progress topic of its own; all owned topics created."""
    u = settings.topic_entries.split(".")[0]
    s = settings.model_copy(update={"topic_outbox_progress": f"{u}.usage.outbox.progress"})
    await ensure_topics(s)
    await create_topics(s, [s.topic_notifications])  # exists: waits for its leaders
    await create_topics(s, [s.topic_outbox_progress], partitions=1)
    return s


def stream_key(settings: Settings) -> str:
    return Keys(settings.key_prefix).outbox(OUTBOX)


async def partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    async def known() -> set[int]:
        await consumer._client.force_metadata_update()
        return consumer.partitions_for_topic(topic) or set()

    found = await wait_for(known, timeout=30, interval=0.2, message=f"{topic} metadata")
    return [TopicPartition(topic, p) for p in sorted(found)]


async def read_committed(
    settings: Settings, topic: str, timeout: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of ``topic``. Each partition is read up to its high watermark
    (aiokafka's end_offsets ignores the isolation level), so only once every transaction on
    it has ended: the tests drain first, which ends any a killed relay left open."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        parts = await partitions(consumer, topic)
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        await consumer.seek_to_beginning(*parts)

        async def done() -> bool:
            for tp_records in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(tp_records)
            return all([await consumer.position(tp) >= ends[tp] for tp in parts])

        await wait_for(done, timeout=timeout, interval=0, message=f"{topic} read to its end")
    finally:
        await consumer.stop()
    return records


async def end_offsets_total(settings: Settings, topic: str) -> int:
    """Sum of the high watermarks (aborted records and markers included): any progress."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        parts = await partitions(consumer, topic)
        return sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()


def assert_exactly_once(
    records: list[ConsumerRecord[bytes, bytes]], expected: Sequence[tuple[str, str, str]]
) -> None:
    got = Counter(json.loads(r.value)["id"] for r in records)
    doubled = {mid: n for mid, n in got.items() if n > 1}
    want = {mid for _, _, mid in expected}
    missing = want - set(got)
    extra = set(got) - want
    assert not doubled and not missing and not extra, (
        f"{len(doubled)} doubled (e.g. {sorted(doubled.items())[:5]}), {len(missing)} missing "
        f"(e.g. {sorted(missing)[:5]}), {len(extra)} unexpected (e.g. {sorted(extra)[:5]})"
    )
    by_id = {mid: (k, v) for k, v, mid in expected}
    for r in records:
        mid = json.loads(r.value)["id"]
        assert (r.key, r.value) == (by_id[mid][0].encode(), by_id[mid][1].encode())


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[OutboxRelay]:
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


# --- (a) every entry once, keys and values intact, in stream order per key ------------


async def test_entries_published_once_in_order_per_key(
    outbox: Settings, redis_client: aioredis.Redis
) -> None:
    s, topic = outbox, outbox.topic_notifications
    expected = [message(i) for i in range(1234)]
    await append(redis_client, stream_key(s), expected)

    async with running(OutboxRelay(s, redis_client, OUTBOX, topic, batch=100)) as relay:
        await wait_for(lambda: relay.published == len(expected), timeout=60, message="published")
    assert await drain(s, redis_client, OUTBOX, topic) == 0

    records = await read_committed(s, topic)
    assert_exactly_once(records, expected)
    for tp in {(r.topic, r.partition) for r in records}:
        in_partition = sorted(
            (r for r in records if (r.topic, r.partition) == tp), key=lambda r: r.offset
        )
        for key in KEYS:
            seqs = [json.loads(r.value)["seq"] for r in in_partition if r.key == key.encode()]
            assert seqs == sorted(seqs), f"{key} out of stream order on partition {tp}"


# --- (b) two relays of the same outbox at once -----------------------------------------


async def test_two_relays_at_once_publish_each_message_once(
    outbox: Settings, redis_client: aioredis.Redis
) -> None:
    s, topic = outbox, outbox.topic_notifications
    expected = [message(i) for i in range(2000)]

    async def appender() -> None:
        for start in range(0, len(expected), 25):
            await append(redis_client, stream_key(s), expected[start : start + 25])
            await asyncio.sleep(0.005)  # pacing, so the relays run while entries arrive

    first = OutboxRelay(s, redis_client, OUTBOX, topic, batch=40)
    second = OutboxRelay(s, redis_client, OUTBOX, topic, batch=40)
    async with running(first):
        feeding = asyncio.create_task(appender())
        await wait_for(lambda: first.published > 0, timeout=60, message="first relay publishing")
        async with running(second):  # fences the first, which fences it back, and so on
            await feeding

            async def all_handled() -> bool:
                return bool(await redis_client.xlen(stream_key(s)) == 0)

            await wait_for(all_handled, timeout=120, interval=0.1, message="outbox emptied")
    # an entry leaves the stream only once its transaction committed: nothing left to do
    assert await drain(s, redis_client, OUTBOX, topic) == 0
    assert_exactly_once(await read_committed(s, topic), expected)


async def test_a_relay_fenced_by_a_newer_one_commits_nothing(
    outbox: Settings, redis_client: aioredis.Redis
) -> None:
    """The same hand-over step by step: whichever relay (re)started last fences the other,
    whose next transaction fails and leaves its entries in the stream for the new one."""
    s, topic, key = outbox, outbox.topic_notifications, stream_key(outbox)
    expected = [message(i) for i in range(400)]
    old, new = (OutboxRelay(s, redis_client, OUTBOX, topic, batch=100) for _ in range(2))
    try:
        await append(redis_client, key, expected[:100])
        assert await old.relay_once() == 100
        await append(redis_client, key, expected[100:200])
        assert await new.relay_once() == 100  # opens: fences `old`
        for fenced, part in [(old, expected[200:300]), (new, expected[300:])]:
            await append(redis_client, key, part)
            with pytest.raises(ProducerFenced) as failure:
                await fenced.relay_once()
            assert await redis_client.xlen(key) == 100  # nothing deleted: nothing committed
            await fenced.after_failure(failure.value)  # drops its producer
            assert await fenced.relay_once() == 100  # reopens: fences the other in turn
        assert (old.published, new.published) == (200, 200)
    finally:
        await old.close_producer()
        await new.close_producer()
    assert_exactly_once(await read_committed(s, topic), expected)


# --- (c) SIGKILL at random moments -----------------------------------------------------


class RelayProcess:
    """``python -m tests.integration.outbox_child`` with the test's settings."""

    def __init__(self, settings: Settings, log_path: Path, topic: str) -> None:
        self.settings, self.log_path, self.topic = settings, log_path, topic
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
        env.update(settings_env(self.settings))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.outbox_child", OUTBOX, self.topic],
                cwd=self.log_path.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            assert self.proc.returncode == -signal.SIGKILL

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


async def test_sigkill_at_random_moments_then_drain_is_exact(
    outbox: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    s, topic = outbox, outbox.topic_notifications
    rng = random.Random(20240917)
    expected = [message(i) for i in range(3000)]
    appended = 0

    async def appender() -> None:
        nonlocal appended
        for start in range(0, len(expected), 10):
            await append(redis_client, stream_key(s), expected[start : start + 10])
            appended = start + 10
            await asyncio.sleep(0.02)  # pacing: entries keep arriving across the kills

    child = RelayProcess(s, tmp_path / "relay.log", topic)
    feeding = asyncio.create_task(appender())
    try:
        for _ in range(6):
            before = await end_offsets_total(s, topic)
            child.start()
            step = rng.randint(1, 150)

            async def progressed(before: int = before, step: int = step) -> bool:
                if child.proc is not None and child.proc.poll() is not None:
                    raise AssertionError("relay child exited\n" + child.log_tail())
                if feeding.done() and await redis_client.xlen(stream_key(s)) == 0:
                    return True  # nothing left to publish: kill it idle
                return await end_offsets_total(s, topic) >= before + step

            await wait_for(progressed, timeout=60, interval=0.05, message="child publishing")
            await asyncio.sleep(rng.uniform(0, 0.25))  # the random moment, not a wait
            child.kill()
        await feeding
    finally:
        feeding.cancel()
        child.kill()
    assert appended == len(expected)
    await drain(s, redis_client, OUTBOX, topic, timeout_s=120)
    assert_exactly_once(await read_committed(s, topic), expected)
    assert await redis_client.xlen(stream_key(s)) == 0


# --- (d) replayed entries, and Redis losing writes ---------------------------------------


async def test_replayed_ids_are_not_published_again(
    outbox: Settings, redis_client: aioredis.Redis
) -> None:
    s, topic, key = outbox, outbox.topic_notifications, stream_key(outbox)
    first = [message(i) for i in range(300)]
    await append(redis_client, key, first)
    assert await drain(s, redis_client, OUTBOX, topic) == 300

    # the step that wrote them is replayed: same ids, new stream ids, mixed with new ones
    fresh = [message(i) for i in range(300, 350)]
    await append(redis_client, key, first[250:] + fresh[:25] + first[:10] + fresh[25:])
    assert await drain(s, redis_client, OUTBOX, topic) == 50
    # stream ids from before the last one published (a restored Redis with a clock behind)
    await redis_client.delete(key)
    for n, (k, v, mid) in enumerate([*first[100:110], message(999)], start=1):
        await redis_client.xadd(key, {"k": k, "v": v, "id": mid}, id=f"1-{n}")
    assert await drain(s, redis_client, OUTBOX, topic) == 1
    assert_exactly_once(await read_committed(s, topic), [*first, *fresh, message(999)])


async def test_recent_ids_survive_restarts_across_the_ring(
    outbox: Settings, redis_client: aioredis.Redis
) -> None:
    """A small window (300 ids in 4 slots of 100) wraps several times; a fresh relay still
    knows the last 300 ids, read back from the latest record of each slot."""
    s, topic, key = outbox, outbox.topic_notifications, stream_key(outbox)
    options: dict[str, Any] = {"recent_ids": 300, "bucket_ids": 100, "batch": 30}
    expected = [message(i) for i in range(1000)]
    await append(redis_client, key, expected)
    assert await drain(s, redis_client, OUTBOX, topic, **options) == 1000
    await append(redis_client, key, expected[-300:])
    assert await drain(s, redis_client, OUTBOX, topic, **options) == 0
    assert_exactly_once(await read_committed(s, topic), expected)


async def test_redis_restored_from_a_snapshot_publishes_nothing_twice(
    outbox: Settings, tmp_path: Path
) -> None:
    """Redis loses everything after a snapshot: the deletions of published entries come
    back as entries, and the step that wrote them is replayed on top."""
    primary = await RedisServer(tmp_path / "primary").start()
    restored: RedisServer | None = None
    s, topic, key = outbox, outbox.topic_notifications, stream_key(outbox)
    try:
        client = primary.client()
        first = [message(i) for i in range(200)]
        await append(client, key, first)
        rdb = await snapshot_rdb(primary, tmp_path / "snapshot")
        assert await drain(s, client, OUTBOX, topic) == 200
        await client.aclose()
        primary.kill()

        restored = await restore_from_rdb(tmp_path / "restored", rdb)
        client = restored.client()
        assert await client.xlen(key) == 200  # all published, all back
        fresh = [message(i) for i in range(200, 230)]
        await append(client, key, first[150:] + fresh)
        assert await drain(s, client, OUTBOX, topic) == 30
        assert await client.xlen(key) == 0
        await client.aclose()
    finally:
        primary.kill()
        if restored is not None:
            restored.kill()
    assert_exactly_once(await read_committed(s, topic), first + fresh)


async def test_progress_read_back_past_open_and_aborted_transactions(
    outbox: Settings, redis_client: aioredis.Redis
) -> None:
    """Another outbox's transaction, open since before our last commits, holds the progress
    topic's last stable offset below them; an aborted transaction wrote a record under our
    key after them. A restarted relay must wait for the first and ignore the second, or it
    would publish the replays below again."""
    s, topic, key = outbox, outbox.topic_notifications, stream_key(outbox)
    progress = s.topic_outbox_progress
    first = [message(i) for i in range(120)]

    def transactional(name: str) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap, transactional_id=f"{s.app_id}.{name}"
        )

    other, intruder = transactional("outbox.other"), transactional("intruder")
    await other.start()
    await intruder.start()
    try:
        async with running(OutboxRelay(s, redis_client, OUTBOX, topic, batch=20)) as relay:
            await append(redis_client, key, first[:60])
            await wait_for(lambda: relay.published == 60, timeout=60, message="first 60")
            await other.begin_transaction()
            await (await other.send(progress, key=b"other#0", value=b"{}", partition=0))
            await append(redis_client, key, first[60:])
            await wait_for(lambda: relay.published == 120, timeout=60, message="all 120")
        await intruder.begin_transaction()
        wrong = encode_progress("9-9", [mid for _, _, mid in first[100:]])
        await (await intruder.send(progress, key=b"alerts#0", value=wrong, partition=0))
        await intruder.abort_transaction()

        fresh = [message(i) for i in range(120, 130)]
        await append(redis_client, key, first + fresh)
        draining = asyncio.create_task(drain(s, redis_client, OUTBOX, topic))
        # room for a relay that reads only up to the last stable offset to go wrong
        await asyncio.wait({draining}, timeout=3)
        await other.commit_transaction()
        assert await draining == 10
    finally:
        await other.stop()
        await intruder.stop()
    assert_exactly_once(await read_committed(s, topic), first + fresh)


# --- (e) the stream is emptied; pending() follows; the gate holds ---------------------------


async def test_stream_trimmed_and_pending_reaches_zero(
    outbox: Settings, redis_client: aioredis.Redis
) -> None:
    s, topic, key = outbox, outbox.topic_notifications, stream_key(outbox)
    gate = {"open": False}
    expected = [message(i) for i in range(120)]
    relay = OutboxRelay(s, redis_client, OUTBOX, topic, active=lambda: gate["open"])
    async with running(relay):
        await append(redis_client, key, expected)
        await wait_for(lambda: relay.pending() == 120, timeout=30, message="backlog seen")
        assert relay.published == 0  # gate closed: it only watches
        gate["open"] = True
        await wait_for(lambda: relay.pending() == 0 and relay.published == 120, timeout=60)
        assert await redis_client.xlen(key) == 0
        assert (
            relay.stream_id == (await redis_client.xinfo_stream(key))["last-generated-id"].decode()
        )
    assert_exactly_once(await read_committed(s, topic), expected)


async def test_progress_topic_is_compacted_with_one_partition(outbox: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=outbox.kafka_bootstrap)
    await admin.start()
    try:
        [meta] = await admin.describe_topics([outbox.topic_outbox_progress])
        assert len(meta["partitions"]) == 1
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, outbox.topic_outbox_progress)]
        )
        configs = {c[0]: c[1] for c in response.resources[0][4]}
        assert configs["cleanup.policy"] == "compact"
    finally:
        await admin.close()
