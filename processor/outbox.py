"""Exactly-once relay of a Redis outbox stream to a Kafka topic (DESIGN.md option (a)).

Why each outbox message reaches a ``read_committed`` reader exactly once:

- One Kafka transaction holds a batch of messages *and* the relay's progress record on the
  compacted progress topic, so a reader sees both or neither.
- The transactional id is fixed per outbox. A relay that (re)starts fences every older
  instance (a second worker, a leader that lost its leadership, a SIGKILLed process) and
  ends its open transaction *before* reading progress back, so what it reads is final:
  no older instance can commit afterwards.
- Progress is the set of recently published message ids, and an entry is published unless
  its ``id`` is in it. The stream's own ids are never trusted: Redis may lose writes and the
  Lua step that wrote an entry may append it again under a new stream id.
- An entry is deleted from the stream (XDEL of exactly the entries handled) only after its
  transaction committed. A crash in between leaves it in the stream; the next run skips it
  by id. So the stream always holds what is left to do, and XLEN is the backlog.

Progress records: key ``<outbox>#<slot>``, value ``{"streamId": last stream id handled,
"ids": [...]}`` (see RecentIds), on one partition so offset order is commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from mode import Service
from redis.asyncio import Redis
from redis.exceptions import RedisError

from processor.connections import kafka_options
from processor.settings import Settings
from processor.store.keys import Keys

log = logging.getLogger(__name__)

BATCH = 500  # entries per transaction
RECENT_IDS = 10_000  # published ids always recoverable, for skipping replays
BUCKET_IDS = 500  # ids per progress key before the ring moves on
IDLE_S = 0.25  # longest blocking wait for new entries when there is nothing to do
TXN_TIMEOUT_MS = 20_000  # the broker aborts a dead relay's transaction after this
STEP_TIMEOUT_S = 30.0  # one producer start or one transaction
RECOVER_TIMEOUT_S = 60.0  # reading progress back (may wait for others' open transactions)
MAX_REQUEST_BYTES = 8 * 1024 * 1024


def progress_key(outbox: str, slot: int) -> bytes:
    return f"{outbox}#{slot}".encode()


def progress_slot(outbox: str, key: bytes | None) -> int | None:
    """The slot of one of ``outbox``'s progress keys; None for any other key."""
    if key is None:
        return None
    base, sep, slot = key.decode("utf-8", "replace").rpartition("#")
    if not sep or base != outbox or not slot.isdigit():
        return None
    return int(slot)


def encode_progress(stream_id: str, ids: Sequence[str]) -> bytes:
    return json.dumps({"streamId": stream_id, "ids": list(ids)}, separators=(",", ":")).encode()


def decode_progress(value: bytes | None) -> tuple[str, list[str]]:
    """Raises ValueError on anything else: skipping a record we wrote could republish."""
    data = json.loads(value or b"null")
    sid, ids = (data.get("streamId"), data.get("ids")) if isinstance(data, dict) else (0, 0)
    if isinstance(sid, str) and isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        return sid, ids
    raise ValueError(f"not an outbox progress record: {(value or b'')[:200]!r}")


