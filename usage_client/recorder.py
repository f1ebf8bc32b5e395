"""``UsageRecorder``: validated usage entries onto ``usage.entries`` with an idempotent
producer (acks=all, key = runId), a bounded buffer with back-pressure and delivery that
survives broker outages.

Delivery, in two layers:

* aiokafka's idempotent producer retries a batch on connection errors for as long as it
  knows the partition's leader, without duplicates (producer id + sequence numbers).
* On top of it every entry has a delivery deadline (``delivery_timeout_s`` from the moment
  it was recorded). Whatever aiokafka gives up on before that deadline (a batch expired
  while the leader was unknown, a full accumulator, missing metadata) is re-sent, with the
  SAME bytes and hence the same entry ``id``: the processor de-duplicates on the id, so a
  re-send that overlaps an earlier write changes nothing. A producer broken by a fatal
  sequence error is replaced and its entries re-sent. Permanent broker errors fail the
  entry. Any failed entry makes later ``record_*`` calls and ``flush``/exit raise
  :class:`UsageRecorderError`.

The buffer holds at most ``max_buffer`` entries that are recorded but not yet acknowledged;
``record_*`` awaits a free slot (back-pressure) for up to ``delivery_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from schemas.entry import DEFAULT_MAX_BYTES
from usage_client import kafka_producer
from usage_client.base import RecorderBase
from usage_client.errors import UsageRecorderError
from usage_client.kafka_producer import (
    DEFAULT_DELIVERY_TIMEOUT_S,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_REQUEST_TIMEOUT_MS,
    DEFAULT_RETRY_BACKOFF_MS,
    Producer,
    ProducerFactory,
    abort_producer,
    classify,
    start_error,
)
from usage_client.security import KafkaSecurity
from usage_client.validation import encode_entry

__all__ = ["RecorderStats", "UsageRecorder"]

log = logging.getLogger("usage_client")


@dataclass(slots=True)
class _Pending:
    entry_id: str
    key: bytes
    value: bytes
    deadline: float
    sends: int = 0


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """Counts since start: ``pending`` recorded but not acknowledged, ``delivered``
    acknowledged by the broker (acks=all), ``resent`` re-sends after a failed attempt,
    ``failed`` given up."""

    pending: int
    delivered: int
    resent: int
    failed: int


class UsageRecorder(RecorderBase):
    """Async context manager publishing usage entries to Kafka.

    ``async with UsageRecorder("localhost:9092", user_id="u1") as rec:``
    ``    run = rec.run()`` and then ``await run.record_tokens(...)`` etc.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str] = "localhost:9092",
        *,
        user_id: str,
        topic: str = "usage.entries",
        tenant_id: str | None = None,
        agent_name: str | None = None,
        thread_id: str | None = None,
        max_buffer: int = 10_000,
        start_timeout_s: float = 10.0,
        delivery_timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S,
        request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS,
        retry_backoff_ms: int = DEFAULT_RETRY_BACKOFF_MS,
        linger_ms: int = 5,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        max_entry_bytes: int = DEFAULT_MAX_BYTES,
        strict_metrics: bool = False,
        client_id: str = "usage-client",
        security: KafkaSecurity | None = None,
        producer_options: Mapping[str, Any] | None = None,
        producer_factory: ProducerFactory | None = None,
    ) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer: must be >= 1")
        for name, value in (
            ("start_timeout_s", start_timeout_s),
            ("delivery_timeout_s", delivery_timeout_s),
        ):
            if not value > 0:
                raise ValueError(f"{name}: must be > 0")
        super().__init__(
            user_id=user_id,
            tenant_id=tenant_id,
            agent_name=agent_name,
            thread_id=thread_id,
            strict_metrics=strict_metrics,
        )
        self.bootstrap_servers = (
            bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)
        )
        self.topic = topic
        self.max_buffer = max_buffer
        self.start_timeout_s = start_timeout_s
        self.delivery_timeout_s = delivery_timeout_s
        self.max_entry_bytes = max_entry_bytes
        self._retry_backoff_s = retry_backoff_ms / 1000
        self._request_timeout_s = request_timeout_ms / 1000
        self.security = security or KafkaSecurity()
        options = kafka_producer.producer_options(
            bootstrap_servers=self.bootstrap_servers,
            client_id=client_id,
            request_timeout_ms=request_timeout_ms,
            retry_backoff_ms=retry_backoff_ms,
            linger_ms=linger_ms,
            max_batch_bytes=max_batch_bytes,
            security=self.security,
            extra=producer_options,
        )
        self._factory: ProducerFactory = producer_factory or kafka_producer.producer_factory(
            options
        )
        self._state: Literal["new", "starting", "running", "closed"] = "new"
        self._producer: Producer | None = None
        self._producer_ready = asyncio.Event()
        self._restarting = False
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_buffer)
        self._idle = asyncio.Event()
        self._idle.set()
        self._pump_task: asyncio.Task[None] | None = None
        self._outstanding = 0
        self._delivered = 0
        self._resent = 0
        self._failed = 0
        self._error: BaseException | None = None
        self._last_error: BaseException | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> UsageRecorder:
        """Connect to Kafka and check the topic; fails within ``start_timeout_s``."""
        if self._state != "new":
            raise UsageRecorderError(f"the recorder cannot start twice (state {self._state})")
        self._state = "starting"
        producer = self._factory()
        try:
            await asyncio.wait_for(self._start_producer(producer), self.start_timeout_s)
        except BaseException as exc:
            self._state = "closed"
            await abort_producer(producer)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise await start_error(
                exc,
                bootstrap_servers=self.bootstrap_servers,
                topic=self.topic,
                timeout_s=self.start_timeout_s,
                security=self.security,
            ) from exc
        self._producer = producer
        self._producer_ready.set()
        self._pump_task = asyncio.create_task(self._pump(), name="usage-recorder-pump")
        self._state = "running"
        return self

    async def _start_producer(self, producer: Producer) -> None:
        await producer.start()
        partitions = await producer.partitions_for(self.topic)
        if not partitions:
            raise UsageRecorderError(f"topic {self.topic!r} has no partitions")

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every recorded entry is acknowledged (or given up); raise
        :class:`UsageRecorderError` when any was not delivered."""
        limit = self.delivery_timeout_s if timeout is None else timeout
        try:
            await asyncio.wait_for(self._idle.wait(), limit)
        except TimeoutError:
            raise UsageRecorderError(
                f"{self._outstanding} usage entries not acknowledged by Kafka at "
                f"{self.bootstrap_servers} within {limit:g}s"
                + (f" (last error: {self._last_error!r})" if self._last_error else "")
            ) from None
        self._raise_if_failed()

    async def close(self) -> None:
        """Flush, then stop the producer; raises like :meth:`flush`. Idempotent."""
        if self._state != "running":
            self._state = "closed"
            return
        try:
            await self.flush()
        finally:
            self._state = "closed"
            await self._shutdown()

    async def _shutdown(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if self._outstanding == 0:
            try:
                await asyncio.wait_for(producer.stop(), self._request_timeout_s)
                return
            except Exception:  # pragma: no cover - stop() of a healthy producer
                log.warning("stopping the Kafka producer failed", exc_info=True)
        await abort_producer(producer)

    async def __aenter__(self) -> UsageRecorder:
        return await self.start()

    @property
    def stats(self) -> RecorderStats:
        return RecorderStats(self._outstanding, self._delivered, self._resent, self._failed)

    # --- submission ------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise UsageRecorderError(
                f"{self._failed} usage entries could not be delivered to Kafka at "
                f"{self.bootstrap_servers}: {self._error!r}"
            ) from self._error

    def _check_usable(self) -> None:
        if self._state != "running":
            raise UsageRecorderError(
                f"the recorder is {self._state}; use it inside `async with UsageRecorder(...)`"
            )
        self._raise_if_failed()

    async def _submit(self, entry: dict[str, Any]) -> str:
        """Validate, wait for buffer space, enqueue; returns the entry id."""
        self._check_usable()
        value = encode_entry(entry, max_bytes=self.max_entry_bytes)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.delivery_timeout_s)
        except TimeoutError:
            raise UsageRecorderError(
                f"the buffer of {self.max_buffer} entries stayed full for "
                f"{self.delivery_timeout_s:g}s: Kafka at {self.bootstrap_servers} does not "
                "acknowledge entries"
                + (f" (last error: {self._last_error!r})" if self._last_error else "")
            ) from None
        try:
            self._check_usable()
        except BaseException:
            self._slots.release()
            raise
        entry_id = str(entry["id"])
        pending = _Pending(
            entry_id,
            str(entry["runId"]).encode(),
            value,
            time.monotonic() + self.delivery_timeout_s,
        )
        self._outstanding += 1
        self._idle.clear()
        self._queue.put_nowait(pending)
        return entry_id

    # --- delivery --------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            pending = await self._queue.get()
            await self._producer_ready.wait()
            producer = self._producer
            assert producer is not None
            pending.sends += 1
            try:
                future = await producer.send(self.topic, value=pending.value, key=pending.key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._on_failure(pending, exc, producer)
                continue
            future.add_done_callback(functools.partial(self._on_delivery, pending, producer))

    def _on_delivery(
        self, pending: _Pending, producer: Producer, future: asyncio.Future[Any]
    ) -> None:
        if future.cancelled():
            self._on_failure(pending, asyncio.CancelledError(), producer)
            return
        exc = future.exception()
        if exc is None:
            self._delivered += 1
            self._release()
        else:
            self._on_failure(pending, exc, producer)

    def _on_failure(self, pending: _Pending, exc: BaseException, producer: Producer) -> None:
        self._last_error = exc
        action = classify(exc)
        if self._state == "closed" or action == "fail" or time.monotonic() >= pending.deadline:
            log.error("usage entry %s not delivered: %r", pending.entry_id, exc)
            self._failed += 1
            if self._error is None:
                self._error = exc
            self._release()
            return
        log.warning(
            "usage entry %s: send %d failed (%r); re-sending", pending.entry_id, pending.sends, exc
        )
        self._resent += 1
        if action == "restart":
            self._restart(producer)
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def requeue() -> None:
            if timer is not None:
                self._timers.discard(timer)
            self._queue.put_nowait(pending)

        timer = loop.call_later(self._retry_backoff_s, requeue)
        self._timers.add(timer)

    def _release(self) -> None:
        self._outstanding -= 1
        self._slots.release()
        if self._outstanding == 0:
            self._idle.set()

    def _restart(self, broken: Producer) -> None:
        if self._restarting or broken is not self._producer or self._state != "running":
            return
        self._restarting = True
        self._producer_ready.clear()
        asyncio.get_running_loop().create_task(self._replace_producer(broken))

    async def _replace_producer(self, broken: Producer) -> None:
        log.warning("the Kafka producer failed fatally; replacing it")
        try:
            await abort_producer(broken)
            while self._state == "running":
                producer = self._factory()
                try:
                    await asyncio.wait_for(self._start_producer(producer), self._request_timeout_s)
                except Exception as exc:
                    self._last_error = exc
                    await abort_producer(producer)
                    await asyncio.sleep(self._retry_backoff_s)
                    continue
                self._producer = producer
                self._producer_ready.set()
                return
        finally:
            self._restarting = False
