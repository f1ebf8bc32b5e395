"""The Prometheus metrics of CONTRACT §6, in one place.

``UsageMetrics`` owns the metric objects and offers typed, count-accepting methods so the
worker can report once per batch with aggregated figures. Children are memoised in plain
dicts so a hot call is a dict lookup plus ``inc``.

Label cardinality: producer-controlled label values are capped at ``label_cap`` distinct
values per label domain; later new values are reported as ``__other__``. Domains: ``model``
(shared by tokens, cost and unpriced metrics, so a model is named consistently everywhere),
``provider`` (also producer-supplied), ``tool`` (tool calls and durations), and ``type``,
kept separately for sub-agent types and custom entry types. Token ``type`` is a fixed enum.
No label ever carries a user, run, thread or entry id.

Cost is exported as a float counter of USD: observability only, never the money path.
Negative amounts are not exported (a Prometheus counter cannot decrease).
"""

from __future__ import annotations

import contextlib
import threading
from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from processor.domain.money import PICO_PER_USD

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DEAD_LETTER_REASONS",
    "ENTRY_KINDS",
    "ENTRY_OUTCOMES",
    "OTHER",
    "TOKEN_TYPES",
    "UNKNOWN",
    "LabelCap",
    "UsageMetrics",
]

OTHER = "__other__"
UNKNOWN = "unknown"
ENTRY_KINDS = ("tokens", "tool", "subagent", "custom")
ENTRY_OUTCOMES = ("accepted", "duplicate", "rejected")
TOKEN_TYPES = ("prompt", "completion", "reasoning", "cached", "cache_write")
DEAD_LETTER_REASONS = ("json", "schema", "invariant", "too_large", "timestamp", "internal")
_KIND_SET = frozenset(ENTRY_KINDS)
_OUTCOME_SET = frozenset(ENTRY_OUTCOMES)
_TOKEN_TYPE_SET = frozenset(TOKEN_TYPES)

TOOL_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
EVENT_LAG_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    86400.0,
)

#: an alert waits for its batch, the outbox poll and a Kafka transaction
ALERT_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """``histogram.observe(v)`` for every value, with one increment per bucket touched.

    prometheus_client has no bulk observe and its per-call cost (a lock and a linear
    bucket scan per value) was the largest metrics cost per entry on the ingest path.
    This uses the same private fields ``observe`` uses (``_upper_bounds``, ``_buckets``,
    ``_sum``); a unit test compares the result with ``observe``.
    """
    bounds: list[float] = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for v in values:
        counts[bisect_left(bounds, v)] += 1
        total += v
    if not any(counts):
        return
    histogram._sum.inc(total)
    for bucket, n in zip(histogram._buckets, counts, strict=True):
        if n:
            bucket.inc(n)


class LabelCap:
    """Admits the first ``cap`` distinct values of one label; maps the rest to ``__other__``."""

    __slots__ = ("_cap", "_lock", "_seen")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"label cap must be >= 1, got {cap}")
        self._cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        value = value or UNKNOWN
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self._cap:
                return OTHER
            self._seen.add(value)
            return value

    def __len__(self) -> int:
        return len(self._seen)


