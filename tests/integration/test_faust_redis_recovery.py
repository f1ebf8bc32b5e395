"""RedisStore under a real Faust worker, Kafka and Redis: restart, lagging Redis, SIGKILL.

The worker (``faust_table_app``) counts events by key in ``app.Table(store="redis://...")``.
What is proved:

- after a graceful stop Redis holds every count and, per partition, the changelog offset
  of the last record (so a restart replays nothing);
- when Redis lags the changelog (restored from an older consistent snapshot), the
  restart replays exactly the records after Redis' offset -- not the whole changelog --
  and ends with exact counts;
- after SIGKILL mid-stream Redis is exactly a prefix of the changelog (data == fold of
  the records up to the stored offset, offset never ahead), recovery replays exactly the
  rest, and the final state equals the fold of the whole changelog.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from processor.settings import Settings
from processor.store.keys import table_data_key, table_offset_key
from tests.integration.harness import create_topics, produce, wait_for

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
N = 20_000
KEYS = 200
PARTS = 4
TABLE = "counts"
RECOVERY_LINE = re.compile(rb"recovery applied (\d+) changelog records")

PartState = tuple[dict[bytes, bytes], int | None]


class FaustWorker:
    """``python -m faust -A tests.integration.faust_table_app worker`` as a subprocess."""

    def __init__(self, settings: Settings, topic: str, log_path: Path) -> None:
        self.settings, self.topic, self.log_path = settings, topic, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.store_url = f"{settings.redis_url}?prefix={settings.key_prefix}&flush_interval_ms=50"

    def start(self) -> None:
        s = self.settings
        env = dict(
            os.environ,
            FTA_APP_ID=s.app_id,
            FTA_BROKER=s.kafka_bootstrap,
            FTA_TOPIC=self.topic,
            FTA_PARTITIONS=str(PARTS),
            FTA_STORE=self.store_url,
            PYTHONPATH=str(REPO_ROOT),
            PYTHONUNBUFFERED="1",
        )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "faust",
                    "-A",
                    "tests.integration.faust_table_app",
                    "worker",
                    "-l",
                    "info",
                    "--web-port",
                    str(s.api_port),
                ],
                cwd=self.log_path.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def recoveries(self) -> list[int]:
        """Changelog records applied by each recovery so far (one entry per rebalance)."""
        return [int(m) for m in RECOVERY_LINE.findall(self.log_path.read_bytes())]

    async def wait_recovered(self, nth: int, timeout: float = 90.0) -> int:
        def done() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            return len(self.recoveries()) >= nth

        await wait_for(done, timeout=timeout, interval=0.1, message=f"recovery #{nth}")
        return self.recoveries()[nth - 1]

    async def wait_line(self, text: bytes, nth: int = 1, timeout: float = 90.0) -> None:
        def done() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            return self.log_path.read_bytes().count(text) >= nth

        await wait_for(done, timeout=timeout, interval=0.05, message=f"{text!r} #{nth}")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)
        return await asyncio.to_thread(self.proc.wait, timeout)

    def kill_if_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log_path.read_bytes()[-4000:].decode(errors="replace")


def events(count: int, start: int = 0) -> list[tuple[bytes | None, bytes]]:
    return [(f"k{i % KEYS}".encode(), b"1") for i in range(start, start + count)]


def expected_counts(total: int) -> dict[bytes, bytes]:
    c = Counter(f"k{i % KEYS}" for i in range(total))
    return {f'"{k}"'.encode(): str(v).encode() for k, v in c.items()}


async def redis_state(r: aioredis.Redis, s: Settings) -> dict[int, PartState]:
    out: dict[int, PartState] = {}
    for p in range(PARTS):
        async with r.pipeline(transaction=True) as pipe:
            pipe.hgetall(table_data_key(s.key_prefix, s.app_id, TABLE, p))
            pipe.get(table_offset_key(s.key_prefix, s.app_id, TABLE, p))
            data, off = await pipe.execute()
        out[p] = (dict(data), None if off is None else int(off))
    return out


async def restore_state(r: aioredis.Redis, s: Settings, state: dict[int, PartState]) -> None:
    async with r.pipeline(transaction=True) as pipe:
        for p, (data, off) in state.items():
            dkey = table_data_key(s.key_prefix, s.app_id, TABLE, p)
            okey = table_offset_key(s.key_prefix, s.app_id, TABLE, p)
            pipe.delete(dkey, okey)
            if data:
                pipe.hset(dkey, mapping=data)  # type: ignore[arg-type]
            if off is not None:
                pipe.set(okey, off)
        await pipe.execute()


def merged(state: dict[int, PartState]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for data, _ in state.values():
        out.update(data)
    return out


def total(state: dict[int, PartState]) -> int:
    return sum(int(v) for v in merged(state).values())


async def read_changelog(s: Settings) -> dict[int, list[tuple[int, bytes, bytes | None]]]:
    """Every changelog record, per partition, up to the end offsets at call time."""
    topic = f"{s.app_id}-{TABLE}-changelog"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTS)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: dict[int, list[tuple[int, bytes, bytes | None]]] = {p: [] for p in range(PARTS)}

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in tps])

        while await behind():
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                out[tp.partition].extend(
                    (m.offset, m.key, m.value) for m in records if m.offset < end[tp]
                )
        return out
    finally:
        await consumer.stop()


def fold(records: list[tuple[int, bytes, bytes | None]], upto: int | None) -> dict[bytes, bytes]:
    state: dict[bytes, bytes] = {}
    for offset, key, value in records:
        if upto is None or offset > upto:
            break
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


def lag(records: list[tuple[int, Any, Any]], stored: int | None) -> int:
    """Changelog records after the stored offset (all of them when nothing is stored)."""
    return last_offset(records) - (-1 if stored is None else stored)


def last_offset(records: list[tuple[int, Any, Any]]) -> int:
    return records[-1][0] if records else -1


async def group_caught_up(s: Settings, topic: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(s.app_id)
        tps = [TopicPartition(topic, p) for p in range(PARTS)]
        end = await consumer.end_offsets(tps)
        return all(tp in committed and committed[tp].offset >= end[tp] for tp in tps)
    finally:
        await consumer.stop()
        await admin.close()


@pytest.fixture
async def topic(settings: Settings) -> str:
    name = f"{settings.app_id}.fta-events"
    await create_topics(settings, [name], PARTS)
    return name


async def test_restart_replays_only_what_redis_lacks(
    settings: Settings, redis_client: aioredis.Redis, topic: str, tmp_path: Path
) -> None:
    r, s = redis_client, settings
    worker = FaustWorker(s, topic, tmp_path / "worker.log")
    try:
        worker.start()
        assert await worker.wait_recovered(1) == 0
        await produce(s, topic, events(N))

        # A consistent part-way copy of Redis, used below as a "lagging Redis".
        async def partway() -> dict[int, PartState] | None:
            st = await redis_state(r, s)
            return st if total(st) >= N // 4 else None

        early = await wait_for(partway, timeout=120, interval=0.02, message="a quarter counted")
        assert early is not None

        async def all_counted() -> bool:
            return total(await redis_state(r, s)) == N

        await wait_for(all_counted, timeout=180, interval=0.1, message=f"{N} counted in Redis")
        assert await worker.stop() == 0

        log = await read_changelog(s)
        state = await redis_state(r, s)
        for p in range(PARTS):  # graceful stop: Redis holds everything, offset = last record
            assert state[p][1] == last_offset(log[p])
            assert state[p][0] == fold(log[p], last_offset(log[p]))
        assert merged(state) == expected_counts(N)

        # Restart with 100 more events: nothing to replay, counts stay exact.
        await produce(s, topic, events(100, start=N))
        worker.start()
        assert await worker.wait_recovered(2) == 0

        async def all_counted_plus() -> bool:
            return merged(await redis_state(r, s)) == expected_counts(N + 100)

        await wait_for(all_counted_plus, timeout=120, interval=0.1, message="N+100 counted")
        assert await worker.stop() == 0

        # Redis goes back to the part-way copy: recovery must replay exactly what it lacks.
        await restore_state(r, s, early)
        log = await read_changelog(s)
        lacking = sum(lag(log[p], early[p][1]) for p in range(PARTS))
        records = sum(len(v) for v in log.values())
        assert 0 < lacking < records
        worker.start()
        assert await worker.wait_recovered(3) == lacking

        async def restored() -> bool:
            return merged(await redis_state(r, s)) == expected_counts(N + 100)

        await wait_for(restored, timeout=60, interval=0.1, message="counts after replay")
        assert await worker.stop() == 0
        state = await redis_state(r, s)
        assert all(state[p][1] == last_offset(log[p]) for p in range(PARTS))
    finally:
        worker.kill_if_alive()


async def test_sigkill_leaves_a_changelog_prefix_and_recovery_replays_the_rest(
    settings: Settings, redis_client: aioredis.Redis, topic: str, tmp_path: Path
) -> None:
    r, s = redis_client, settings
    worker = FaustWorker(s, topic, tmp_path / "worker.log")
    try:
        worker.start()
        await worker.wait_recovered(1)
        await produce(s, topic, events(N))

        async def a_third() -> bool:
            return total(await redis_state(r, s)) >= N // 3

        await wait_for(a_third, timeout=120, interval=0.02, message="a third counted")
        await worker.stop(signal.SIGKILL)

        state = await redis_state(r, s)
        log = await read_changelog(s)
        for p in range(PARTS):
            data, off = state[p]
            assert off is None or off <= last_offset(log[p]), "offset ran ahead of changelog"
            assert data == fold(log[p], off), f"partition {p}: Redis is not a changelog prefix"
        lacking = sum(lag(log[p], state[p][1]) for p in range(PARTS))

        worker.start()
        assert await worker.wait_recovered(2) == lacking

        await wait_for(
            lambda: group_caught_up(s, topic),
            timeout=180,
            interval=0.2,
            message="worker consumed and committed every event",
        )
        assert await worker.stop() == 0

        state = await redis_state(r, s)
        log = await read_changelog(s)
        for p in range(PARTS):
            assert state[p] == (fold(log[p], last_offset(log[p])), last_offset(log[p]))
        counts = {k: int(v) for k, v in merged(state).items()}
        # at-least-once: events processed but not committed before the kill count again
        assert all(counts[k] >= int(v) for k, v in expected_counts(N).items())
        duplicates = sum(counts.values()) - N
        print(f"SIGKILL run: recovery replayed {lacking} records; {duplicates} re-deliveries")
    finally:
        worker.kill_if_alive()
