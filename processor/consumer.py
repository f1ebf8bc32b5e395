"""The ingest consumer: aiokafka in the worker's consumer group, batches pipelined to Redis.

Why not a Faust agent: measured on this 2-core machine, a Faust agent that does nothing
but `take_events` moves ~7,800 entries/s while a plain aiokafka consumer decoding JSON
moves ~174,000/s, so no agent body could reach a quarter of the raw ceiling
(docs/decisions.md). Faust still runs the worker: lifecycle, web server, sensors, tables.

Delivery: at-least-once with offsets committed only after a batch's effects are in Redis
and its dead letters are acknowledged by Kafka; the Redis apply is idempotent per entry
id, so redelivery after a crash or rebalance changes nothing. While batch N is applied
in Redis, batch N+1 is fetched and validated (two batches in flight at most).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service
from redis.exceptions import RedisError

from processor.ingest import IngestPipeline, PreparedBatch, RawMessage
from processor.settings import Settings

log = logging.getLogger(__name__)

_RETRY_MAX_S = 5.0
_STOP_DRAIN_S = 10.0


@dataclass(slots=True)
class _InFlight:
    task: asyncio.Task[None]
    offsets: dict[TopicPartition, int]


def ingest_group_id(settings: Settings) -> str:
    return f"{settings.app_id}.ingest"


class IngestConsumer(Service):  # type: ignore[misc]
    """Consumes `usage.entries` and applies each batch exactly once in effect."""

    def __init__(self, settings: Settings, pipeline: IngestPipeline, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._pipeline = pipeline
        self._consumer: AIOKafkaConsumer | None = None
        self._inflight: _InFlight | None = None
        self.assigned: set[TopicPartition] = set()
        self._committed: dict[TopicPartition, int] = {}
        self.joined = asyncio.Event()

    async def on_start(self) -> None:
        s = self._settings
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=ingest_group_id(s),
            client_id=f"{s.app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.batch_max_entries,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            isolation_level="read_committed",
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(300, min(3000, s.kafka_session_timeout_ms // 3)),
        )
        self._consumer.subscribe([s.topic_entries], listener=_Listener(self))
        await self._consumer.start()
        self.add_future(self._run())

    async def on_stop(self) -> None:
        if self._consumer is None:
            return
        try:
            # Finish the batch in flight if it can be; one stuck retrying (Redis or Kafka
            # down) is abandoned uncommitted and comes back to whoever owns it next.
            await asyncio.wait_for(self._drain(), timeout=_STOP_DRAIN_S)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("stopping with a batch in flight; it will be re-delivered")
        finally:
            if self._inflight is not None:
                self._inflight.task.cancel()
            await self._consumer.stop()

    async def _run(self) -> None:
        try:
            await self._consume()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug, not an outage: stop the worker loudly rather than stop consuming quietly.
            log.exception("ingest consumer failed")
            await self.crash(exc)

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        wait_ms = self._settings.batch_max_wait_ms
        max_records = self._settings.batch_max_entries
        while not self.should_stop:
            records = await consumer.getmany(timeout_ms=wait_ms, max_records=max_records)
            if not records:
                await self._drain()
                continue
            messages: list[RawMessage] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, msgs in records.items():
                offsets[tp] = msgs[-1].offset + 1
                messages.extend(msgs)
            t0 = time.perf_counter()
            prepared = self._pipeline.prepare(messages)
            t1 = time.perf_counter()
            previous = self._inflight
            if previous is not None:
                await previous.task
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "batch of %d: prepared in %.1f ms, waited %.1f ms for the previous apply",
                    len(messages),
                    (t1 - t0) * 1000,
                    (time.perf_counter() - t1) * 1000,
                )
            # Start this batch before committing the previous one: the commit's round trip
            # to Kafka then overlaps the Redis call instead of delaying it.
            task = asyncio.create_task(self._apply_until_done(prepared))
            self._inflight = _InFlight(task, offsets)
            if previous is not None:
                await self._commit(previous.offsets)

    async def _drain(self) -> None:
        """Wait for the batch in flight, then commit its offsets.

        Called from the fetch loop and from the rebalance listener; no lock, because a
        commit may itself wait for a rebalance whose listener is waiting here.
        """
        inflight = self._inflight
        if inflight is None:
            return
        await inflight.task
        if self._inflight is inflight:
            self._inflight = None
            await self._commit(inflight.offsets)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit offsets of applied batches; never moves a partition's offset backwards
        (the fetch loop and the rebalance listener may commit in either order)."""
        assert self._consumer is not None
        owned = {
            tp: o
            for tp, o in offsets.items()
            if tp in self.assigned and o > self._committed.get(tp, -1)
        }
        if not owned:
            return
        try:
            await self._consumer.commit(owned)
            self._committed.update(owned)
        except (CommitFailedError, KafkaError) as exc:
            # The group moved on (rebalance); the new owner re-reads from the last commit
            # and the idempotent apply turns the overlap into duplicates, not double counts.
            log.warning("offset commit skipped: %r", exc)

    async def _apply_until_done(self, prepared: PreparedBatch) -> None:
        """Retry while Redis or Kafka are unavailable instead of dropping the batch."""
        delay = 0.1
        while True:
            try:
                await self._pipeline.apply(prepared)
                return
            except (RedisError, KafkaError, OSError) as exc:
                log.warning(
                    "batch of %d not applied (%r); retrying in %.1fs",
                    len(prepared.valid) + len(prepared.letters),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    # --- rebalance hooks (called by aiokafka inside getmany) ---------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._drain()
        self.assigned -= revoked
        for tp in revoked:
            # a partition assigned again later starts from the group's committed offset
            self._committed.pop(tp, None)

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned |= assigned
        self.joined.set()
        log.info("ingest partitions assigned: %s", sorted(tp.partition for tp in assigned))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: IngestConsumer) -> None:
        self._owner = owner

    def on_partitions_revoked(self, revoked: Any) -> Awaitable[None]:
        return self._owner.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._owner.on_assigned(set(assigned))
