"""The ingest consumer: aiokafka in the worker's consumer group, batches pipelined to Redis.

Why not a Faust agent: measured on this 2-core machine, a Faust agent that does nothing
but `take_events` moves ~7,800 entries/s while a plain aiokafka consumer decoding JSON
moves ~174,000/s, so no agent body could reach a quarter of the raw ceiling
(docs/decisions.md). Faust still runs the worker: lifecycle, web server, sensors.

Positions live with the state: each batch's step in Redis writes its partitions' next
offsets together with its effects and dedup marks, and checks that Redis still holds the
offsets this worker wrote last. On assignment a partition starts from the offset Redis
holds; when Redis lost writes (a failover to a lagging replica, a restored snapshot),
the check fails and the partition is re-read from what Redis holds, so the lost effects
come back exactly. Offsets are committed to Kafka as well, for lag monitoring. While
batch N is applied, batch N+1 is fetched and validated (two batches in flight at most).
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

from processor.batch_pipeline import IngestPipeline, PreparedBatch, RawMessage
from processor.connections import kafka_options
from processor.logs import kafka_position
from processor.metrics import UsageMetrics
from processor.settings import Settings
from processor.store.keys import Keys
from processor.store.runs import RunStore, StaleOffsets

log = logging.getLogger(__name__)

_STOP_DRAIN_S = 10.0
#: how often usage_consumer_lag is refreshed (one ListOffsets request per refresh)
_LAG_REPORT_S = 1.0
_LAG_TIMEOUT_S = 10.0
_RETRYABLE = (RedisError, KafkaError, OSError, TimeoutError)


@dataclass(slots=True)
class _InFlight:
    task: asyncio.Task[None]
    #: next offset per partition, for the Kafka commit (partitions dropped from the
    #: batch because they were re-read are removed)
    offsets: dict[TopicPartition, int]


def ingest_group_id(settings: Settings) -> str:
    return f"{settings.app_id}.ingest"


class ApplyFailures:
    """Failed attempts to apply the current batch: counted, logged once per state change,
    and reported as a stall once they last ``stall_after_s``."""

    def __init__(self, metrics: UsageMetrics | None, stall_after_s: float) -> None:
        self._metrics = metrics
        self._stall_after_s = stall_after_s
        self.since: float | None = None
        self.attempts = 0
        self.last_error = ""
        self._reported_stall = False

    def failed(self, exc: BaseException, where: str) -> None:
        self.attempts += 1
        self.last_error = repr(exc)
        if self._metrics is not None:
            self._metrics.apply_failures.inc()
        now = time.monotonic()
        if self.since is None:
            self.since = now
            log.warning("batch not applied (%r); retrying with back-off", exc)
        elif not self._reported_stall and now - self.since >= self._stall_after_s:
            self._reported_stall = True
            log.error(
                "batch %s not applied for %.0f s (%d attempts, last error %r); "
                "/readyz reports the stall until it is",
                where,
                now - self.since,
                self.attempts,
                exc,
            )

    def succeeded(self) -> None:
        if self.since is not None:
            log.info(
                "ingest resumed after %d failed attempts over %.1f s",
                self.attempts,
                time.monotonic() - self.since,
            )
        self.since = None
        self.attempts = 0
        self._reported_stall = False

    def stalled_for(self) -> float:
        """Seconds the current batch has failed to apply, once past the stall threshold."""
        if self.since is None:
            return 0.0
        elapsed = time.monotonic() - self.since
        return elapsed if elapsed >= self._stall_after_s else 0.0


class IngestConsumer(Service):  # type: ignore[misc]
    """Consumes `usage.entries` and applies each batch exactly once in effect."""

    def __init__(
        self,
        settings: Settings,
        pipeline: IngestPipeline,
        runs: RunStore,
        metrics: UsageMetrics | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._pipeline = pipeline
        self._runs = runs
        self._metrics = metrics
        self._group = ingest_group_id(settings)
        self._consumer: AIOKafkaConsumer | None = None
        self._inflight: _InFlight | None = None
        self.assigned: set[TopicPartition] = set()
        self._committed: dict[TopicPartition, int] = {}
        #: what Redis holds (as far as this worker knows) for each assigned partition
        self._held: dict[TopicPartition, int | None] = {}
        #: bumped whenever a partition's position is moved (seek); a batch fetched
        #: before the move drops that partition's records
        self._epoch: dict[TopicPartition, int] = {}
        #: partition -> offset to re-read from, decided by an apply, done by the loop
        self._rewinds: dict[TopicPartition, int | None] = {}
        #: offsets Redis held at assignment, to commit to Kafka from the fetch loop: a
        #: partition applied to its end before a crash would otherwise never be committed
        #: again (no batch of it comes), and its lag would read as never caught up
        self._held_to_commit: dict[TopicPartition, int] = {}
        self.failures = ApplyFailures(metrics, settings.apply_stall_seconds)
        self.joined = asyncio.Event()

    async def on_start(self) -> None:
        s = self._settings
        self._consumer = AIOKafkaConsumer(
            **kafka_options(s),
            group_id=self._group,
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
        if self._metrics is not None:
            self.add_future(self._lag_forever())

    async def on_stop(self) -> None:
        if self._consumer is None:
            return
        try:
            # Finish the batch in flight if it can be; one stuck retrying (Redis or Kafka
            # down) is abandoned and comes back to whoever owns the partitions next.
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
            try:
                records = await consumer.getmany(timeout_ms=wait_ms, max_records=max_records)
            except KafkaError as exc:
                # fetch errors (an offset out of range after a rewind, a broker going
                # away) are aiokafka's to recover from; never the end of the loop
                log.debug("fetch failed: %r", exc)
                await asyncio.sleep(0.5)
                continue
            if self._held_to_commit:
                held, self._held_to_commit = self._held_to_commit, {}
                await self._commit(held)
            if not records:
                await self._drain()
                await self._do_rewinds()
                continue
            messages: list[RawMessage] = []
            offsets: dict[TopicPartition, int] = {}
            epochs: dict[TopicPartition, int] = {}
            for tp, msgs in records.items():
                offsets[tp] = msgs[-1].offset + 1
                epochs[tp] = self._epoch.get(tp, 0)
                messages.extend(msgs)
            prepared = self._pipeline.prepare(messages)
            previous = self._inflight
            if previous is not None:
                await previous.task
            # seeks happen here only, between two fetches, so a fetch never mixes
            # records from before and after a seek
            await self._do_rewinds()
            # Start this batch before committing the previous one: the commit's round trip
            # to Kafka then overlaps the Redis call instead of delaying it.
            task = asyncio.create_task(self._apply_until_done(prepared, offsets, epochs))
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
        """Commit applied offsets to Kafka (for lag monitoring: positions are read from
        Redis); never moves a partition's offset backwards."""
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
            log.debug("offset commit skipped: %r", exc)

    # --- applying one batch -------------------------------------------------------------

    async def _apply_until_done(
        self,
        prepared: PreparedBatch,
        offsets: dict[TopicPartition, int],
        epochs: dict[TopicPartition, int],
    ) -> None:
        """Apply the batch, retrying while Redis or Kafka are away; never gives up on a
        batch (a poison entry is dead-lettered by the pipeline, not retried)."""
        delay = 0.1
        moved = {
            tp
            for tp, epoch in epochs.items()
            if tp not in self.assigned or self._epoch.get(tp, 0) != epoch
        }
        if moved:
            prepared = self._without(prepared, offsets, moved)
        while offsets:
            update = self._runs.offset_update(
                self._group,
                [(tp.topic, tp.partition, self._held.get(tp), end) for tp, end in offsets.items()],
            )
            try:
                await self._pipeline.apply(prepared, update)
            except StaleOffsets as stale:
                moved = self._plan_rewinds(stale, offsets)
                prepared = self._without(prepared, offsets, moved)
                continue
            except _RETRYABLE as exc:
                self.failures.failed(exc, _describe(offsets, prepared))
            except Exception as exc:
                # a bug of ours on this batch: kept retrying (and reported as a stall)
                # rather than crashing the worker, which would crash every worker that
                # takes the partition next
                if self.failures.since is None:
                    log.exception("unexpected error applying a batch")
                self.failures.failed(exc, _describe(offsets, prepared))
            else:
                self.failures.succeeded()
                for tp, end in offsets.items():
                    self._held[tp] = end
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.retry_max_seconds)

    def _without(
        self,
        prepared: PreparedBatch,
        offsets: dict[TopicPartition, int],
        partitions: set[TopicPartition],
    ) -> PreparedBatch:
        """The batch less the records of ``partitions`` (which will be read again)."""
        for tp in partitions:
            offsets.pop(tp, None)
        keep = [
            m for m in prepared.messages if TopicPartition(m.topic, m.partition) not in partitions
        ]
        return self._pipeline.prepare(keep)

    def _plan_rewinds(
        self, stale: StaleOffsets, offsets: dict[TopicPartition, int]
    ) -> set[TopicPartition]:
        by_field = {Keys.offset_field(tp.topic, tp.partition): tp for tp in offsets}
        moved: set[TopicPartition] = set()
        for field, held in stale.stored.items():
            tp = by_field.get(field)
            if tp is None:
                continue
            moved.add(tp)
            target = None if held is None else int(held)
            log.warning(
                "partition %s[%d]: Redis holds offset %s where this worker wrote %s "
                "(Redis lost writes, or another worker moved it on); re-reading from %s",
                tp.topic,
                tp.partition,
                held,
                self._held.get(tp),
                "the beginning" if target is None else target,
                extra=kafka_position(tp.topic, tp.partition, target),
            )
            self._rewinds[tp] = target
            self._held[tp] = target
            if self._metrics is not None:
                self._metrics.offset_rewinds.inc()
        return moved

    async def _do_rewinds(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        rewinds, self._rewinds = self._rewinds, {}
        for tp, target in rewinds.items():
            if tp not in self.assigned:
                continue
            self._epoch[tp] = self._epoch.get(tp, 0) + 1
            if target is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, target)

    async def _lag_forever(self) -> None:
        """Refresh ``usage_consumer_lag`` every _LAG_REPORT_S, apart from the fetch loop:
        a loop stuck on a batch that cannot be applied is exactly when the lag must keep
        being reported."""
        while not self.should_stop:
            await asyncio.sleep(_LAG_REPORT_S)
            try:
                await self._report_lag()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a metric refresh must never stop the worker
                log.debug("consumer lag not refreshed: %r", exc)

    async def _report_lag(self) -> None:
        """Lag of every owned partition: its end offset (the high watermark, as
        kafka-consumer-groups counts lag) minus the next offset to apply (what Redis holds,
        as far as this worker knows), so entries fetched but not yet applied count as lag.
        A partition shows once that offset is known (at its first applied batch when Redis
        held none for it)."""
        consumer = self._consumer
        if self._metrics is None or consumer is None:
            return
        owned = [tp for tp in self.assigned if self._held.get(tp) is not None]
        if not owned:
            return
        ends = await asyncio.wait_for(consumer.end_offsets(owned), timeout=_LAG_TIMEOUT_S)
        for tp, end in ends.items():
            # read again after the await: the partition may have been revoked meanwhile
            applied = self._held.get(tp)
            if tp in self.assigned and applied is not None:
                self._metrics.partition_lag(tp.topic, tp.partition, end - applied)

    # --- rebalance hooks (called by aiokafka inside getmany) ---------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._drain()
        self.assigned -= revoked
        for tp in revoked:
            # a partition assigned again later starts from what Redis holds then
            self._committed.pop(tp, None)
            self._held.pop(tp, None)
            self._rewinds.pop(tp, None)
            self._held_to_commit.pop(tp, None)
            if self._metrics is not None:
                self._metrics.forget_partition(tp.topic, tp.partition)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start every new partition from the offset Redis holds.

        Where Redis holds offsets for the group but not for this partition, no batch of
        it was ever applied to this Redis: start from the beginning. Where Redis holds
        none for the group at all (a first start, or an upgrade from a version that
        kept positions in Kafka only), start from Kafka's committed offset.
        """
        consumer = self._consumer
        assert consumer is not None
        tps = sorted(assigned, key=lambda tp: (tp.topic, tp.partition))
        exists, held = await self._read_offsets(tps)
        never = [tp for tp, offset in zip(tps, held, strict=True) if offset is None]
        beginnings = await consumer.beginning_offsets(never) if exists and never else {}
        # No await from here on: a fetch returning in between would carry records of a
        # partition that is not yet marked assigned, and the batch would drop them.
        for tp, offset in zip(tps, held, strict=True):
            self._epoch[tp] = self._epoch.get(tp, 0) + 1
            self._held[tp] = offset
            start = offset if offset is not None else beginnings.get(tp)
            if start is not None:
                consumer.seek(tp, start)
        self.assigned |= assigned
        self._held_to_commit.update(
            {tp: offset for tp, offset in zip(tps, held, strict=True) if offset is not None}
        )
        self.joined.set()
        log.info(
            "ingest partitions assigned: %s (from the offsets Redis holds: %s)",
            [tp.partition for tp in tps],
            {tp.partition: o for tp, o in zip(tps, held, strict=True)},
        )

    async def _read_offsets(self, tps: list[TopicPartition]) -> tuple[bool, list[int | None]]:
        delay = 0.1
        while True:
            try:
                held = await self._runs.stored_offsets(
                    self._group, [(tp.topic, tp.partition) for tp in tps]
                )
            except _RETRYABLE as exc:
                self.failures.failed(exc, "offsets on assignment")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.retry_max_seconds)
                continue
            self.failures.succeeded()
            return held


def _describe(offsets: dict[TopicPartition, int], prepared: PreparedBatch) -> str:
    first: dict[tuple[str, int], int] = {}
    for m in prepared.messages:
        key = (m.topic, m.partition)
        first[key] = min(first.get(key, m.offset), m.offset)
    return ", ".join(
        f"{tp.topic}[{tp.partition}] offsets {first.get((tp.topic, tp.partition), '?')}-{end - 1}"
        for tp, end in sorted(offsets.items(), key=lambda kv: kv[0].partition)
    )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: IngestConsumer) -> None:
        self._owner = owner

    def on_partitions_revoked(self, revoked: Any) -> Awaitable[None]:
        return self._owner.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._owner.on_assigned(set(assigned))
