"""In-memory working set of one table partition for the Redis-backed Faust store.

Pure bookkeeping, no I/O: the store (``faust_redis.RedisStore``) owns one
:class:`PartitionState` per assigned changelog partition and flushes snapshots of it
to Redis.

Three layers per partition:

- ``data``: the live view every ``table[k]`` read and write touches.
- ``pending``: writes made by stream processing whose changelog record Kafka has not
  acknowledged yet, in write order. Faust sends exactly one changelog record per
  ``table[k] = v`` / ``del table[k]`` and acknowledges them in order per partition
  (``Collection._on_changelog_sent`` -> ``set_persisted_offset``), so the n-th ack
  confirms the n-th pending write.
- ``dirty``: confirmed writes (acked, or applied from the changelog during recovery)
  not yet in Redis; ``None`` marks a delete. ``offset`` is the changelog offset the
  confirmed state reflects.

A flush takes ``dirty`` and ``offset`` together (:meth:`take`), so what reaches Redis
is always a prefix of the changelog and the offset stored with it is exactly the
last record of that prefix: never ahead of the data, never behind it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

Value = bytes | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one flush writes for one partition."""

    partition: int
    sets: dict[bytes, bytes]
    deletes: list[bytes]
    #: The offset this partition's state reflects once the snapshot is applied.
    offset: int | None
    offset_changed: bool

    @property
    def empty(self) -> bool:
        return not self.sets and not self.deletes and not self.offset_changed


@dataclass(slots=True)
class PartitionState:
    partition: int
    data: dict[bytes, bytes] = field(default_factory=dict)
    pending: deque[tuple[bytes, Value]] = field(default_factory=deque)
    dirty: dict[bytes, Value] = field(default_factory=dict)
    offset: int | None = None
    #: True when ``offset`` moved since the last :meth:`take`.
    offset_dirty: bool = False

    # -- live writes (stream processing) -------------------------------------------
    def write(self, key: bytes, value: Value, *, changelogged: bool = True) -> None:
        """Apply a write to the live view.

        ``changelogged`` writes wait in ``pending`` for their changelog ack; others
        (e.g. Faust's window expiry, which sends no changelog record) are confirmed
        at once.
        """
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        if changelogged:
            self.pending.append((key, value))
        else:
            self.dirty[key] = value

    def ack(self, offset: int, *, confirm_all: bool = False) -> None:
        """The changelog record at ``offset`` was acknowledged by Kafka."""
        if confirm_all:
            while self.pending:
                key, value = self.pending.popleft()
                self.dirty[key] = value
        elif self.pending:
            key, value = self.pending.popleft()
            self.dirty[key] = value
        self._advance(offset)

    # -- changelog replay (recovery) -------------------------------------------------
    def apply(self, key: bytes, value: Value, offset: int) -> None:
        """Apply a changelog record read back from Kafka."""
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        self.dirty[key] = value
        self._advance(offset)

    def _advance(self, offset: int) -> None:
        if self.offset is None or offset > self.offset:
            self.offset = offset
            self.offset_dirty = True

    # -- flush protocol ---------------------------------------------------------------
    def take(self) -> Snapshot:
        """Detach the confirmed-but-unflushed writes together with their offset."""
        dirty, self.dirty = self.dirty, {}
        changed, self.offset_dirty = self.offset_dirty, False
        sets = {k: v for k, v in dirty.items() if v is not None}
        deletes = [k for k, v in dirty.items() if v is None]
        return Snapshot(self.partition, sets, deletes, self.offset, changed)

    def restore(self, snap: Snapshot) -> None:
        """Give back a snapshot whose flush failed; writes confirmed since win."""
        for key, value in snap.sets.items():
            self.dirty.setdefault(key, value)
        for key in snap.deletes:
            self.dirty.setdefault(key, None)
        if snap.offset_changed:
            self.offset_dirty = True

    @property
    def dirty_count(self) -> int:
        return len(self.dirty)
