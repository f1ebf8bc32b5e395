"""usage_client.kafka_producer: the producer options, send-error classes and start errors
the recorder relies on (the recorder's own behaviour is in test_client_recorder.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    SaslAuthenticationFailed,
)

from usage_client import KafkaSecurity, UsageRecorder
from usage_client.kafka_producer import (
    classify,
    producer_factory,
    producer_options,
    start_error,
)

SASL = KafkaSecurity(
    security_protocol="SASL_PLAINTEXT",
    sasl_mechanism="PLAIN",
    sasl_username="alice",
    sasl_password="s3cret-pw",
)


def _options(**overrides: object) -> dict[str, object]:
    kwargs: dict[str, object] = {
        "bootstrap_servers": "b1:9092",
        "client_id": "c",
        "request_timeout_ms": 30_000,
        "retry_backoff_ms": 250,
        "linger_ms": 5,
        "max_batch_bytes": 2 * 1024 * 1024,
        "security": KafkaSecurity(),
        "extra": None,
    }
    kwargs.update(overrides)
    return producer_options(**kwargs)  # type: ignore[arg-type]


def test_options_are_idempotent_with_acks_all_and_the_callers_extras_win() -> None:
    options = _options()
    assert options["acks"] == "all"
    assert options["enable_idempotence"] is True
    # a request must hold a whole batch, and never be under aiokafka's 1 MiB default
    assert options["max_request_size"] == 2 * 1024 * 1024
    assert _options(max_batch_bytes=1000)["max_request_size"] == 1024 * 1024
    assert _options(extra={"linger_ms": 50, "acks": 1})["linger_ms"] == 50
    assert _options(security=SASL)["sasl_plain_password"] == "s3cret-pw"


def test_the_factory_does_not_show_the_password() -> None:
    factory = producer_factory(_options(security=SASL))
    assert "s3cret-pw" not in repr(factory)


async def test_the_recorder_builds_its_producer_from_these_options() -> None:
    rec = UsageRecorder("b1:9092,b2:9092", user_id="u", security=SASL, linger_ms=7)
    producer: Any = rec._factory()
    try:
        assert producer.client._bootstrap_servers == "b1:9092,b2:9092"
        assert producer._sender._acks == -1  # "all"
        assert producer._sender._linger_time == 0.007
    finally:
        await producer.stop()


def test_send_errors_are_classified() -> None:
    assert classify(OutOfOrderSequenceNumber()) == "restart"
    assert classify(KafkaError()) == "restart"  # the sender task died
    assert classify(KafkaTimeoutError()) == "retry"
    assert classify(asyncio.CancelledError()) == "retry"
    assert classify(NotLeaderForPartitionError()) == "retry"  # retriable
    assert classify(MessageSizeTooLargeError()) == "fail"


async def test_start_errors_name_the_servers_or_the_credentials() -> None:
    refused = await start_error(
        TimeoutError(),
        bootstrap_servers="b1:9092",
        topic="t",
        timeout_s=2.5,
        security=KafkaSecurity(),
    )
    assert str(refused) == "cannot connect to Kafka at b1:9092 (topic 't') within 2.5s: timed out"
    rejected = await start_error(
        SaslAuthenticationFailed("bad"),
        bootstrap_servers="b1:9092",
        topic="t",
        timeout_s=1,
        security=SASL,
    )
    assert str(rejected).startswith("Kafka at b1:9092 rejected the SASL credentials over ")
