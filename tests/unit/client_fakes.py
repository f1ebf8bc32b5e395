"""A fake Kafka producer for unit tests of the recorder (no broker)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from usage_client import UsageRecorder

Outcome = BaseException | None | str  # exception: fail; None: ack; "hold": leave pending


@dataclass
class FakeBroker:
    """Decides the outcome of every send; records what was sent and acknowledged."""

    decide: Callable[[bytes, bytes, int], Outcome] = lambda key, value, n: None
    start_error: BaseException | None = None
    sent: list[tuple[bytes, bytes]] = field(default_factory=list)
    acked: list[tuple[bytes, bytes]] = field(default_factory=list)
    held: list[tuple[bytes, bytes, asyncio.Future[Any]]] = field(default_factory=list)
    producers: list[FakeProducer] = field(default_factory=list)

    def factory(self) -> FakeProducer:
        producer = FakeProducer(self)
        self.producers.append(producer)
        return producer

    def acked_entries(self) -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in self.acked]

    def release_held(self) -> None:
        held, self.held = self.held, []
        for key, value, fut in held:
            self.acked.append((key, value))
            fut.set_result(None)


class FakeProducer:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.started = False
        self.stopped = False

    async def start(self) -> None:
        if self.broker.start_error is not None:
            raise self.broker.start_error
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        n = len(self.broker.sent)
        self.broker.sent.append((key, value))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        outcome = self.broker.decide(key, value, n)
        if outcome == "hold":
            self.broker.held.append((key, value, fut))
        elif isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            self.broker.acked.append((key, value))
            fut.set_result(None)
        return fut


def fake_recorder(broker: FakeBroker, **kwargs: Any) -> UsageRecorder:
    kwargs.setdefault("user_id", "user-1")
    kwargs.setdefault("retry_backoff_ms", 1)
    return UsageRecorder("fake:9092", producer_factory=broker.factory, **kwargs)