class UsageMetrics:
    """All ``usage_*`` metrics registered on one registry (a fresh one by default).

    The worker passes the registry it exposes (``prometheus_client.REGISTRY`` or the one
    Faust's Prometheus sensor uses). Creating two instances on the same registry raises
    ``ValueError`` (duplicated timeseries), as prometheus_client does.
    """

    def __init__(self, registry: CollectorRegistry | None = None, label_cap: int = 200) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._model = LabelCap(label_cap)
        self._provider = LabelCap(label_cap)
        self._tool = LabelCap(label_cap)
        self._subagent_type = LabelCap(label_cap)
        self._custom_type = LabelCap(label_cap)

        self.entries = Counter(
            "usage_entries_total",
            "Usage entries received, by kind and outcome.",
            ("kind", "outcome"),
            registry=r,
        )
        self.tokens_total = Counter(
            "usage_tokens_total",
            "Tokens of accepted entries, by model, provider and type.",
            ("model", "provider", "type"),
            registry=r,
        )
        self.cost_usd = Counter(
            "usage_cost_usd_total",
            "Cost in USD of accepted tokens entries (observability).",
            ("model", "provider"),
            registry=r,
        )
        self.tool_calls = Counter(
            "usage_tool_calls_total",
            "Tool calls, by tool and outcome.",
            ("tool", "outcome"),
            registry=r,
        )
        self.tool_duration = Histogram(
            "usage_tool_duration_seconds",
            "Tool call duration in seconds.",
            ("tool",),
            buckets=TOOL_DURATION_BUCKETS,
            registry=r,
        )
        self.subagent_calls = Counter(
            "usage_subagent_calls_total",
            "Sub-agent calls, by sub-agent type and outcome.",
            ("type", "outcome"),
            registry=r,
        )
        self.custom_entries = Counter(
            "usage_custom_entries_total",
            "Custom entries, by type.",
            ("type",),
            registry=r,
        )
        self.dead_letters = Counter(
            "usage_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason.",
            ("reason",),
            registry=r,
        )
        self.alerts = Counter(
            "usage_alerts_total",
            "Alerts published, by rule and level.",
            ("rule", "level"),
            registry=r,
        )
        self.event_lag_hist = Histogram(
            "usage_event_lag_seconds",
            "Processing time minus entry timestamp, in seconds.",
            buckets=EVENT_LAG_BUCKETS,
            registry=r,
        )
        self.unpriced_tokens = Counter(
            "usage_unpriced_tokens_total",
            "Tokens of models missing from the price catalog.",
            ("model",),
            registry=r,
        )
        self.apply_failures = Counter(
            "usage_batch_apply_failures_total",
            "Failed attempts to apply a batch (Redis or Kafka unavailable, or a script error).",
            registry=r,
        )
        self.offset_rewinds = Counter(
            "usage_offset_rewinds_total",
            "Partitions re-read from the offset Redis holds because Redis lost writes "
            "(or another worker moved the partition on).",
            registry=r,
        )
        self.children_cut = Counter(
            "usage_subagent_children_cut_total",
            "Sub-agent runs left out of a tree walk because a run had more children than "
            "USAGE_SUBAGENT_CHILDREN_LIMIT.",
            registry=r,
        )
        self.depth_cut = Counter(
            "usage_subagent_depth_cut_total",
            "Run trees evaluated for alerts that go deeper than USAGE_SUBAGENT_DEPTH_LIMIT "
            "(counted once per tree and batch; the runs below the limit are left out).",
            registry=r,
        )
        self.late_entries = Counter(
            "usage_late_entries_total",
            "Accepted entries whose user window had already expired (counted in the windows "
            "still retained), by window.",
            ("window",),
            registry=r,
        )
        self.alert_publish_lag = Histogram(
            "usage_alert_publish_lag_seconds",
            "From the batch that decided an alert to its publication on the notifications "
            "topic, in seconds.",
            buckets=ALERT_LAG_BUCKETS,
            registry=r,
        )
        self.alerts_pending = Gauge(
            "usage_alerts_pending",
            "Alerts decided but not yet acknowledged by the broker (the alerts outbox).",
            registry=r,
        )
        self.invoices_generated = Counter(
            "usage_invoices_generated_total",
            "Invoices created (each once per cluster, by the process that created it).",
            registry=r,
        )
        # Operational gauges for alerting (deploy/prometheus/rules.yml): what /readyz reads,
        # and how far this worker's partitions are behind, as series Prometheus can keep.
        self.dependency_up = Gauge(
            "usage_dependency_up",
            "1 when the dependency answered the last probe (once a second), 0 when not; "
            "the same figures /readyz reports.",
            ("dependency",),
            registry=r,
        )
        self.consumer_lag = Gauge(
            "usage_consumer_lag",
            "Entries on an ingest partition this worker owns that are not yet applied in Redis "
            "(the partition's end offset minus the next offset to apply).",
            ("topic", "partition"),
            registry=r,
        )
        # Memoised children: label tuple -> child metric (bounded by the label caps).
        self._children: dict[tuple[object, ...], Counter] = {}
        self._hist_children: dict[str, Histogram] = {}
        # Zero series for the fixed enums, so dashboards and rate() see them from the start.
        for kind in ENTRY_KINDS:
            for outcome in ENTRY_OUTCOMES:
                self.entries.labels(kind, outcome)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for window in ("hour", "day"):
            self.late_entries.labels(window)

    def _child(self, metric: Counter, *labels: str) -> Counter:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            self._children[key] = child
        return child

    # -- recording ----------------------------------------------------------------------

    def entry(self, kind: str, outcome: str, n: int = 1) -> None:
        """``n`` entries of ``kind`` (unknown kinds, e.g. unparsable ones: ``unknown``)."""
        if outcome not in _OUTCOME_SET:
            raise ValueError(f"outcome must be one of {ENTRY_OUTCOMES}, got {outcome!r}")
        if n:
            self._child(self.entries, kind if kind in _KIND_SET else UNKNOWN, outcome).inc(n)

    def tokens(self, model: str, provider: str | None, type: str, n: int) -> None:
        """``n`` tokens of ``type`` (prompt|completion|reasoning|cached|cache_write)."""
        if type not in _TOKEN_TYPE_SET:
            raise ValueError(f"token type must be one of {TOKEN_TYPES}, got {type!r}")
        if n:
            self._child(self.tokens_total, self._model(model), self._provider(provider), type).inc(
                n
            )

    def cost(self, model: str, provider: str | None, pico: int) -> None:
        """Add ``pico`` pico-dollars (exported as float USD; amounts <= 0 are skipped)."""
        if pico > 0:
            self._child(self.cost_usd, self._model(model), self._provider(provider)).inc(
                pico / PICO_PER_USD
            )

    def tool_call(self, tool: str, success: bool, duration_ms: float | None = None) -> None:
        """One tool call (and its duration when known)."""
        self.tool_calls_batch(
            tool, int(success), int(not success), () if duration_ms is None else (duration_ms,)
        )

    def tool_calls_batch(
        self, tool: str, successes: int, failures: int, durations_ms: Iterable[float] = ()
    ) -> None:
        """Aggregated tool calls of one tool in a batch, plus each call's duration."""
        label = self._tool(tool)
        if successes:
            self._child(self.tool_calls, label, "success").inc(successes)
        if failures:
            self._child(self.tool_calls, label, "failure").inc(failures)
        hist = self._hist_children.get(label)
        if hist is None:
            hist = self._hist_children[label] = self.tool_duration.labels(label)
        observe_many(hist, (max(ms, 0.0) / 1000.0 for ms in durations_ms))

    def subagent_call(self, type: str, success: bool, n: int = 1) -> None:
        if n:
            outcome = "success" if success else "failure"
            self._child(self.subagent_calls, self._subagent_type(type), outcome).inc(n)

    def custom(self, type: str, n: int = 1) -> None:
        if n:
            self._child(self.custom_entries, self._custom_type(type)).inc(n)

    def dead_letter(self, reason: str, n: int = 1) -> None:
        if n:
            self._child(self.dead_letters, reason).inc(n)

    def alert(self, rule: str, level: str, n: int = 1) -> None:
        if n:
            self._child(self.alerts, rule, level).inc(n)

    def event_lag(self, seconds: float) -> None:
        self.event_lag_hist.observe(max(seconds, 0.0))

    def event_lags(self, seconds: Iterable[float]) -> None:
        observe_many(self.event_lag_hist, (max(s, 0.0) for s in seconds))

    def alerts_published(self, alerts: Iterable[tuple[str, str, int]], now_ms: int) -> None:
        """(rule, level, triggeredAt) of alerts just published: counted once per cluster,
        since only the relay that published them counts them."""
        for rule, level, triggered_at in alerts:
            self.alert(rule, level)
            self.alert_publish_lag.observe(max(now_ms - triggered_at, 0) / 1000)

    def late(self, window: str, n: int) -> None:
        if n:
            self._child(self.late_entries, window).inc(n)

    def unpriced(self, model: str, n: int) -> None:
        if n:
            self._child(self.unpriced_tokens, self._model(model)).inc(n)

    def alert_rules(self, rules: Iterable[tuple[str, Iterable[str]]]) -> None:
        """Zero series of ``usage_alerts_total`` for each configured (rule, levels): without
        them ``increase()`` misses an alert that is the first of its rule and level."""
        for rule, levels in rules:
            for level in levels:
                self._child(self.alerts, rule, level)

    def dependency(self, name: str, up: bool) -> None:
        self.dependency_up.labels(name).set(1 if up else 0)

    def partition_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag.labels(topic, str(partition)).set(max(lag, 0))

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop a partition's lag series once this worker no longer owns it (its new owner
        reports it), so a sum over workers counts each partition once."""
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(topic, str(partition))

    # -- exposition -----------------------------------------------------------------------

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)
