"""Producing to the topics the processor owns: idempotent, acks=all, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from mode import Service

from processor.connections import kafka_options
from processor.settings import Settings
from schemas.deadletter import DLQ_TOPIC_MAX_MESSAGE_BYTES


class Publisher(Service):  # type: ignore[misc]
    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None

    async def on_start(self) -> None:
        self._producer = AIOKafkaProducer(
            **kafka_options(self._settings),
            client_id=f"{self._settings.app_id}-publisher",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            # room for the largest dead letter (schemas.deadletter.MAX_DEAD_LETTER_BYTES)
            max_request_size=DLQ_TOPIC_MAX_MESSAGE_BYTES,
        )
        await self._producer.start()

    async def on_stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def publish(self, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Send and wait until the broker acknowledged every message."""
        if self._producer is None:
            raise RuntimeError("publisher is not started")
        futures = [await self._producer.send(topic, value=v, key=k) for k, v in messages]
        await asyncio.gather(*futures)
