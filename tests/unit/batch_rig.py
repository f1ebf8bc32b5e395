"""A batch pipeline over a real redis-server for unit tests: the real parse, validate, price,
fold and Lua step, with a dead-letter publisher that records what it is given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from processor.batch_pipeline import IngestPipeline, Message
from processor.domain.pricing import PriceCatalog, load_catalog
from processor.metrics import UsageMetrics
from processor.store.keys import Keys
from processor.store.run_queries import RunQueries
from processor.store.runs import RunStore
from tests.unit.api_support import make_settings

T0 = 1_763_000_000_000
NOW = T0 + 3_600_000
TOPIC = "usage.entries"


class Letters:
    """Dead-letter publisher: records letters; can be told to fail the next calls."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail_next = 0

    async def __call__(self, letters: list[tuple[bytes | None, bytes]]) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("broker went away")
        self.sent.extend(json.loads(v) for _, v in letters)

    def codes(self) -> list[str]:
        return [letter["error"]["code"] for letter in self.sent]


def entry(run: str, i: int, **body: Any) -> dict[str, Any]:
    base = {"id": f"{run}-{i}", "runId": run, "userId": "u", "timestamp": T0 + i}
    return {**base, **body}


def llm(run: str, i: int, model: str, **tokens: int) -> dict[str, Any]:
    counts = tokens or {"prompt": 100, "completion": 40, "reasoning": 10, "cached": 20}
    return entry(run, i, kind="tokens", model=model, tokens=counts)


def as_messages(entries: Sequence[dict[str, Any] | bytes], partition: int = 0) -> list[Message]:
    out = []
    for offset, e in enumerate(entries):
        value = e if isinstance(e, bytes) else json.dumps(e).encode()
        out.append(Message(TOPIC, partition, offset, b"k", value))
    return out


class Rig:
    def __init__(self, redis: Redis, prefix: str, catalog: PriceCatalog | None = None) -> None:
        self.keys = Keys(prefix)
        self.store = RunStore(redis, self.keys, dedup_ttl_s=3600, entry_ttl_s=3600)
        self.queries = RunQueries(redis, self.keys, children_limit=1000)
        self.metrics = UsageMetrics(CollectorRegistry())
        self.letters = Letters()
        self.pipeline = IngestPipeline(
            settings=make_settings(prefix),
            catalog=catalog or load_catalog(None),
            runs=self.store,
            metrics=self.metrics,
            publish_dead_letters=self.letters,
            clock=lambda: NOW,
        )

    async def rollup(self, run: str) -> Any:
        r = await self.queries.get_rollup("default", run)
        assert r is not None, run
        return r

    def count(self, kind: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "usage_entries_total", {"kind": kind, "outcome": outcome}
        )
        return value or 0.0
