"""An independent model of what the run API must answer, plus the checks that compare them.

The model (``GroundTruth``) is written from CONTRACT §2, §3.1 and §7 only: it does not use
the processor's fold or read-back (``processor.domain.fold``, ``processor.domain.readback``)
nor the store's apply and queries (only its key names), and it prices entries itself with
``Decimal`` arithmetic from the catalog's public prices (``PricePeriod`` rates in USD per
million tokens), never through ``PriceCatalog.price_tokens``. Money is compared as exact
decimal strings; durations and custom values as exact decimals.

The async helpers at the bottom drive a real worker: wait until its consumer group has
committed everything, read its metrics, and compare every run's rollup and entries.

``UserWindowsTruth`` models users' hour, day, month and all-time windows, billing periods
and invoices (§3.2, §3.3, §3.5) the same way: UTC labels come from ``datetime``, not from
``processor.domain.windows``; only the read side's ``WindowUsage.from_fields`` is used, to
read hourly windows straight from Redis (no HTTP route serves hours).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any
from urllib.parse import quote

import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from processor.domain.pricing import PriceCatalog
from processor.domain.windows import WindowUsage
from processor.settings import Settings
from processor.simulate import Fleet, encode
from processor.store.keys import Keys
from tests.integration.harness import wait_for

Entry = dict[str, Any]
Message = tuple[bytes | None, bytes]

#: Plenty of digits: token counts up to 2**53 times prices with 6 decimals, summed.
_CTX = Context(prec=80)
_MILLION = Decimal(1_000_000)
_PICO = Decimal("1e-12")
TOKEN_FIELDS = ("prompt", "completion", "reasoning", "cached", "cacheWrite", "total")


def usd(value: Decimal) -> str:
    """The contract's money string: plain notation, no trailing zeros, ``"0"`` for zero."""
    if value == 0:
        return "0"
    return format(value.normalize(_CTX), "f")


def entry_cost(entry: Mapping[str, Any], catalog: PriceCatalog) -> Decimal:
    """CONTRACT §7: producer ``costUsd`` wins; unknown model costs 0; else catalog prices."""
    if entry.get("costUsd") is not None:
        return Decimal(entry["costUsd"])
    price = catalog.price_at(entry["model"], entry["timestamp"], entry.get("provider"))
    if price is None:
        return Decimal(0)
    t = entry["tokens"]
    prompt, completion = t.get("prompt"), t.get("completion")
    if prompt is None and completion is None:  # only ``total``: priced at ``input``
        cost = _CTX.multiply(Decimal(t["total"]), price.input.base)
    else:
        prompt, completion = prompt or 0, completion or 0
        cached, cache_write = t.get("cached") or 0, t.get("cacheWrite") or 0
        reasoning = t.get("reasoning") or 0
        # long-context tiers: the prompt's size picks the rate of every component
        parts = (
            (prompt - cached - cache_write, price.input.usd_at(prompt)),
            (cached, price.cached_input.usd_at(prompt)),
            (cache_write, price.cache_write.usd_at(prompt)),
            (completion - reasoning, price.output.usd_at(prompt)),
            (reasoning, price.reasoning.usd_at(prompt)),
        )
        cost = Decimal(0)
        for count, rate in parts:
            cost = _CTX.add(cost, _CTX.multiply(Decimal(count), rate))
    cost = _CTX.divide(cost, _MILLION)
    assert cost == cost.quantize(_PICO, context=_CTX), f"{cost} is not whole pico-dollars"
    return cost


def entry_tokens(entry: Mapping[str, Any]) -> dict[str, int]:
    t = entry["tokens"]
    counts = {name: int(t.get(name) or 0) for name in TOKEN_FIELDS[:-1]}
    total = t.get("total")
    counts["total"] = int(total) if total is not None else counts["prompt"] + counts["completion"]
    return counts


def _add_counts(into: dict[str, int], other: Mapping[str, int]) -> None:
    for name in TOKEN_FIELDS:
        into[name] = into.get(name, 0) + other.get(name, 0)


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(TOKEN_FIELDS, 0)


@dataclass
class CallTotals:
    calls: int = 0
    successful: int = 0
    failed: int = 0
    duration_ms: Decimal = Decimal(0)

    def add(self, success: bool, duration_ms: float | int) -> None:
        self.calls += 1
        if success:
            self.successful += 1
        else:
            self.failed += 1
        self.duration_ms += Decimal(repr(duration_ms))

    def merged(self, other: CallTotals) -> CallTotals:
        return CallTotals(
            self.calls + other.calls,
            self.successful + other.successful,
            self.failed + other.failed,
            self.duration_ms + other.duration_ms,
        )

    def wire(self, calls_name: str = "calls") -> dict[str, Any]:
        return {
            calls_name: self.calls,
            "successfulCalls": self.successful,
            "failedCalls": self.failed,
            "totalDurationMs": self.duration_ms,
        }


