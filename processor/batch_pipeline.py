"""The Kafka batch pipeline: one batch of raw messages in, exact effects out (DLQ, Redis
rollups, metrics). ``processor.consumer`` feeds it the batches it fetches; entries posted
over HTTP (``processor.api.http_ingest``) are published to the topic and come back here.

Faust-free on purpose so the same code runs in the worker, in tests and in the benchmark.
The partitions' next offsets are written in Redis in the same atomic step as the batch's
effects (after its dead letters are acknowledged), so whatever Redis keeps or loses, it
keeps or loses together with its position, and a replay restores it exactly.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from processor.domain.accept import accept_entry
from processor.domain.fold import AcceptedEntry
from processor.domain.pricing import PriceCatalog
from processor.domain.windows import Retention, late_windows
from processor.metrics import ENTRY_KINDS, UNKNOWN, UsageMetrics
from processor.settings import Settings
from processor.store.runs import ApplyPlan, ApplyResult, OffsetUpdate, RunStore
from schemas.deadletter import build_dead_letter, fit_dead_letter
from schemas.entry import parse_entry
from schemas.errors import EntryRejected

log = logging.getLogger(__name__)

_TOKEN_METRIC_TYPES = ("prompt", "completion", "reasoning", "cached", "cache_write")


def _internal(m: RawMessage, exc: Exception) -> EntryRejected:
    log.error(
        "internal error on %s[%d]@%d, dead-lettered as 'internal': %r",
        m.topic,
        m.partition,
        m.offset,
        exc,
        exc_info=exc,
        extra={"topic": m.topic, "partition": m.partition, "offset": m.offset},
    )
    return EntryRejected("internal", f"the processor failed on this message: {exc!r}", None)


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
    """A RawMessage built by hand (tests)."""

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
    #: sub-agent runs the batch's run-tree evaluation did not follow (metrics)
    children_cut: int = 0
    depth_cut: int = 0


@dataclass(slots=True)
class PreparedBatch:
    """A batch ready to apply, and how far applying it got (``apply`` may be called
    again after it raised: what was published or applied is not done twice)."""

    now_ms: int
    messages: Sequence[RawMessage] = ()
    plan: ApplyPlan | None = None
    valid: list[AcceptedEntry] = field(default_factory=list)
    letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    #: (reason, kind) of every rejected message
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    letters_published: bool = False
    #: dead letters the store's verdict added (overflow, script failure), once known
    late_letters: list[tuple[bytes | None, bytes]] | None = None
    late_published: bool = False
    outcome: BatchOutcome | None = None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def kind_of(raw: bytes) -> str:
    """The ``kind`` of a rejected message when it can be read, else ``unknown``."""
    try:
        kind = json.loads(raw).get("kind")
    except Exception:  # not JSON, not an object: the kind cannot be read
        return UNKNOWN
    return kind if isinstance(kind, str) and kind in ENTRY_KINDS else UNKNOWN


def retention_of(settings: Settings) -> Retention:
    return Retention(
        hour_s=settings.hour_retention_seconds,
        day_s=settings.day_retention_seconds,
        month_s=settings.month_retention_seconds,
    )


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
        self._retention = retention_of(settings)
        # only an entry older than the shortest retention can be late for a window
        kept = [
            s
            for s in (
                settings.hour_retention_seconds,
                settings.day_retention_seconds,
                settings.month_retention_seconds,
            )
            if s
        ]
        self._late_horizon_ms = min(kept) * 1000 if kept else None
        self._catalog = catalog
        self._runs = runs
        self._metrics = metrics
        self._publish_dead_letters = publish_dead_letters
        self._clock = clock

    async def process(
        self, messages: Sequence[RawMessage], offsets: OffsetUpdate | None = None
    ) -> BatchOutcome:
        return await self.apply(self.prepare(messages), offsets)

    def prepare(self, messages: Sequence[RawMessage]) -> PreparedBatch:
        """The CPU part: decode, validate, price, fold; build dead letters. No I/O.

        Never raises for a message: one that makes any step fail unexpectedly becomes a
        dead letter with code ``internal`` (its bytes kept), so no input can stop a
        partition or crash-loop a worker.
        """
        now = self._clock()
        batch = PreparedBatch(now_ms=now, messages=messages)
        for m in messages:
            raw = m.value if m.value is not None else b""
            try:
                entry = parse_entry(raw, now_ms=now, max_bytes=self._max_bytes)
                accepted = accept_entry(entry, raw, self._catalog)
                accepted.origin = m
                batch.valid.append(accepted)
            except EntryRejected as err:
                self._reject(batch, m, raw, err)
            except Exception as exc:
                self._reject(batch, m, raw, _internal(m, exc))
        if batch.valid:
            batch.plan = self._plan(batch)
        return batch

    def _plan(self, batch: PreparedBatch) -> ApplyPlan | None:
        try:
            return self._runs.plan(batch.valid, batch.now_ms)
        except Exception:
            # find the entries that break folding or encoding; plan the others
            good: list[AcceptedEntry] = []
            for e in batch.valid:
                try:
                    self._runs.plan([e], batch.now_ms)
                    good.append(e)
                except Exception as exc:
                    m: RawMessage = e.origin
                    self._reject(batch, m, m.value or b"", _internal(m, exc))
            batch.valid = good
            return self._runs.plan(good, batch.now_ms) if good else None

    def _reject(self, batch: PreparedBatch, m: RawMessage, raw: bytes, err: EntryRejected) -> None:
        batch.rejected[(err.code, kind_of(raw))] += 1
        batch.letters.append((m.key, self._dead_letter(m, raw, err, batch.now_ms)))

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

    async def apply(
        self, batch: PreparedBatch, offsets: OffsetUpdate | None = None
    ) -> BatchOutcome:
        """The I/O part: dead letters acknowledged by Kafka, then the effects and the
        partitions' next offsets in Redis, so a crash anywhere replays the batch and
        loses no dead letter (one may be published twice).

        Raises ``StaleOffsets`` when Redis no longer holds the offsets this worker wrote;
        any other exception leaves the batch resumable: call ``apply`` again.
        """
        if batch.outcome is not None:
            return batch.outcome
        if batch.letters and not batch.letters_published:
            await self._publish_dead_letters(batch.letters)
            batch.letters_published = True
        outcome = BatchOutcome()
        if batch.plan is not None:
            applied = await self._runs.execute(batch.plan, offsets)
            outcome.accepted = applied.accepted
            outcome.duplicates = applied.duplicates
            outcome.children_cut, outcome.depth_cut = applied.children_cut, applied.depth_cut
            if batch.late_letters is None:
                batch.late_letters = self._late_letters(batch, applied)
            offsets_written = applied.offsets_written
        else:
            batch.late_letters = []
            offsets_written = False
        if batch.late_letters and not batch.late_published:
            await self._publish_dead_letters(batch.late_letters)
            batch.late_published = True
        if offsets is not None and not offsets_written:
            await self._runs.write_offsets(offsets)
        outcome.rejected = len(batch.letters) + len(batch.late_letters)
        batch.outcome = outcome
        self._record(outcome, batch.rejected, batch.now_ms)
        return outcome

    def _late_letters(
        self, batch: PreparedBatch, applied: ApplyResult
    ) -> list[tuple[bytes | None, bytes]]:
        """Dead letters of entries the store refused: overflow, or the script failing."""
        letters = []
        for entry, counter in applied.overflowed:
            err = EntryRejected(
                "invariant",
                f"run {entry.run_id!r}, user {entry.user_id!r}: this entry would take the counter "
                f"{counter!r} past the 64-bit limit (about 9.2 million USD or 9.2e18 tokens per "
                "run and model, or per user and model all time)",
                None,
            )
            letters.append(self._letter_of(batch, entry, err))
        for entry, error in applied.failed:
            err = EntryRejected("internal", f"the batch script failed on this entry: {error}", None)
            letters.append(self._letter_of(batch, entry, err))
        return letters

    def _letter_of(
        self, batch: PreparedBatch, entry: AcceptedEntry, err: EntryRejected
    ) -> tuple[bytes | None, bytes]:
        m: RawMessage = entry.origin
        batch.rejected[(err.code, entry.kind)] += 1
        return m.key, self._dead_letter(m, m.value or b"", err, batch.now_ms)

    def _record(self, outcome: BatchOutcome, rejected: Counter[tuple[str, str]], now: int) -> None:
        m = self._metrics
        for (reason, kind), n in rejected.items():
            m.dead_letter(reason, n)
            m.entry(kind, "rejected", n)
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
        if outcome.children_cut:
            m.children_cut.inc(outcome.children_cut)
        if outcome.depth_cut:
            m.depth_cut.inc(outcome.depth_cut)
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
            self._record_late(outcome.accepted, now)

    def _record_late(self, accepted: list[AcceptedEntry], now: int) -> None:
        horizon = self._late_horizon_ms
        if horizon is None:
            return
        cut = now - horizon
        late: Counter[str] = Counter()
        for e in accepted:
            if e.timestamp < cut:
                late.update(late_windows(e.timestamp, now, self._retention))
        for window, n in late.items():
            self._metrics.late(window, n)
