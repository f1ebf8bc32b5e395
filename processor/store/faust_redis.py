"""Faust table store backed by Redis (``store="redis://host:port/db"``).

Registered under the ``redis`` URL scheme by the ``faust.stores`` entry point in
``pyproject.toml``; without that entry point Faust would resolve ``redis://`` to the
``redis`` module itself. See ``docs/faust-redis-store.md``.

Faust's store API is synchronous, so each assigned changelog partition lives in an
in-memory working set (:class:`~processor.store.faust_redis_state.PartitionState`)
loaded from Redis at assignment; confirmed writes are flushed write-behind, every
``flush_interval_ms`` or when ``max_dirty`` keys wait, in one MULTI/EXEC transaction
that also stores the changelog offset those writes reach. ``persisted_offset`` returns
that offset, so Faust's recovery replays only the changelog records Redis lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import redis
import redis.asyncio as aioredis
from faust.stores.base import SerializedStore
from faust.streams import current_event
from faust.types import TP, AppT, CollectionT, EventT
from faust.types.enums import ProcessingGuarantee
from yarl import URL

from processor.store.faust_redis_config import RedisStoreConfig
from processor.store.faust_redis_flush import write_snapshots
from processor.store.faust_redis_state import PartitionState, Snapshot
from processor.store.keys import table_data_key, table_keys_pattern, table_offset_key

__all__ = [
    "RedisStore",
    "RedisStoreConfig",
    "table_data_key",
    "table_keys_pattern",
    "table_offset_key",
]


class RedisStore(SerializedStore):  # type: ignore[type-arg]
    """Table storage: in-memory working set per partition, write-behind to Redis."""

    def __init__(
        self,
        url: str | URL,
        app: AppT,
        table: CollectionT,
        *,
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, app, table, options=options, **kwargs)
        self.config = RedisStoreConfig.from_url(self.url, options)
        self.app_id: str = str(app.conf.id)
        self._parts: dict[int, PartitionState] = {}
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            self.config.redis_url, decode_responses=False
        )
        self._sync_redis: redis.Redis | None = None
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        guarantee: Any = app.conf.processing_guarantee
        self._confirm_all = guarantee == ProcessingGuarantee.EXACTLY_ONCE
        #: Changelog records applied by recovery, per partition (observability/tests).
        self.recovery_applied: Counter[int] = Counter()
        self.standby_records_ignored = 0
        self.flush_count = 0

    # -- keys ------------------------------------------------------------------------
    def data_key(self, partition: int) -> str:
        return table_data_key(self.config.prefix, self.app_id, self.table_name, partition)

    def offset_key(self, partition: int) -> str:
        return table_offset_key(self.config.prefix, self.app_id, self.table_name, partition)

    @property
    def partitions(self) -> frozenset[int]:
        """Partitions held in the working set."""
        return frozenset(self._parts)

    # -- partition of a key ---------------------------------------------------------
    def _write_target(self, key: bytes) -> tuple[int | None, bool]:
        """(partition, changelogged) of a write, mirroring ``Collection.partition_for_key``."""
        if self.table.use_partitioner:
            topic = self.table.changelog_topic.get_topic_name()
            return self.app.producer.key_partition(topic, key).partition, True
        event = current_event()
        if event is not None:
            return event.message.partition, True
        # Outside stream iteration Faust sends no changelog (e.g. window expiry).
        return self._partition_holding(key), False

    def _partition_holding(self, key: bytes) -> int | None:
        for partition, state in self._parts.items():
            if key in state.data:
                return partition
        return None

    def _state(self, partition: int) -> PartitionState:
        state = self._parts.get(partition)
        if state is None:
            # Faust only writes to assigned partitions, which on_rebalance loaded.
            self.log.warning("write to partition %r that was not loaded from Redis", partition)
            state = self._parts[partition] = PartitionState(partition)
        return state

    def _read_state(self) -> PartitionState | None:
        event = current_event()
        if event is None or self.table.is_global or self.table.use_partitioner:
            return None
        return self._parts.get(event.message.partition)

    # -- SerializedStore ------------------------------------------------------------
    def _get(self, key: bytes) -> bytes | None:
        state = self._read_state()
        if state is not None:
            return state.data.get(key)
        for st in self._parts.values():
            value = st.data.get(key)
            if value is not None:
                return value
        return None

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition, changelogged = self._write_target(key)
        if partition is None:
            raise TypeError("Cannot modify table key from outside of stream iteration")
        self._state(partition).write(key, value, changelogged=changelogged)
        self._maybe_wake(partition)

    def _del(self, key: bytes) -> None:
        partition, changelogged = self._write_target(key)
        if partition is None:
            return
        self._state(partition).write(key, None, changelogged=changelogged)
        self._maybe_wake(partition)

    def _iterkeys(self) -> Iterator[bytes]:
        for st in list(self._parts.values()):
            yield from st.data
        # (a table's partitions never share a key)

    def _itervalues(self) -> Iterator[bytes | None]:
        for st in list(self._parts.values()):
            yield from st.data.values()

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        for st in list(self._parts.values()):
            yield from st.data.items()

    def _size(self) -> int:
        return sum(len(st.data) for st in self._parts.values())

    def _clear(self) -> None:
        # Table.clear() has already sent one changelog delete per key (in _iterkeys
        # order, each to its write partition); keep the ack queues aligned with them.
        changelogged = self.table.use_partitioner or current_event() is not None
        ordered = list(self._iterkeys()) if changelogged else []
        for st in self._parts.values():
            for key in list(st.data):
                st.write(key, None, changelogged=False)
        for key in ordered:
            partition, _ = self._write_target(key)
            if partition is not None:
                self._state(partition).pending.append((key, None))
        self._wake.set()

    def _maybe_wake(self, partition: int) -> None:
        if self._parts[partition].dirty_count >= self.config.max_dirty:
            self._wake.set()

    # -- changelog offsets ----------------------------------------------------------
    def persisted_offset(self, tp: TP) -> int | None:
        """Offset of the last changelog record reflected in this partition's state."""
        state = self._parts.get(tp.partition)
        if state is not None:
            return state.offset
        raw = self._sync_client().get(self.offset_key(tp.partition))
        return None if raw is None else int(raw)  # type: ignore[arg-type]

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """Kafka acknowledged the changelog record at ``offset``: confirm its write."""
        state = self._parts.get(tp.partition)
        if state is None:
            return  # revoked meanwhile; the new owner replays from Redis' offset
        state.ack(offset, confirm_all=self._confirm_all)
        self._maybe_wake(tp.partition)

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT],  # type: ignore[type-arg]
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """Apply changelog records read during recovery (actives only)."""
        for event in batch:
            msg = event.message
            state = self._parts.get(msg.partition)
            if state is None:
                # Standby: Redis is shared, the active owner persists this partition.
                self.standby_records_ignored += 1
                continue
            if msg.key is None:
                raise TypeError(f"Changelog entry is missing key: {msg}")
            state.apply(msg.key, msg.value, msg.offset)
            self.recovery_applied[msg.partition] += 1
        if any(st.dirty_count >= self.config.max_dirty for st in self._parts.values()):
            self._wake.set()

    # -- flush ----------------------------------------------------------------------
    async def flush(self) -> int:
        """Write every confirmed change and its offset to Redis atomically.

        Returns the number of keys written or deleted.
        """
        async with self._flush_lock:
            snaps = [s for s in (st.take() for st in self._parts.values()) if not s.empty]
            if not snaps:
                return 0
            try:
                await self._write(snaps)
            except BaseException:
                for snap in snaps:
                    state = self._parts.get(snap.partition)
                    if state is not None:
                        state.restore(snap)
                raise
            self.flush_count += 1
            return sum(len(s.sets) + len(s.deletes) for s in snaps)

    async def _write(self, snaps: list[Snapshot]) -> None:
        fenced = await write_snapshots(self._redis, snaps, self.data_key, self.offset_key)
        for partition in fenced:
            self.log.warning(
                "partition %d not flushed: Redis holds a later offset than %s "
                "(another worker owns it now)",
                partition,
                self._parts[partition].offset if partition in self._parts else None,
            )

    async def _flusher(self) -> None:
        while not self.should_stop:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.flush_interval)
            self._wake.clear()
            if self.should_stop:
                break
            try:
                await self.flush()
            except (redis.RedisError, OSError) as exc:
                self.log.warning("flush to Redis failed, will retry: %r", exc)

    # -- partition assignment -------------------------------------------------------
    async def load_partitions(self, partitions: Iterable[int]) -> None:
        """Load each partition's hash and offset from Redis into the working set."""
        for partition in sorted(set(partitions) - set(self._parts)):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.data_key(partition))
                pipe.get(self.offset_key(partition))
                data, raw_offset = await pipe.execute()
            state = PartitionState(partition, data=dict(data))
            state.offset = None if raw_offset is None else int(raw_offset)
            self._parts[partition] = state
            self.log.info(
                "loaded partition %d: %d keys, persisted offset %s",
                partition,
                len(state.data),
                state.offset,
            )

    async def release_partitions(self, partitions: Iterable[int]) -> None:
        """Flush, then drop the working set of partitions no longer assigned."""
        drop = set(partitions) & set(self._parts)
        if not drop:
            return
        await self.flush()
        for partition in drop:
            state = self._parts.pop(partition)
            if state.pending:
                self.log.warning(
                    "partition %d released with %d unacknowledged writes",
                    partition,
                    len(state.pending),
                )

    async def assign_partitions(
        self, table: CollectionT, tps: set[TP], generation_id: int = 0
    ) -> None:
        """Load the active changelog partitions among ``tps`` (standbys are skipped)."""
        standbys = self.app.assignor.assigned_standbys()
        topics = table.changelog_topic.topics
        await self.load_partitions(
            tp.partition for tp in tps if tp.topic in topics and tp not in standbys
        )

    async def revoke_partitions(self, table: CollectionT, tps: set[TP]) -> None:
        topics = table.changelog_topic.topics
        await self.release_partitions(tp.partition for tp in tps if tp.topic in topics)

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        topics = self.table.changelog_topic.topics
        standbys = self.app.assignor.assigned_standbys()
        active = {tp.partition for tp in assigned if tp.topic in topics and tp not in standbys}
        await self.release_partitions(set(self._parts) - active)
        self.recovery_applied.clear()
        await self.assign_partitions(self.table, assigned, generation_id)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        self.log.info(
            "recovery applied %d changelog records (%s); persisted offsets %s",
            sum(self.recovery_applied.values()),
            dict(sorted(self.recovery_applied.items())),
            {p: st.offset for p, st in sorted(self._parts.items())},
        )
        await self.flush()

    # -- lifecycle ------------------------------------------------------------------
    async def on_start(self) -> None:
        self.add_future(self._flusher())

    async def on_stop(self) -> None:
        producer = getattr(self.app, "_producer", None)
        if producer is not None:
            # Let in-flight changelog records be acknowledged so their writes persist.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.flush(), timeout=5.0)
        try:
            await self.flush()
        finally:
            await self._redis.aclose()
            if self._sync_redis is not None:
                self._sync_redis.close()

    def _sync_client(self) -> redis.Redis:
        if self._sync_redis is None:
            self._sync_redis = redis.Redis.from_url(self.config.redis_url, decode_responses=False)
        return self._sync_redis

    def reset_state(self) -> None:
        """Forget this table's state, in memory and in Redis (not the changelog)."""
        self._parts.clear()
        client = self._sync_client()
        pattern = table_keys_pattern(self.config.prefix, self.app_id, self.table_name)
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)

    async def backup_partition(
        self, tp: TP | int, flush: bool = True, purge: bool = False, keep: int = 1
    ) -> None:
        """Redis is the durable copy; nothing to back up locally."""

    def restore_backup(self, tp: TP | int, latest: bool = True, backup_id: int = 0) -> None:
        """Redis is the durable copy; nothing to restore locally."""

    def _repr_info(self) -> str:
        return f"table_name={self.table_name} redis={self.config.redis_url}"