@dataclass
class RunTruth:
    run_id: str
    user_id: str
    tenant_id: str
    agent_name: str | None
    tokens_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    cost_by_model: dict[str, Decimal] = field(default_factory=dict)
    tools: dict[str, CallTotals] = field(default_factory=dict)
    subagents: dict[str, CallTotals] = field(default_factory=dict)
    custom: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    children: set[str] = field(default_factory=set)
    started_at: int = 0
    last_updated_at: int = 0
    entry_count: int = 0
    entries: list[Entry] = field(default_factory=list)  # as the API serves them

    @property
    def tokens(self) -> dict[str, int]:
        total = _zero_counts()
        for counts in self.tokens_by_model.values():
            _add_counts(total, counts)
        return total

    @property
    def cost(self) -> Decimal:
        return sum(self.cost_by_model.values(), Decimal(0))


def _calls_wire(by_name: Mapping[str, CallTotals], group: str) -> dict[str, Any]:
    total = CallTotals()
    for stats in by_name.values():
        total = total.merged(stats)
    out = total.wire("totalCalls")
    out[group] = {name: stats.wire() for name, stats in sorted(by_name.items())}
    return out


def _merge_custom(
    into: dict[str, dict[str, Decimal]], other: Mapping[str, Mapping[str, Decimal]]
) -> None:
    for ctype, names in other.items():
        bucket = into.setdefault(ctype, {})
        for name, value in names.items():
            bucket[name] = bucket.get(name, Decimal(0)) + value


