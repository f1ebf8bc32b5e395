"""The aiokafka side of :class:`~usage_client.recorder.UsageRecorder`: the producer's
options and factory, how a send error is classified, how a producer is torn down when it
still holds batches, and the error a failed start becomes.

Kept apart from the recorder's buffering and re-delivery policy so that what is specific to
aiokafka (its option names, its error types, the private attributes an abort needs) lives
in one place, and the recorder's tests can substitute a fake producer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    SaslAuthenticationFailed,
)

from usage_client.errors import UsageRecorderError
from usage_client.security import KafkaSecurity

__all__ = [
    "DEFAULT_DELIVERY_TIMEOUT_S",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_REQUEST_TIMEOUT_MS",
    "DEFAULT_RETRY_BACKOFF_MS",
    "Producer",
    "ProducerFactory",
    "abort_producer",
    "classify",
    "producer_factory",
    "producer_options",
    "start_error",
]

#: Defaults chosen so that a broker outage of a minute or two is ridden out: aiokafka's
#: produce request (and batch) timeout, its back-off between retries, and the deadline
#: after which an unacknowledged entry counts as lost.
DEFAULT_REQUEST_TIMEOUT_MS: Final = 30_000
DEFAULT_RETRY_BACKOFF_MS: Final = 250
DEFAULT_DELIVERY_TIMEOUT_S: Final = 120.0
DEFAULT_MAX_BATCH_BYTES: Final = 512 * 1024


class Producer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]: ...

    async def partitions_for(self, topic: str) -> set[int]: ...


ProducerFactory = Callable[[], Producer]


def producer_options(
    *,
    bootstrap_servers: str,
    client_id: str,
    request_timeout_ms: int,
    retry_backoff_ms: int,
    linger_ms: int,
    max_batch_bytes: int,
    security: KafkaSecurity,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``AIOKafkaProducer`` keyword arguments: idempotent, acks=all, then the security
    options, then ``extra`` (the caller's ``producer_options``, which win)."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "request_timeout_ms": request_timeout_ms,
        "retry_backoff_ms": retry_backoff_ms,
        "linger_ms": linger_ms,
        "max_batch_size": max_batch_bytes,
        "max_request_size": max(1024 * 1024, max_batch_bytes),
    }
    # built here, when the recorder is constructed, not per producer: a missing or
    # unreadable certificate fails the constructor, before anything is recorded
    options.update(security.aiokafka_options())
    options.update(extra or {})
    return options


def producer_factory(options: dict[str, Any]) -> ProducerFactory:
    """A closure rather than ``functools.partial``: a partial's repr shows its arguments,
    the SASL password among them."""

    def factory() -> Producer:
        return AIOKafkaProducer(**options)  # type: ignore[no-any-return]

    return factory


def classify(exc: BaseException) -> Literal["retry", "restart", "fail"]:
    if isinstance(exc, OutOfOrderSequenceNumber | ProducerFenced) or type(exc) is KafkaError:
        return "restart"  # the producer itself is broken (its sender task died)
    if isinstance(exc, KafkaTimeoutError | TimeoutError | asyncio.CancelledError):
        return "retry"
    if getattr(exc, "retriable", False):
        return "retry"
    return "fail"


async def abort_producer(producer: Producer, timeout: float = 5.0) -> None:
    """Stop ``producer`` even when it still holds undeliverable batches.

    aiokafka has no public abort: ``stop()`` waits for every batch. Cancel its sender task
    and fail what it holds first (private attributes, looked up defensively)."""
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if isinstance(task, asyncio.Task) and not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    accumulator = getattr(producer, "_message_accumulator", None)
    fail_all = getattr(accumulator, "fail_all", None)
    if callable(fail_all):
        with contextlib.suppress(Exception):
            fail_all(UsageRecorderError("the recorder was closed before delivery"))
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), timeout)


async def start_error(
    exc: BaseException,
    *,
    bootstrap_servers: str,
    topic: str,
    timeout_s: float,
    security: KafkaSecurity,
) -> UsageRecorderError:
    """The error a failed start raises: wrong credentials named as such, else "cannot
    connect" with the servers, the topic, the timeout and the cause."""
    plain = security.security_protocol == "PLAINTEXT"
    how = "" if plain else f" over {security.describe()}"
    cause: BaseException = exc
    if isinstance(exc, KafkaConnectionError) and not plain:
        # aiokafka reports a rejected password or an untrusted certificate as a
        # closed or failed connection; one more connection tells which
        cause = await security.probe(bootstrap_servers) or exc
    reason = "timed out" if isinstance(cause, TimeoutError) else repr(cause)
    if isinstance(cause, SaslAuthenticationFailed | AuthenticationFailedError):
        # wrong credentials stay wrong: say so rather than "cannot connect"
        return UsageRecorderError(
            f"Kafka at {bootstrap_servers} rejected the SASL credentials{how}: {reason}"
        )
    return UsageRecorderError(
        f"cannot connect to Kafka at {bootstrap_servers}{how} "
        f"(topic {topic!r}) within {timeout_s:g}s: {reason}"
    )