class RecentIds:
    """The ids published last: a ring of ``slots`` buckets of at least ``bucket`` ids, one
    progress key per bucket.

    Each transaction rewrites its bucket whole (earlier ids plus its own), so compaction,
    which keeps only a key's latest record, never drops an id of the ``slots - 1`` buckets
    before the current one: at least ``window`` ids survive any compaction, and a restart
    reads back at most ``slots`` records. Nothing changes until ``commit``."""

    def __init__(self, window: int = RECENT_IDS, bucket: int = BUCKET_IDS) -> None:
        self.bucket, self.slots = bucket, -(-window // bucket) + 1
        self._buckets: list[list[str]] = []
        self._current = 0
        self._ids: set[str] = set()
        self.restore({}, 0)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def next_record(self, new_ids: Sequence[str]) -> tuple[int, list[str]]:
        """(slot, ids) of the progress record that adds ``new_ids``."""
        if len(self._buckets[self._current]) >= self.bucket:
            return (self._current + 1) % self.slots, list(new_ids)
        return self._current, [*self._buckets[self._current], *new_ids]

    def commit(self, slot: int, ids: list[str]) -> None:
        rotated = slot != self._current
        self._buckets[slot], self._current = ids, slot
        if rotated:  # the slot's previous generation leaves the window
            self._ids = {i for b in self._buckets for i in b}
        else:
            self._ids.update(ids)

    def restore(self, buckets: Mapping[int, list[str]], current: int) -> None:
        self._buckets = [list(buckets.get(s, ())) for s in range(self.slots)]
        self._current = current
        self._ids = {i for b in self._buckets for i in b}


@dataclass(frozen=True, slots=True)
class Entry:
    stream_id: str
    message_id: str
    key: bytes | None
    value: bytes


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _bytes(x: Any) -> bytes:
    return x if isinstance(x, bytes) else str(x).encode()


def parse_entry(stream_id: Any, fields: Mapping[Any, Any]) -> Entry | None:
    """An outbox stream entry (from a bytes or a decoding client); None if malformed."""
    f = {_text(k): v for k, v in fields.items()}
    if f.get("id") is None or f.get("v") is None:
        return None
    key = None if f.get("k") is None else _bytes(f["k"])
    return Entry(_text(stream_id), _text(f["id"]), key, _bytes(f["v"]))


async def read_progress(
    settings: Settings, outbox: str, slots: int
) -> tuple[dict[int, list[str]], int, str]:
    """``outbox``'s latest committed progress (see ``progress_state``).

    Read backwards from the high watermark, taken after fencing, so it covers everything a
    predecessor committed. A read_committed reader cannot pass the last stable offset, which
    another outbox's open transaction may hold back: reading up to the high watermark waits
    for it (at worst its transaction timeout) instead of missing our records above it.
    Aborted records and transaction markers are skipped by the reader and only move its
    position. Chunks grow from the end until every slot is found or the log start is hit."""
    tp = TopicPartition(settings.topic_outbox_progress, 0)
    common: dict[str, Any] = {
        **kafka_options(settings),
        "group_id": None,
        "enable_auto_commit": False,
        "client_id": f"{settings.app_id}-outbox-{outbox}-progress",
    }
    probe = AIOKafkaConsumer(**common)  # read_uncommitted: its end offset is the high watermark
    await probe.start()
    try:
        start = (await probe.beginning_offsets([tp]))[tp]
        end = (await probe.end_offsets([tp]))[tp]
    finally:
        await _stop_consumer(probe)
    reader = AIOKafkaConsumer(
        **common, isolation_level="read_committed", auto_offset_reset="earliest"
    )
    await reader.start()
    found: dict[int, tuple[int, bytes | None]] = {}
    try:
        reader.assign([tp])
        hi, chunk = end, 64
        while hi > start and len(found) < slots:
            lo = max(start, hi - chunk)
            reader.seek(tp, lo)
            newest: dict[int, tuple[int, bytes | None]] = {}
            while await reader.position(tp) < hi:
                batch = await reader.getmany(tp, timeout_ms=200)
                for rec in batch.get(tp, ()):
                    slot = progress_slot(outbox, rec.key)
                    if rec.offset < hi and slot is not None and slot < slots and slot not in found:
                        newest[slot] = (rec.offset, rec.value)  # ascending: the later one wins
            found.update(newest)
            hi, chunk = lo, chunk * 4
    finally:
        await _stop_consumer(reader)
    return progress_state(found)


def progress_state(
    latest: Mapping[int, tuple[int, bytes | None]],
) -> tuple[dict[int, list[str]], int, str]:
    """From each slot's latest record, (offset, value): ids per slot, the current slot (the
    one written last) and the last stream id handled."""
    if not latest:
        return {}, 0, "0-0"
    decoded = {slot: decode_progress(value) for slot, (_, value) in latest.items()}
    current = max(latest, key=lambda s: latest[s][0])
    return {s: ids for s, (_, ids) in decoded.items()}, current, decoded[current][0]


async def _stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """aiokafka 0.12 raises CancelledError from stop() of a group-less consumer whose
    internal task never ran; only a cancellation of our own task may propagate."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        if _cancelled_here():
            raise


def _cancelled_here() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


async def _quietly(awaitable: Any, what: str, timeout: float = 10.0) -> None:
    try:
        await asyncio.wait_for(awaitable, timeout)
    except Exception as exc:  # the producer is being discarded; its state no longer matters
        log.debug("%s failed: %r", what, exc)


class OutboxRelay(Service):  # type: ignore[misc]
    """Publishes the outbox stream ``outbox`` to ``topic`` exactly once while ``active()``
    (the app passes Faust's ``app.is_leader``): while it is false, the producer is closed
    and the next leader's relay fences this one anyway. Errors never stop the loop: each
    kind is logged once, the relay starts over from Kafka's progress, with back-off."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        outbox: str,
        topic: str,
        *,
        active: Callable[[], bool] = lambda: True,
        batch: int = BATCH,
        recent_ids: int = RECENT_IDS,
        bucket_ids: int = BUCKET_IDS,
        idle_s: float = IDLE_S,
        on_published: Callable[[list[Entry]], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # called with the messages of each committed transaction (metrics; must not raise)
        self._on_published = on_published
        self._settings, self._redis, self._outbox, self._topic = settings, redis, outbox, topic
        self._gate, self._batch, self._idle_s = active, batch, idle_s
        self._stream = Keys(settings.key_prefix).outbox(outbox)
        self._txn_id = f"{settings.app_id}.outbox.{outbox}"
        self._recent = RecentIds(recent_ids, bucket_ids)
        self._producer: Any = None  # AIOKafkaProducer, fenced-in and caught up when set
        self._backlog = 0
        self._failures = 0
        self._last_error: str | None = None
        self._loop_task: asyncio.Future[None] | None = None
        self.published = 0  # messages this instance committed
        self.skipped = 0  # entries whose id was already published
        self.malformed = 0  # entries without an id or a value (logged, then deleted)
        self.stream_id = "0-0"  # last stream id in the committed progress

    def pending(self) -> int:
        """Outbox entries not yet handled, as of the last poll (XLEN after deletion)."""
        return self._backlog

    async def on_start(self) -> None:
        self._loop_task = self.add_future(self._run())

    async def on_stop(self) -> None:
        if self._loop_task is not None and not self._loop_task.done():
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self.close_producer()

    async def _run(self) -> None:
        while not self.should_stop:
            if not self._gate():
                await self.close_producer()
                with contextlib.suppress(RedisError):
                    self._backlog = int(await self._redis.xlen(self._stream))
                await self.sleep(self._idle_s)
                continue
            try:
                handled = await self.relay_once()
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _cancelled_here():
                    raise
                await self.sleep(await self.after_failure(exc))
                continue
            self._recovered()
            if handled == 0:
                await self._wait_for_entries()

    async def _wait_for_entries(self) -> None:
        """Until an entry is appended (or ``idle_s`` passed): a blocking read wakes the
        relay as soon as a step appends, where polling would add half a poll of latency."""
        try:
            await self._redis.xread({self._stream: "0-0"}, count=1, block=int(self._idle_s * 1000))
        except RedisError:
            await self.sleep(self._idle_s)

    async def relay_once(self) -> int:
        """Handle one batch of the stream; returns how many entries (0: stream empty)."""
        if self._producer is None:
            await self._open()
        rows = await self._redis.xrange(self._stream, "-", "+", count=self._batch)
        if not rows:
            self._backlog = 0
            return 0
        fresh: list[Entry] = []
        taken: set[str] = set()
        for sid, fields in rows:
            entry = parse_entry(sid, fields)
            if entry is None:
                self.malformed += 1
                log.error("outbox %s: dropping malformed entry %s %r", self._outbox, sid, fields)
            elif entry.message_id in self._recent or entry.message_id in taken:
                self.skipped += 1
            else:
                taken.add(entry.message_id)
                fresh.append(entry)
        sids = [_text(sid) for sid, _ in rows]
        if fresh:
            await asyncio.wait_for(self._transaction(fresh, sids[-1]), STEP_TIMEOUT_S)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xdel(self._stream, *sids)
            pipe.xlen(self._stream)
            _, backlog = await pipe.execute()
        self._backlog = int(backlog)
        return len(rows)

    async def _transaction(self, fresh: list[Entry], last_sid: str) -> None:
        producer = self._producer
        slot, ids = self._recent.next_record([e.message_id for e in fresh])
        progress = encode_progress(last_sid, ids)
        await producer.begin_transaction()
        sent: list[asyncio.Future[Any]] = []
        try:
            for e in fresh:
                sent.append(await producer.send(self._topic, value=e.value, key=e.key))
            key = progress_key(self._outbox, slot)
            topic = self._settings.topic_outbox_progress
            sent.append(await producer.send(topic, value=progress, key=key, partition=0))
            await producer.commit_transaction()
        except BaseException:
            # the sends of a failed transaction fail with it: collect their errors so they
            # are not reported as never retrieved
            for future in sent:
                future.add_done_callback(_consume_exception)
            # end it now rather than at its timeout: an open transaction holds back every
            # read_committed reader of these partitions, other relays' recovery included
            await _quietly(producer.abort_transaction(), "abort", timeout=5.0)
            raise
        await asyncio.gather(*sent)
        self._recent.commit(slot, ids)
        self.stream_id = last_sid
        self.published += len(fresh)
        if self._on_published is not None:
            try:
                self._on_published(fresh)
            except Exception:  # metrics must not stop publication
                log.exception("outbox %s: on_published failed", self._outbox)

    async def _open(self) -> None:
        """Start a producer (InitProducerId fences older instances and ends their open
        transaction), then read progress back: only then is it complete."""
        s = self._settings
        producer = AIOKafkaProducer(
            **kafka_options(s),
            client_id=f"{s.app_id}-outbox-{self._outbox}",
            transactional_id=self._txn_id,
            transaction_timeout_ms=TXN_TIMEOUT_MS,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=MAX_REQUEST_BYTES,
        )
        try:
            await asyncio.wait_for(producer.start(), STEP_TIMEOUT_S)
            read = read_progress(s, self._outbox, self._recent.slots)
            buckets, current, stream_id = await asyncio.wait_for(read, RECOVER_TIMEOUT_S)
        except BaseException:
            await _quietly(producer.stop(), "producer stop")
            raise
        self._recent.restore(buckets, current)
        self.stream_id = stream_id
        self._producer = producer
        n = len(self._recent)
        log.info("outbox %s: relaying to %s (%d recent ids)", self._outbox, self._topic, n)

    async def close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _quietly(producer.stop(), "producer stop")

    async def after_failure(self, exc: BaseException) -> float:
        """Log (once per kind of failure), drop the producer unless only Redis failed, and
        return the back-off: exponential, jittered so two relays fencing each other part."""
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_error:
            log.warning("outbox %s: relay failed, will retry: %s", self._outbox, text)
            self._last_error = text
        if not isinstance(exc, RedisError):
            await self.close_producer()
        self._failures += 1
        ceiling = min(self._settings.retry_max_seconds, 0.1 * 2.0 ** min(self._failures, 10))
        return ceiling * random.uniform(0.5, 1.0)

    def _recovered(self) -> None:
        if self._last_error is not None:
            log.info("outbox %s: relay working again", self._outbox)
        self._last_error, self._failures = None, 0


async def drain(
    settings: Settings,
    redis: Redis,
    outbox: str,
    topic: str,
    timeout_s: float = 60.0,
    **relay_options: Any,
) -> int:
    """Publish everything in ``outbox`` now, without a worker (the CLI's way); returns how
    many messages were published. Safe beside a running relay: the one that started last
    fences the other. Raises TimeoutError if the stream is not empty by ``timeout_s``."""
    relay = OutboxRelay(settings, redis, outbox, topic, **relay_options)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while True:
            try:
                if await relay.relay_once() == 0:
                    return relay.published
                relay._recovered()
            except Exception as exc:
                delay = await relay.after_failure(exc)
                if loop.time() + delay > deadline:
                    raise TimeoutError(f"outbox {outbox} not drained: {exc!r}") from exc
                await asyncio.sleep(delay)
            if loop.time() > deadline:
                raise TimeoutError(f"outbox {outbox} not drained within {timeout_s}s")
    finally:
        await relay.close_producer()


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