class GroundTruth:
    """Expected run rollups of a stream of entry dicts, in the order they were produced.

    Only the default tenant is modelled (the API without keys serves tenant ``default``).
    A repeated ``id`` is a duplicate and changes nothing (the test re-sends identical
    bodies, so which copy wins does not matter).
    """

    def __init__(self, catalog: PriceCatalog) -> None:
        self._catalog = catalog
        self.runs: dict[str, RunTruth] = {}
        self.ids: set[str] = set()
        self.duplicates = 0
        self.accepted_by_kind: Counter[str] = Counter()
        self.unpriced_tokens: Counter[str] = Counter()

    def add_all(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            self.add(e)

    def add(self, entry: Entry) -> bool:
        """Fold one produced entry in; False when it is a duplicate."""
        if entry["id"] in self.ids:
            self.duplicates += 1
            return False
        assert entry.get("tenantId", "default") == "default", "only tenant default is modelled"
        self.ids.add(entry["id"])
        self.accepted_by_kind[entry["kind"]] += 1
        run = self.runs.get(entry["runId"])
        ts = entry["timestamp"]
        if run is None:
            run = self.runs[entry["runId"]] = RunTruth(
                entry["runId"], entry["userId"], "default", entry.get("agentName"), started_at=ts
            )
        if run.agent_name is None:
            run.agent_name = entry.get("agentName")
        run.entry_count += 1
        run.started_at = min(run.started_at, ts)
        run.last_updated_at = max(run.last_updated_at, ts)
        served = copy.deepcopy(entry)
        kind = entry["kind"]
        if kind == "tokens":
            model = entry["model"]
            cost = entry_cost(entry, self._catalog)
            counts = entry_tokens(entry)
            _add_counts(run.tokens_by_model.setdefault(model, _zero_counts()), counts)
            run.cost_by_model[model] = run.cost_by_model.get(model, Decimal(0)) + cost
            if "costUsd" not in entry:
                served["costUsd"] = usd(cost)
            unknown = self._catalog.price_at(model, ts, entry.get("provider")) is None
            if unknown and "costUsd" not in entry:
                self.unpriced_tokens[model] += counts["total"]
        elif kind == "tool":
            run.tools.setdefault(entry["toolName"], CallTotals()).add(
                entry["success"], entry["durationMs"]
            )
        elif kind == "subagent":
            run.subagents.setdefault(entry["subAgentType"], CallTotals()).add(
                entry["success"], entry["durationMs"]
            )
            run.children.add(entry["subAgentRunId"])
        elif kind == "custom":
            bucket = run.custom.setdefault(entry["type"], {})
            bucket[entry["name"]] = bucket.get(entry["name"], Decimal(0)) + Decimal(
                repr(entry["value"])
            )
        else:  # pragma: no cover - the test only produces valid kinds
            raise AssertionError(f"unexpected kind {kind!r}")
        run.entries.append(served)
        return True

    @property
    def accepted(self) -> int:
        return len(self.ids)

    def tree(self, run_id: str) -> list[str]:
        """The run and every run reachable through sub-agent links, once each, cycles cut.

        A referenced run without accepted entries is unknown to the processor and adds
        nothing.
        """
        order = [run_id]
        seen = {run_id}
        stack = [run_id]
        while stack:
            for child in sorted(self.runs[stack.pop()].children):
                if child not in seen and child in self.runs:
                    seen.add(child)
                    order.append(child)
                    stack.append(child)
        return order

    def rollup(self, run_id: str, include_sub_agents: bool = True) -> dict[str, Any]:
        """The §3.1 rollup object (numbers as int or Decimal, money as strings)."""
        run = self.runs[run_id]
        members = self.tree(run_id) if include_sub_agents else [run_id]
        tree_tokens = _zero_counts()
        tree_cost = Decimal(0)
        tree_custom: dict[str, dict[str, Decimal]] = {}
        for member_id in members:
            member = self.runs[member_id]
            _add_counts(tree_tokens, member.tokens)
            tree_cost += member.cost
            _merge_custom(tree_custom, member.custom)
        return {
            "runId": run.run_id,
            "userId": run.user_id,
            "tenantId": run.tenant_id,
            "agentName": run.agent_name,
            "tokens": run.tokens,
            "tokensByModel": {m: dict(c) for m, c in sorted(run.tokens_by_model.items())},
            "costUsd": usd(run.cost),
            "costByModel": {m: usd(c) for m, c in sorted(run.cost_by_model.items())},
            "tokensIncludingSubAgents": tree_tokens,
            "costIncludingSubAgentsUsd": usd(tree_cost),
            "customIncludingSubAgents": tree_custom,
            "toolStats": _calls_wire(run.tools, "byTool"),
            "subAgentStats": _calls_wire(run.subagents, "byType"),
            "custom": run.custom,
            "subAgentRunIds": sorted(run.children),
            "startedAt": run.started_at,
            "lastUpdatedAt": run.last_updated_at,
            "entryCount": run.entry_count,
        }

    def entries(self, run_id: str) -> list[Entry]:
        """The run's entries as served: ordered by (timestamp, id)."""
        return sorted(self.runs[run_id].entries, key=lambda e: (e["timestamp"], e["id"]))


# --- streams -----------------------------------------------------------------------------


def fleet_entries(n: int, *, seed: int, prefix: str, active_runs: int = 150) -> list[Entry]:
    return list(Fleet(seed=seed, users=12, active_runs=active_runs, run_prefix=prefix).entries(n))


def with_duplicates(
    entries: Sequence[Entry], *, fraction: float, seed: int
) -> tuple[list[Entry], list[Entry]]:
    """``(stream, late)``: ``entries`` with about half of ``fraction`` re-sent right after the
    original (same fetch batch), and the other half returned separately to re-send much later.
    """
    rnd = random.Random(seed)
    picked = rnd.sample(range(len(entries)), round(len(entries) * fraction))
    soon = set(picked[: len(picked) // 2])
    late = [copy.deepcopy(entries[i]) for i in sorted(picked[len(picked) // 2 :])]
    stream: list[Entry] = []
    for i, e in enumerate(entries):
        stream.append(e)
        if i in soon:
            stream.append(copy.deepcopy(e))
    return stream, late


def messages(entries: Iterable[Entry]) -> list[Message]:
    return [encode(e) for e in entries]


# --- waiting on a worker ------------------------------------------------------------------


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def redis_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """The next offset per partition that Redis holds for ``group`` (the worker's position)."""
    keys = Keys(settings.key_prefix)
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        raw = await client.hgetall(keys.offsets(group))  # type: ignore[misc]
    finally:
        await client.aclose()
    prefix = Keys.offset_field(topic, 0)[:-1]
    return {int(f[len(prefix) :]): int(v) for f, v in raw.items() if f.startswith(prefix)}


async def wait_caught_up(settings: Settings, group: str, timeout: float = 120.0) -> None:
    """Until ``group`` has committed the end offset of every partition of the entries topic.

    The worker commits a batch's offsets only after its effects are in Redis, so this means
    everything produced so far has been applied (or dead-lettered).
    """
    ends = await end_offsets(settings, settings.topic_entries)

    async def caught_up() -> dict[int, int] | None:
        committed = await committed_offsets(settings, group, settings.topic_entries)
        behind = {p: end - committed.get(p, 0) for p, end in ends.items()}
        return None if any(behind.values()) else committed

    await wait_for(caught_up, timeout=timeout, interval=0.25, message=f"group {group} caught up")


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] of a Prometheus text exposition."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def metric_sum(
    metrics: Mapping[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        value
        for sample_labels, value in metrics.get(name, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


async def fetch_metrics(http: httpx.AsyncClient) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = await http.get("/metrics")
    response.raise_for_status()
    return parse_metrics(response.text)


# --- comparing -----------------------------------------------------------------------------


def _decimal_json(text: str) -> Any:
    """JSON with non-integer numbers as exact Decimals (integers stay int)."""
    return json.loads(text, parse_float=Decimal)


async def check_run(
    http: httpx.AsyncClient, truth: GroundTruth, run_id: str, *, entries: bool = True
) -> None:
    """Compare one run's rollup (with and without sub-agents) and its entries page."""
    for include in (True, False):
        response = await http.get(
            f"/v1/runs/{quote(run_id, safe='')}/rollup",
            params={"includeSubAgents": "true" if include else "false"},
        )
        assert response.status_code == 200, (run_id, response.text)
        got = _decimal_json(response.text)
        want = truth.rollup(run_id, include)
        if got != want:
            diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
            extra = sorted(set(got) - set(want))
            raise AssertionError(
                f"rollup of {run_id} (includeSubAgents={include}) differs "
                f"(field: (got, want)): {diff}; unexpected fields: {extra}"
            )
    if not entries:
        return
    expected = truth.entries(run_id)
    assert len(expected) <= 1000, "page through runs with more than 1000 entries"
    response = await http.get(f"/v1/runs/{quote(run_id, safe='')}/entries", params={"limit": 1000})
    assert response.status_code == 200, (run_id, response.text)
    page = response.json()
    assert page["total"] == len(expected), run_id
    got_entries = page["entries"]
    if got_entries != expected:
        got_ids = [e.get("id") for e in got_entries]
        want_ids = [e["id"] for e in expected]
        assert got_ids == want_ids, f"entries of {run_id}: order/ids differ"
        for g, w in zip(got_entries, expected, strict=True):
            assert g == w, f"entry {w['id']} of {run_id}: got {g}, want {w}"


async def check_all_runs(
    http: httpx.AsyncClient, truth: GroundTruth, *, entries: bool = True, concurrency: int = 8
) -> None:
    """``check_run`` for every run the model knows, a few at a time; then a 404 probe."""
    ids = sorted(truth.runs)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(run_id: str) -> None:
        async with semaphore:
            await check_run(http, truth, run_id, entries=entries)

    await asyncio.gather(*(one(r) for r in ids))
    missing = await http.get("/v1/runs/no-such-run-ever/rollup")
    assert missing.status_code == 404, missing.text


# --- users' windows, billing periods and invoices (CONTRACT §3.2, §3.3, §3.5) ---------------
#
# Written from the contract with ``datetime`` only (no processor.domain.windows): an entry
# belongs to the UTC hour, day and month of its ``timestamp`` and to its user's all time.
# Tenants are modelled (the entry's ``tenantId``, default ``"default"``); ids are unique
# per tenant.

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WINDOW_KINDS = ("hour", "day", "month", "all")
UNKNOWN_AGENT = "unknown"


def utc_labels(ts: int) -> tuple[str, str, str]:
    """(``YYYY-MM-DDTHH``, ``YYYY-MM-DD``, ``YYYY-MM``) of an epoch-ms timestamp, exactly
    (integer milliseconds, no float seconds)."""
    t = _EPOCH + timedelta(milliseconds=ts)
    return t.strftime("%Y-%m-%dT%H"), t.strftime("%Y-%m-%d"), t.strftime("%Y-%m")


def utc_ms(text: str) -> int:
    """``2024-02-29T23:59:59.999Z`` -> epoch ms (exact)."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert t.tzinfo is not None, text
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _ms(t: datetime) -> int:
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


def window_of(kind: str, ts: int) -> tuple[int, int]:
    """[start, end) in epoch ms of the UTC hour, day or month holding ``ts``."""
    t = _EPOCH + timedelta(milliseconds=ts)
    if kind == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif kind == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    else:
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
    return _ms(start), _ms(end)


@dataclass
class AgentTruth:
    tokens: dict[str, int] = field(default_factory=_zero_counts)
    cost: Decimal = Decimal(0)
    calls: int = 0


@dataclass
class WindowTruth:
    """One window of one user: what §3.2 reports for it."""

    entry_count: int = 0
    tokens_by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    cost_by_model: dict[str, Decimal] = field(default_factory=dict)
    agents: dict[str, AgentTruth] = field(default_factory=dict)
    runs: set[str] = field(default_factory=set)

    def add(
        self, entry: Mapping[str, Any], cost: Decimal | None, counts: dict[str, int] | None
    ) -> None:
        self.entry_count += 1
        self.runs.add(entry["runId"])
        if entry["kind"] != "tokens":
            return
        assert cost is not None and counts is not None
        model = entry["model"]
        _add_counts(self.tokens_by_model.setdefault(model, _zero_counts()), counts)
        self.cost_by_model[model] = self.cost_by_model.get(model, Decimal(0)) + cost
        agent = self.agents.setdefault(entry.get("agentName") or UNKNOWN_AGENT, AgentTruth())
        _add_counts(agent.tokens, counts)
        agent.cost += cost
        agent.calls += 1

    @property
    def tokens(self) -> dict[str, int]:
        total = _zero_counts()
        for counts in self.tokens_by_model.values():
            _add_counts(total, counts)
        return total

    @property
    def cost(self) -> Decimal:
        return sum(self.cost_by_model.values(), Decimal(0))

    def by_model(self) -> dict[str, Any]:
        return {
            m: {"tokens": dict(c), "costUsd": usd(self.cost_by_model[m])}
            for m, c in sorted(self.tokens_by_model.items())
        }

    def by_agent(self) -> list[dict[str, Any]]:
        """Sorted by cost, descending (ties by agent; compare ties as a set, see
        ``same_by_agent``)."""
        rows = sorted(self.agents.items(), key=lambda kv: (-kv[1].cost, kv[0]))
        return [
            {"agent": a, "tokens": dict(t.tokens), "costUsd": usd(t.cost), "calls": t.calls}
            for a, t in rows
        ]

    def snapshot(self) -> WindowTruth:
        return copy.deepcopy(self)


@dataclass
class AdjustmentTruth:
    tenant: str
    user: str
    period: str
    entry_id: str
    amount: Decimal


@dataclass
class InvoiceTruth:
    tenant: str
    user: str
    period: str
    amount: Decimal
    #: model -> (tokens.total, cost) of the month as generated
    lines: dict[str, tuple[int, Decimal]]
    adjustments: list[AdjustmentTruth] = field(default_factory=list)

    @property
    def adjustment(self) -> Decimal:
        return sum((a.amount for a in self.adjustments), Decimal(0))

    def wire(self) -> dict[str, Any]:
        """The invoice object without ``invoiceId``, ``status``, ``generatedAt``; ``lines``
        by model (the contract does not order them)."""
        return {
            "tenantId": self.tenant,
            "userId": self.user,
            "period": self.period,
            "amountUsd": usd(self.amount),
            "lines": [
                {"model": m, "tokens": t, "amountUsd": usd(c)}
                for m, (t, c) in sorted(self.lines.items())
            ],
            "adjustmentUsd": usd(self.adjustment),
        }


class UserWindowsTruth:
    """Expected §3.2/§3.3/§3.5 answers of a stream of entry dicts (any order, any tenants).

    ``generate(tenant, period)`` records the invoices the service must create at that point
    of the stream (amount = the month as it is then); entries added afterwards for an
    invoiced month count in the month and, if they are priced tokens entries, become
    adjustments of its invoice.
    """

    def __init__(self, catalog: PriceCatalog) -> None:
        self._catalog = catalog
        self.ids: set[tuple[str, str]] = set()
        self.duplicates = 0
        self.accepted_by_kind: Counter[str] = Counter()
        #: (tenant, user) -> kind -> label ("" for all time) -> window
        self.windows: dict[tuple[str, str], dict[str, dict[str, WindowTruth]]] = {}
        self.invoices: dict[tuple[str, str, str], InvoiceTruth] = {}
        self.adjustments: list[AdjustmentTruth] = []
        self.costs: dict[tuple[str, str], Decimal] = {}  # (tenant, entry id) -> cost

    def add_all(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            self.add(e)

    def add(self, entry: Entry) -> bool:
        tenant = entry.get("tenantId", "default")
        key = (tenant, entry["id"])
        if key in self.ids:
            self.duplicates += 1
            return False
        self.ids.add(key)
        self.accepted_by_kind[entry["kind"]] += 1
        user = entry["userId"]
        cost = counts = None
        if entry["kind"] == "tokens":
            cost = entry_cost(entry, self._catalog)
            counts = entry_tokens(entry)
            self.costs[key] = cost
        hour, day, month = utc_labels(entry["timestamp"])
        wins = self.windows.setdefault((tenant, user), {k: {} for k in WINDOW_KINDS})
        for kind, label in (("hour", hour), ("day", day), ("month", month), ("all", "")):
            wins[kind].setdefault(label, WindowTruth()).add(entry, cost, counts)
        invoice = self.invoices.get((tenant, user, month))
        if invoice is not None and cost is not None and cost > 0:
            adj = AdjustmentTruth(tenant, user, month, entry["id"], cost)
            invoice.adjustments.append(adj)
            self.adjustments.append(adj)
        return True

    @property
    def accepted(self) -> int:
        return len(self.ids)

    # --- what exists ---------------------------------------------------------------------

    def tenants(self) -> list[str]:
        return sorted({t for t, _ in self.windows})

    def users(self, tenant: str) -> list[str]:
        return sorted(u for t, u in self.windows if t == tenant)

    def periods(self, tenant: str | None = None) -> list[str]:
        return sorted(
            {p for (t, _), w in self.windows.items() if tenant in (None, t) for p in w["month"]}
        )

    def window(self, tenant: str, user: str, kind: str, label: str = "") -> WindowTruth | None:
        wins = self.windows.get((tenant, user))
        return None if wins is None else wins[kind].get(label)

    def hours(self, tenant: str, user: str) -> dict[str, WindowTruth]:
        return dict(self.windows[(tenant, user)]["hour"])

    def days(self, tenant: str, user: str) -> list[str]:
        return sorted(self.windows[(tenant, user)]["day"])

    # --- the API's answers -----------------------------------------------------------------

    def all_time(self, tenant: str, user: str) -> dict[str, Any]:
        w = self.windows[(tenant, user)]["all"][""]
        return {
            "userId": user,
            "tokens": w.tokens,
            "costUsd": usd(w.cost),
            "entryCount": w.entry_count,
            "runCount": len(w.runs),
        }

    def daily(self, tenant: str, user: str, first: date, last: date) -> list[dict[str, Any]]:
        out = []
        for label, w in sorted(self.windows[(tenant, user)]["day"].items()):
            if first.isoformat() <= label <= last.isoformat():
                out.append(
                    {
                        "date": label,
                        "tokens": w.tokens,
                        "costUsd": usd(w.cost),
                        "entryCount": w.entry_count,
                        "byModel": w.by_model(),
                    }
                )
        return out

    def monthly(self, tenant: str, user: str, period: str) -> dict[str, Any]:
        w = self.windows[(tenant, user)]["month"].get(period) or WindowTruth()
        return {
            "period": period,
            "tokens": w.tokens,
            "costUsd": usd(w.cost),
            "entryCount": w.entry_count,
            "byModel": w.by_model(),
            "byAgent": w.by_agent(),
        }

    def dashboard(self, tenant: str, user: str, now_ms: int) -> dict[str, Any]:
        _, day, period = utc_labels(now_ms)
        month = self.windows[(tenant, user)]["month"].get(period) or WindowTruth()
        all_time = self.windows[(tenant, user)]["all"][""]
        average = (month.cost / Decimal(int(day[8:]))).quantize(
            _PICO, rounding=ROUND_HALF_EVEN, context=_CTX
        )
        return {
            "monthly": {"totalTokens": month.tokens["total"], "costUsd": usd(month.cost)},
            "allTime": {"totalTokens": all_time.tokens["total"], "costUsd": usd(all_time.cost)},
            "averageDailyCostUsd": usd(average),
        }

    def billing(self, tenant: str, period: str) -> list[dict[str, Any]]:
        """Users with usage in the period, ordered by user id (code points = UTF-8 bytes)."""
        out = []
        for user in self.users(tenant):
            w = self.windows[(tenant, user)]["month"].get(period)
            if w is not None:
                out.append(
                    {
                        "userId": user,
                        "totalTokens": w.tokens["total"],
                        "costUsd": usd(w.cost),
                        "entryCount": w.entry_count,
                    }
                )
        return out

    # --- invoices ----------------------------------------------------------------------------

    def generate(self, tenant: str, period: str) -> list[str]:
        """Invoice every user of the tenant with usage in the period and no invoice yet;
        returns the users invoiced now."""
        created = []
        for user in self.users(tenant):
            w = self.windows[(tenant, user)]["month"].get(period)
            if w is None or (tenant, user, period) in self.invoices:
                continue
            lines = {m: (c["total"], w.cost_by_model[m]) for m, c in w.tokens_by_model.items()}
            self.invoices[(tenant, user, period)] = InvoiceTruth(
                tenant, user, period, w.cost, lines
            )
            created.append(user)
        return created

    def period_invoices(self, tenant: str, period: str) -> list[InvoiceTruth]:
        return [
            inv for (t, _, p), inv in sorted(self.invoices.items()) if t == tenant and p == period
        ]


# --- comparing users' windows with a worker ----------------------------------------------


def _q(part: str) -> str:
    return quote(part, safe="")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def same_by_agent(got: Any, want: list[dict[str, Any]]) -> bool:
    """``byAgent`` equals ``want`` as a set of rows and is sorted by cost, descending."""
    if not isinstance(got, list) or len(got) != len(want):
        return False
    costs = [Decimal(row.get("costUsd", "NaN")) for row in got]
    if any(a < b for a, b in itertools.pairwise(costs)):
        return False
    return sorted(got, key=lambda r: str(r.get("agent"))) == sorted(want, key=lambda r: r["agent"])


async def _get_json(
    http: httpx.AsyncClient, path: str, headers: Mapping[str, str] | None, **params: Any
) -> Any:
    response = await http.get(path, params=params or None, headers=headers)
    assert response.status_code == 200, (
        f"GET {path} {params}: {response.status_code} {response.text}"
    )
    return response.json()


def _diff(what: str, got: Any, want: Any) -> str:
    if isinstance(got, dict) and isinstance(want, dict):
        fields = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        extra = sorted(set(got) - set(want))
        return f"{what} differs (field: (got, want)): {fields}; unexpected fields: {extra}"
    return f"{what} differs:\n got: {got}\nwant: {want}"


async def check_user(
    http: httpx.AsyncClient,
    truth: UserWindowsTruth,
    tenant: str,
    user: str,
    *,
    headers: Mapping[str, str] | None = None,
    max_days: int = 400,
) -> None:
    """All-time, every day (the whole range, in requests of ``max_days``) and every month of
    one user, from the API, equal to the model."""
    base = f"/v1/users/{_q(user)}/usage"
    got = await _get_json(http, base, headers)
    want = truth.all_time(tenant, user)
    assert got == want, _diff(f"all-time usage of {tenant}/{user}", got, want)

    days = truth.days(tenant, user)
    first = date.fromisoformat(days[0]) - timedelta(days=3)
    last = date.fromisoformat(days[-1]) + timedelta(days=3)
    served: list[Any] = []
    start = first
    while start <= last:
        end = min(last, start + timedelta(days=max_days - 1))
        page = await _get_json(
            http, base + "/daily", headers, **{"from": start.isoformat(), "to": end.isoformat()}
        )
        assert set(page) == {"days"}, page.keys()
        served.extend(page["days"])
        start = end + timedelta(days=1)
    want_days = truth.daily(tenant, user, first, last)
    if served != want_days:
        assert [d.get("date") for d in served] == [d["date"] for d in want_days], (
            f"days with usage of {tenant}/{user}"
        )
        for g, w in zip(served, want_days, strict=True):
            assert g == w, _diff(f"day {w['date']} of {tenant}/{user}", g, w)
    # one day alone, and a range of a single day, answer the same figures
    one = want_days[len(want_days) // 2]
    page = await _get_json(
        http, base + "/daily", headers, **{"from": one["date"], "to": one["date"]}
    )
    assert page == {"days": [one]}, _diff(f"day {one['date']} alone", page, {"days": [one]})

    for period in [*truth.periods(tenant), "2021-01"]:
        got = await _get_json(http, f"{base}/monthly/{period}", headers)
        want = truth.monthly(tenant, user, period)
        by_agent_ok = same_by_agent(got.get("byAgent"), want["byAgent"])
        got_rest = {k: v for k, v in got.items() if k != "byAgent"}
        want_rest = {k: v for k, v in want.items() if k != "byAgent"}
        assert got_rest == want_rest and by_agent_ok and set(got) == set(want), _diff(
            f"month {period} of {tenant}/{user}", got, want
        )


async def check_user_hours(
    redis: aioredis.Redis, keys: Keys, truth: UserWindowsTruth, tenant: str, user: str
) -> None:
    """Every hourly window of the user, read from Redis (no HTTP route serves hours): the
    same set of hours as the model, each with the model's figures."""
    want = truth.hours(tenant, user)
    pattern = _glob_escape(keys.user_hour(tenant, user, "")) + "*"
    found = sorted([k async for k in redis.scan_iter(match=pattern, count=1000)])
    prefix = keys.user_hour(tenant, user, "")
    labels = sorted(_text_key(k)[len(prefix) :] for k in found)
    assert labels == sorted(want), f"hours of {tenant}/{user}: got {labels}, want {sorted(want)}"
    async with redis.pipeline(transaction=False) as pipe:
        for label in labels:
            pipe.hgetall(keys.user_hour(tenant, user, label))
        replies = await pipe.execute()
    for label, raw in zip(labels, replies, strict=True):
        fields = {_text_key(k): _text_key(v) for k, v in raw.items()}
        usage = WindowUsage.from_fields(fields)
        w = want[label]
        got = {
            "entryCount": usage.entry_count,
            "tokens": usage.tokens.to_wire(),
            "costUsd": usd(Decimal(usage.cost_pico).scaleb(-12)),
            "byModel": {
                m: {
                    "tokens": c.to_wire(),
                    "costUsd": usd(Decimal(usage.cost_by_model[m]).scaleb(-12)),
                }
                for m, c in sorted(usage.tokens_by_model.items())
            },
        }
        expected = {
            "entryCount": w.entry_count,
            "tokens": w.tokens,
            "costUsd": usd(w.cost),
            "byModel": w.by_model(),
        }
        assert got == expected, _diff(f"hour {label} of {tenant}/{user}", got, expected)


def _text_key(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


async def check_billing(
    http: httpx.AsyncClient,
    truth: UserWindowsTruth,
    tenant: str,
    period: str,
    *,
    limit: int,
    headers: Mapping[str, str] | None = None,
) -> None:
    """The period's billing list paged with ``limit`` (nextCursor null on the last page
    only) and in one page with the default limit: both equal to the model."""
    want = truth.billing(tenant, period)
    path = f"/v1/billing/{period}/users"
    pages: list[list[Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        page = await _get_json(http, path, headers, **params)
        assert set(page) == {"users", "nextCursor"}, page
        assert len(page["users"]) <= limit, page
        pages.append(page["users"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
        assert len(pages) <= len(want) + 1, f"{period}: paging does not end"
    rows = [row for p in pages for row in p]
    assert rows == want, _diff(f"billing list of {tenant} {period} (limit {limit})", rows, want)
    assert len(pages) == max(1, -(-len(want) // limit)), [len(p) for p in pages]
    whole = await _get_json(http, path, headers)
    assert whole == {"users": want, "nextCursor": None}, _diff(
        f"billing list of {tenant} {period}", whole, {"users": want, "nextCursor": None}
    )


def invoice_matches(got: Mapping[str, Any], want: InvoiceTruth) -> str | None:
    """None when the served invoice equals the model (lines compared by model; their
    amounts must also sum to ``amountUsd`` exactly); else what differs."""
    shape = {
        "invoiceId",
        "tenantId",
        "userId",
        "period",
        "amountUsd",
        "lines",
        "adjustmentUsd",
        "status",
        "generatedAt",
    }
    problems = []
    if set(got) != shape:
        problems.append(f"fields {sorted(got)}")
    lines = got.get("lines")
    if isinstance(lines, list):
        total = sum((Decimal(line["amountUsd"]) for line in lines), Decimal(0))
        if "amountUsd" in got and total != Decimal(got["amountUsd"]):
            problems.append(f"lines sum to {total}, amountUsd {got['amountUsd']}")
        lines = sorted(lines, key=lambda line: str(line.get("model")))
    comparable = {k: got.get(k) for k in want.wire()} | {"lines": lines}
    if comparable != want.wire():
        problems.append(_diff("invoice", comparable, want.wire()))
    if not isinstance(got.get("invoiceId"), str) or not got.get("invoiceId"):
        problems.append(f"invoiceId {got.get('invoiceId')!r}")
    if got.get("status") not in ("pending", "paid", "failed"):
        problems.append(f"status {got.get('status')!r}")
    if not isinstance(got.get("generatedAt"), int):
        problems.append(f"generatedAt {got.get('generatedAt')!r}")
    return "; ".join(problems) or None


async def check_invoices(
    http: httpx.AsyncClient,
    truth: UserWindowsTruth,
    tenant: str,
    period: str,
    *,
    headers: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The period's invoice list and each invoice by id equal the model; user -> invoice."""
    want = {inv.user: inv for inv in truth.period_invoices(tenant, period)}
    listed = (await _get_json(http, f"/v1/billing/{period}/invoices", headers))["invoices"]
    by_user: dict[str, dict[str, Any]] = {}
    for inv in listed:
        assert inv.get("userId") not in by_user, f"two invoices of {inv.get('userId')} {period}"
        by_user[inv.get("userId")] = inv
    assert sorted(by_user) == sorted(want), (
        f"invoiced users of {tenant} {period}: got {sorted(by_user)}, want {sorted(want)}"
    )
    ids = [inv["invoiceId"] for inv in listed]
    assert len(set(ids)) == len(ids), ids
    for user, inv in by_user.items():
        problem = invoice_matches(inv, want[user])
        assert problem is None, f"invoice of {tenant}/{user} {period}: {problem}"
        one = await _get_json(http, f"/v1/invoices/{_q(inv['invoiceId'])}", headers)
        assert one == inv, _diff(f"GET /v1/invoices/{inv['invoiceId']}", one, inv)
    return by_user
