"""Redis loses writes the worker made; the worker must replay them, and end exact.

Each test runs its own redis-server(s) on free loopback ports (the local stack's
configuration: AOF ``everysec``) and the session's Kafka. A stream of entries (all kinds,
sub-agent runs, re-sent duplicates) is produced at a steady rate while a worker runs on
the primary. At a moment taken from the worker's own metrics (early, middle, late share
of the stream handled) Redis' state is frozen somewhere else; the worker goes on writing
to the primary for another tenth of the stream; then Redis loses everything since the
moment:

- replica promotion: a replica is detached (``REPLICAOF NO ONE``) at the moment, so it
  keeps the state as of then; the worker is SIGKILLed, the primary stopped, and the
  worker restarted on the promoted replica (with one worker, and with two);
- snapshot restore: ``BGSAVE`` at the moment, the RDB file copied; worker and primary
  killed; a fresh redis-server started from the copy; the worker restarted on it;
- failover behind a stable address: the worker talks to Redis through a TCP proxy; the
  primary is killed and the proxy switched to the detached replica while the worker
  keeps running (no restart).

The last 15% of the stream is produced only once the worker runs on the new Redis, so
the replay and the fresh tail interleave. Kafka's committed offsets are ahead of what the
new Redis holds; only offsets kept in Redis with the effects make the worker go back far
enough. Once the worker caught up (consumer lag 0), every run must equal the ground truth.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from processor.consumer import ingest_group_id
from processor.domain.pricing import load_catalog
from processor.settings import Settings
from processor.stack.ports import pick_port
from tests.integration.ground_truth import (
    GroundTruth,
    end_offsets,
    fleet_entries,
    messages,
    wait_caught_up,
    with_duplicates,
)
from tests.integration.harness import WorkerProcess, create_topics
from tests.integration.redis_control import (
    PacedProducer,
    RedisServer,
    SwitchableProxy,
    assert_nothing_lost,
    assert_redis_offsets_at_end,
    detach,
    restore_from_rdb,
    snapshot_rdb,
    stats_applied,
    wait_handled,
    wait_replica_in_sync,
)

ENTRIES = 20_000
RATE = 4_000.0  # entries per second while producing (a worker applies several times that)
HEAD = 0.85  # share of the stream produced before the loss; the rest once recovered
GOES_ON = 0.10  # share of the stream the worker applies on the primary after the moment


def build_stream(
    settings: Settings, seed: int
) -> tuple[list[tuple[bytes | None, bytes]], GroundTruth]:
    fleet = fleet_entries(ENTRIES, seed=seed, prefix=f"{settings.app_id}-r")
    stream, late = with_duplicates(fleet, fraction=0.04, seed=seed + 1)
    stream += late  # re-sent near the end: after the loss, across the replayed range
    truth = GroundTruth(load_catalog(None))
    truth.add_all(stream)
    return messages(stream), truth


def base_settings(settings: Settings, redis_url: str) -> Settings:
    # Small batches: many Redis steps (and Kafka commits) fall between moment and kill;
    # the broker's minimum session timeout shortens the wait for dead members to leave.
    return settings.model_copy(
        update={
            "redis_url": redis_url,
            "batch_max_entries": 500,
            "kafka_session_timeout_ms": 6000,
        }
    )


def make_workers(settings: Settings, tmp_path: Path, count: int) -> list[WorkerProcess]:
    workers = []
    for i in range(count):
        s = settings if i == 0 else settings.model_copy(update={"api_port": pick_port()})
        workers.append(WorkerProcess(s, tmp_path / f"worker{i}.log"))
    return workers


def moved_to(workers: list[WorkerProcess], redis_url: str) -> list[WorkerProcess]:
    """The same workers (settings, port, log) configured for another Redis."""
    return [
        WorkerProcess(w.settings.model_copy(update={"redis_url": redis_url}), w.log_path)
        for w in workers
    ]


async def start_all(workers: list[WorkerProcess]) -> None:
    for w in workers:
        w.start()
    for w in workers:
        await w.wait_ready(timeout=120)


async def stop_all(workers: list[WorkerProcess]) -> None:
    for w in workers:
        await w.aterminate(timeout=20)


async def caught_up(settings: Settings, workers: list[WorkerProcess]) -> None:
    """Consumer lag 0 (everything produced so far is committed), or fail with the logs."""
    try:
        await wait_caught_up(settings, ingest_group_id(settings), timeout=240)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(w.log_tail() for w in workers)) from None


async def lose_and_recover(
    settings: Settings,
    tmp_path: Path,
    *,
    primary: RedisServer,
    fraction: float,
    worker_count: int,
    seed: int,
    at_moment: Callable[[], Awaitable[None]],
    recover: Callable[[], Awaitable[RedisServer]],
) -> None:
    """The common course: stream, moment, go on, SIGKILL workers, lose Redis, restart."""
    settings = base_settings(settings, primary.url)
    stream, truth = build_stream(settings, seed)
    total = len(stream)
    await create_topics(settings)
    producer = PacedProducer(
        settings, settings.topic_entries, stream, rate=RATE, hold_at=int(total * HEAD)
    )
    workers = make_workers(settings, tmp_path, worker_count)
    restarted: list[WorkerProcess] = []
    try:
        await start_all(workers)
        producer.start()
        urls = [w.url for w in workers]
        await wait_handled(urls, fraction * total)
        await at_moment()
        await wait_handled(urls, (fraction + GOES_ON) * total)
        applied_before = await stats_applied(primary, settings)
        for w in workers:
            w.kill(signal.SIGKILL)
        new_redis = await recover()
        applied_after = await stats_applied(new_redis, settings)

        restarted = moved_to(workers, new_redis.url)
        await start_all(restarted)
        producer.release()
        await producer.wait_done()
        await caught_up(settings, restarted)
        async with httpx.AsyncClient(base_url=restarted[0].url, timeout=10.0) as http:
            try:
                await assert_nothing_lost(http, truth)
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\n(Redis lost writes: its 'applied' counter went from "
                    f"{applied_before} to {applied_after} with the loss)"
                ) from None
        ends = await end_offsets(settings, settings.topic_entries)
        await assert_redis_offsets_at_end(new_redis.url, settings, ingest_group_id(settings), ends)
    finally:
        await producer.stop()
        await stop_all(restarted)
        await stop_all(workers)


@pytest.mark.parametrize(
    ("fraction", "worker_count"),
    [(0.15, 1), (0.4, 1), (0.7, 1), (0.4, 2)],
    ids=["early", "middle", "late", "two-workers"],
)
async def test_promoted_lagging_replica_is_replayed_to_exact(
    settings: Settings, tmp_path: Path, fraction: float, worker_count: int
) -> None:
    primary = RedisServer(tmp_path / "primary")
    replica = RedisServer(tmp_path / "replica", replica_of=primary)
    try:
        await primary.start()
        await replica.start()
        await wait_replica_in_sync(primary, replica)

        async def at_moment() -> None:
            await detach(replica)  # from now on it lags behind

        async def recover() -> RedisServer:
            primary.kill()
            return replica

        await lose_and_recover(
            settings,
            tmp_path,
            primary=primary,
            fraction=fraction,
            worker_count=worker_count,
            seed=int(fraction * 100) + worker_count,
            at_moment=at_moment,
            recover=recover,
        )
    finally:
        primary.kill()
        replica.kill()


async def test_restored_snapshot_is_replayed_to_exact(settings: Settings, tmp_path: Path) -> None:
    primary = RedisServer(tmp_path / "primary")
    restored: list[RedisServer] = []
    snapshot_dir = tmp_path / "snapshot"
    try:
        await primary.start()

        async def at_moment() -> None:
            await snapshot_rdb(primary, snapshot_dir)

        async def recover() -> RedisServer:
            primary.kill()
            restored.append(
                await restore_from_rdb(tmp_path / "restored", snapshot_dir / "dump.rdb")
            )
            return restored[0]

        await lose_and_recover(
            settings,
            tmp_path,
            primary=primary,
            fraction=0.4,
            worker_count=1,
            seed=11,
            at_moment=at_moment,
            recover=recover,
        )
    finally:
        primary.kill()
        for server in restored:
            server.kill()


async def test_failover_to_lagging_replica_under_a_running_worker(
    settings: Settings, tmp_path: Path
) -> None:
    """The worker is not restarted: its connections drop, it reconnects to a Redis that
    lacks its latest writes (and offsets), and must notice and replay on its own."""
    primary = RedisServer(tmp_path / "primary")
    replica = RedisServer(tmp_path / "replica", replica_of=primary)
    proxy: SwitchableProxy | None = None
    producer: PacedProducer | None = None
    worker: WorkerProcess | None = None
    try:
        await primary.start()
        await replica.start()
        await wait_replica_in_sync(primary, replica)
        proxy = await SwitchableProxy(primary.port).start()
        s = base_settings(settings, proxy.url)
        stream, truth = build_stream(s, seed=23)
        total = len(stream)
        await create_topics(s)
        producer = PacedProducer(s, s.topic_entries, stream, rate=RATE, hold_at=int(total * HEAD))
        worker = WorkerProcess(s, tmp_path / "worker.log")
        await start_all([worker])
        pid = worker.pid
        producer.start()
        await wait_handled([worker.url], 0.4 * total)
        await detach(replica)
        await wait_handled([worker.url], (0.4 + GOES_ON) * total)
        applied_before = await stats_applied(primary, s)
        primary.kill()
        proxy.switch(replica.port)
        applied_after = await stats_applied(replica, s)
        producer.release()
        await producer.wait_done()
        await caught_up(s, [worker])
        assert worker.alive and worker.pid == pid, "the worker was meant to keep running\n" + (
            worker.log_tail()
        )
        async with httpx.AsyncClient(base_url=worker.url, timeout=10.0) as http:
            try:
                await assert_nothing_lost(http, truth)
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\n(Redis lost writes: its 'applied' counter went from "
                    f"{applied_before} to {applied_after} with the failover)"
                ) from None
        ends = await end_offsets(s, s.topic_entries)
        await assert_redis_offsets_at_end(replica.url, s, ingest_group_id(s), ends)
    finally:
        if producer is not None:
            await producer.stop()
        if worker is not None:
            await worker.aterminate(timeout=20)
        if proxy is not None:
            await proxy.close()
        primary.kill()
        replica.kill()
