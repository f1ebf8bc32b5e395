"""One batch of raw messages in, exact effects out: DLQ, Redis rollups, metrics.

Faust-free on purpose so the same code runs under the Faust agent, in tests and in the
benchmark. The caller commits the batch's offsets only after ``process`` returns, so a
crash anywhere re-delivers the batch, and the idempotent Redis apply makes the re-delivery
change nothing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from processor.domain.accept import accept_entry
from processor.domain.pricing import PriceCatalog
from processor.domain.rollup import AcceptedEntry
from processor.metrics import UsageMetrics
from processor.settings import Settings
from processor.store.runs import ApplyPlan, RunStore
from schemas.deadletter import build_dead_letter, fit_dead_letter
from schemas.entry import parse_entry
from schemas.errors import EntryRejected

log = logging.getLogger(__name__)

_TOKEN_METRIC_TYPES = ("prompt", "completion", "reasoning", "cached", "cache_write")

DeadLetterPublisher = Callable[[list[tuple[bytes | None, bytes]]], Awaitable[None]]


class RawMessage(Protocol):
    """What the pipeline reads of a consumed message (aiokafka's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Message:
    """A RawMessage built by hand (tests, HTTP ingest)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class BatchOutcome:
    accepted: list[AcceptedEntry] = field(default_factory=list)
    duplicates: list[AcceptedEntry] = field(default_factory=list)
    rejected: int = 0


@dataclass(slots=True)
class PreparedBatch:
    now_ms: int
    plan: ApplyPlan | None = None
    valid: list[AcceptedEntry] = field(default_factory=list)
    letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    rejected_reasons: Counter[str] = field(default_factory=Counter)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class IngestPipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        catalog: PriceCatalog,
        runs: RunStore,
        metrics: UsageMetrics,
        publish_dead_letters: DeadLetterPublisher,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._max_bytes = settings.max_entry_bytes
        self._catalog = catalog
        self._runs = runs
        self._metrics = metrics
        self._publish_dead_letters = publish_dead_letters
        self._clock = clock

    async def process(self, messages: Sequence[RawMessage]) -> BatchOutcome:
        return await self.apply(self.prepare(messages))

    def prepare(self, messages: Sequence[RawMessage]) -> PreparedBatch:
        """The CPU part: decode, validate, price; build dead letters. No I/O."""
        now = self._clock()
        batch = PreparedBatch(now_ms=now)
        for m in messages:
            raw = m.value if m.value is not None else b""
            try:
                entry = parse_entry(raw, now_ms=now, max_bytes=self._max_bytes)
                accepted = accept_entry(entry, raw, self._catalog)
                accepted.origin = m
                batch.valid.append(accepted)
            except EntryRejected as err:
                batch.rejected_reasons[err.code] += 1
                batch.letters.append((m.key, self._dead_letter(m, raw, err, now)))
        if batch.valid:
            batch.plan = self._runs.plan(batch.valid)
        return batch

    @staticmethod
    def _dead_letter(m: RawMessage, raw: bytes, err: EntryRejected, now: int) -> bytes:
        def build(value: bytes) -> bytes:
            return build_dead_letter(
                raw_value=value,
                key=m.key,
                topic=m.topic,
                partition=m.partition,
                offset=m.offset,
                error=err,
                received_at_ms=now,
            )

        return fit_dead_letter(build, raw)

    async def apply(self, batch: PreparedBatch) -> BatchOutcome:
        """The I/O part: dead letters acknowledged by Kafka, effects applied in Redis."""
        outcome = BatchOutcome()
        letters = list(batch.letters)
        reasons = Counter(batch.rejected_reasons)
        if batch.plan is not None:
            applied = await self._runs.execute(batch.plan)
            outcome.accepted = applied.accepted
            outcome.duplicates = applied.duplicates
            for entry, counter in applied.overflowed:
                reasons["invariant"] += 1
                letters.append(self._overflow_letter(entry, counter, batch.now_ms))
        if letters:
            await self._publish_dead_letters(letters)
        outcome.rejected = len(letters)
        self._record(outcome, reasons, batch.now_ms)
        return outcome

    def _overflow_letter(
        self, entry: AcceptedEntry, counter: str, now: int
    ) -> tuple[bytes | None, bytes]:
        m: RawMessage = entry.origin
        err = EntryRejected(
            "invariant",
            f"run {entry.run_id!r}: this entry would take its counter {counter!r} past the "
            "64-bit limit (about 9.2 million USD or 9.2e18 tokens per run and model)",
            None,
        )
        return m.key, self._dead_letter(m, m.value or b"", err, now)

    def _record(self, outcome: BatchOutcome, rejected: Counter[str], now: int) -> None:
        m = self._metrics
        for reason, n in rejected.items():
            m.dead_letter(reason, n)
        if rejected:
            m.entry("unknown", "rejected", sum(rejected.values()))
        for kind, n in Counter(e.kind for e in outcome.duplicates).items():
            m.entry(kind, "duplicate", n)
        kinds: Counter[str] = Counter()
        # (model, provider) -> [prompt, completion, reasoning, cached, cache_write, cost, unpriced]
        per_model: dict[tuple[str, str | None], list[int]] = {}
        subagents: Counter[tuple[str, bool]] = Counter()
        tools: dict[str, tuple[list[int], list[float]]] = {}
        custom: Counter[str] = Counter()
        for e in outcome.accepted:
            kind = e.kind
            kinds[kind] += 1
            if kind == "tokens":
                t = e.tokens
                assert t is not None and e.model is not None
                sums = per_model.get((e.model, e.provider))
                if sums is None:
                    sums = per_model[(e.model, e.provider)] = [0, 0, 0, 0, 0, 0, 0]
                sums[0] += t.prompt
                sums[1] += t.completion
                sums[2] += t.reasoning
                sums[3] += t.cached
                sums[4] += t.cache_write
                sums[5] += e.cost_pico
                if not e.priced:
                    sums[6] += t.total
            elif kind == "tool" and e.call_name is not None:
                outcomes, durations = tools.setdefault(e.call_name, ([0, 0], []))
                outcomes[0 if e.success else 1] += 1
                durations.append(e.duration_us / 1000)
            elif kind == "subagent" and e.call_name is not None:
                subagents[(e.call_name, e.success)] += 1
            elif kind == "custom" and e.custom_type is not None:
                custom[e.custom_type] += 1
        for kind, n in kinds.items():
            m.entry(kind, "accepted", n)
        for (model, provider), sums in per_model.items():
            for ttype, n in zip(_TOKEN_METRIC_TYPES, sums, strict=False):
                m.tokens(model, provider, ttype, n)
            m.cost(model, provider, sums[5])
            m.unpriced(model, sums[6])
        for tool, ((ok_calls, failed_calls), durations) in tools.items():
            m.tool_calls_batch(tool, ok_calls, failed_calls, durations)
        for (stype, ok), n in subagents.items():
            m.subagent_call(stype, ok, n)
        for ctype, n in custom.items():
            m.custom(ctype, n)
        if outcome.accepted:
            m.event_lags((now - e.timestamp) / 1000 for e in outcome.accepted)
