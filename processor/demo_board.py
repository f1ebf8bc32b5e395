"""What `usage-stream demo` shows: figures read from the running system, drawn with rich.

Every figure comes from where an operator would read it: counters from the worker's
``/metrics``, rollups and users' windows from the HTTP API (with the demo tenant's key),
consumer lag from Kafka (end offsets against the ingest group's committed offsets), and
alerts from the notifications topic (``read_committed``, as an alerting consumer reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from processor.connections import kafka_options
from processor.consumer import ingest_group_id
from processor.settings import Settings

#: How many of the latest alerts are kept for the screen.
ALERTS_SHOWN = 6
#: Rows of the runs and users tables.
TOP_RUNS = 8
TOP_USERS = 5
#: The newest runs read each second; with the costliest seen so far and the runs of the
#: costliest users they are the candidates of the runs table (GET /v1/runs lists newest
#: first, there is no list by cost).
NEWEST_RUNS = 60
_TRACKED_RUNS = 40
_RUNS_PER_TOP_USER = 10

#: How long one sample may wait for the worker or Kafka before it shows what it has.
SAMPLE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class DemoInfo:
    """What stays the same for a whole demo: where things are, what it runs under."""

    tenant: str
    key_prefix: str
    api_url: str
    metrics_url: str
    key_file: str
    log_file: str
    rate: int
    users: int
    seconds: float

    @property
    def openapi_url(self) -> str:
        return f"{self.api_url}/v1/openapi.json"


@dataclass
class Published:
    """What the demo's fleet has published so far."""

    entries: int = 0
    resent: int = 0
    bad: int = 0


@dataclass
class Snapshot:
    elapsed: float
    published: Published
    in_rate: float | None = None
    applied_rate: float | None = None
    lag: int | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    users_month: list[tuple[str, str]] = field(default_factory=list)
    users_today: list[tuple[str, str]] = field(default_factory=list)
    alerts_total: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --- sources -------------------------------------------------------------------------


class AlertFeed:
    """The alerts on the notifications topic (CONTRACT §4), read with ``read_committed``
    (alerts are published in Kafka transactions) and no consumer group, from the start
    of the demo's own topic: every alert of this demo, and only those."""

    def __init__(self) -> None:
        self.latest: deque[dict[str, Any]] = deque(maxlen=ALERTS_SHOWN)
        self.total = 0
        self.by_rule: Counter[tuple[str, str]] = Counter()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, settings: Settings, timeout: float = 30.0) -> None:
        consumer = AIOKafkaConsumer(
            **kafka_options(settings),
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            topic = settings.topic_notifications
            assigned = await _partitions_of(consumer, topic, timeout)
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._consume(consumer))

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        async for message in consumer:
            try:
                alert = json.loads(message.value or b"")
            except ValueError:
                continue
            if isinstance(alert, dict):
                self.latest.append(alert)
                self.total += 1
                self.by_rule[(str(alert.get("rule")), str(alert.get("level")))] += 1

    def problem(self) -> str | None:
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            return f"the alerts consumer stopped: {task.exception()!r}"
        return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # a consumer that failed has said so on every redraw (problem())
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


async def _partitions_of(
    consumer: AIOKafkaConsumer, topic: str, timeout: float
) -> list[TopicPartition]:
    """The topic's partitions, once the broker's metadata lists them (a topic created a
    moment ago may not be in the first metadata answer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await consumer.topics()  # fetches the cluster's metadata
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if loop.time() > deadline:
            raise TimeoutError(f"topic {topic!r} has no partitions after {timeout:.0f} s")
        await asyncio.sleep(0.2)


class KafkaProbe:
    """End offsets of the entries topic and the ingest group's committed offsets."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._group = ingest_group_id(settings)
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._partitions: list[TopicPartition] = []

    async def start(self, timeout: float = 30.0) -> None:
        s = self._settings
        consumer = AIOKafkaConsumer(**kafka_options(s), enable_auto_commit=False)
        await consumer.start()
        admin = AIOKafkaAdminClient(**kafka_options(s), request_timeout_ms=5000)
        try:
            self._partitions = await _partitions_of(consumer, s.topic_entries, timeout)
            await admin.start()
        except BaseException:
            await consumer.stop()
            raise
        self._consumer, self._admin = consumer, admin

    async def offsets(self) -> tuple[int, int]:
        """(entries on the topic, of which not yet committed by the ingest group)."""
        assert self._consumer is not None and self._admin is not None
        ends = await self._consumer.end_offsets(self._partitions)
        committed = await self._admin.list_consumer_group_offsets(
            self._group, partitions=self._partitions
        )
        total = sum(ends.values())
        lag = 0
        for tp, end in ends.items():
            done = committed.get(tp)
            # -1: nothing committed yet; the demo's topics are new, so that is offset 0
            lag += end - max(done.offset if done is not None else 0, 0)
        return total, max(lag, 0)

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def parse_metrics(text: str) -> tuple[dict[str, int], dict[str, int]]:
    """(entries by outcome, dead letters by reason) from a /metrics page."""
    outcomes: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "usage_entries_total":
                outcomes[sample.labels.get("outcome", "?")] += int(sample.value)
            elif sample.name == "usage_dead_letters_total" and sample.value:
                dead[sample.labels.get("reason", "?")] += int(sample.value)
    return dict(outcomes), dict(sorted(dead.items()))


def _cost(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)


# --- sampling --------------------------------------------------------------------------


class Sampler:
    """Reads one snapshot a call; remembers what rates and the runs table need."""

    def __init__(
        self,
        info: DemoInfo,
        http: aiohttp.ClientSession,
        probe: KafkaProbe,
        alerts: AlertFeed,
        published: Published,
    ) -> None:
        self.info = info
        self._http = http
        self._probe = probe
        self._alerts = alerts
        self._published = published
        self._last: tuple[float, int, int] | None = None  # (time, on the topic, finished)
        self._tracked: dict[str, Decimal] = {}  # the costliest runs seen: run id -> cost

    async def sample(self, elapsed: float, now: float) -> Snapshot:
        snap = Snapshot(elapsed=elapsed, published=self._published)
        metrics, offsets, users = await asyncio.gather(
            self._guard(snap, "worker /metrics", self._metrics()),
            self._guard(snap, "Kafka offsets", self._probe.offsets()),
            self._guard(snap, "users", self._users()),
        )
        if metrics is not None:
            snap.outcomes, snap.dead_letters = metrics
        if users is not None:
            snap.users_month, snap.users_today = users
        runs = await self._guard(snap, "runs", self._runs(snap.users_month))
        if runs is not None:
            snap.runs = runs
        if offsets is not None:
            on_topic, snap.lag = offsets
            finished = sum(snap.outcomes.values())
            if self._last is not None and metrics is not None and now > self._last[0]:
                dt = now - self._last[0]
                snap.in_rate = (on_topic - self._last[1]) / dt
                snap.applied_rate = (finished - self._last[2]) / dt
            if metrics is not None:
                self._last = (now, on_topic, finished)
        snap.alerts_total = self._alerts.total
        snap.alerts = list(self._alerts.latest)
        problem = self._alerts.problem()
        if problem:
            snap.problems.append(problem)
        return snap

    @staticmethod
    async def _guard(snap: Snapshot, what: str, aw: Any) -> Any:
        """The figure, or None and a line saying why (the worker stopping, Kafka away):
        the screen keeps going with what it could read."""
        try:
            return await asyncio.wait_for(aw, SAMPLE_TIMEOUT_S)
        except Exception as exc:  # HTTP, Kafka, a timeout: show it, go on
            snap.problems.append(f"{what}: {exc!r}")
            return None

    async def _get(self, path: str, **params: Any) -> Any:
        async with self._http.get(self.info.api_url + path, params=params) as reply:
            if reply.status == 404:
                return None
            reply.raise_for_status()
            return await reply.json()

    async def _metrics(self) -> tuple[dict[str, int], dict[str, int]]:
        async with self._http.get(self.info.metrics_url) as reply:
            reply.raise_for_status()
            return parse_metrics(await reply.text())

    async def _users(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The costliest users of this UTC month (the billing list) and of today (each
        user's daily window): reads of window counters, never of entries."""
        today = datetime.now(UTC).date()
        period = f"{today.year:04d}-{today.month:02d}"
        month = (await self._get(f"/v1/billing/{period}/users", limit=1000) or {}).get("users", [])
        days = await asyncio.gather(
            *(
                self._get(
                    f"/v1/users/{quote(u['userId'], safe='')}/usage/daily",
                    **{"from": today.isoformat(), "to": today.isoformat()},
                )
                for u in month
            )
        )
        today_cost: list[tuple[str, str]] = []
        for u, d in zip(month, days, strict=True):
            rows = (d or {}).get("days", [])
            today_cost.append((u["userId"], rows[0]["costUsd"] if rows else "0"))
        by_month = sorted(
            ((u["userId"], u["costUsd"]) for u in month), key=lambda u: _cost(u[1]), reverse=True
        )
        by_today = sorted(today_cost, key=lambda u: _cost(u[1]), reverse=True)
        return by_month[:TOP_USERS], by_today[:TOP_USERS]

    async def _runs(self, top_users: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The costliest runs (cost including sub-agents) among the newest, those of the
        costliest users, the runs named by alerts and the costliest seen before."""
        lists = await asyncio.gather(
            self._get("/v1/runs", limit=NEWEST_RUNS),
            *(
                self._get("/v1/runs", userId=user, limit=_RUNS_PER_TOP_USER)
                for user, _ in top_users[:3]
            ),
        )
        candidates = dict.fromkeys(self._tracked)
        for listed in lists:
            candidates.update(dict.fromkeys((listed or {}).get("runIds", [])))
        for alert in self._alerts.latest:
            subject = alert.get("subject")
            if isinstance(subject, dict) and subject.get("type") == "run":
                candidates[str(subject.get("id"))] = None
        rollups = await asyncio.gather(
            *(self._get(f"/v1/runs/{quote(run_id, safe='')}/rollup") for run_id in candidates)
        )
        found = [r for r in rollups if r is not None]
        found.sort(key=lambda r: _cost(r.get("costIncludingSubAgentsUsd")), reverse=True)
        self._tracked = {
            r["runId"]: _cost(r.get("costIncludingSubAgentsUsd")) for r in found[:_TRACKED_RUNS]
        }
        return found[:TOP_RUNS]


# --- drawing ---------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{max(value, 0):,.0f}/s"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _money(amount: Any) -> str:
    """Two decimals for the screen (the API keeps the exact value)."""
    return f"{_cost(amount):,.2f}"


def dead_letters_text(dead: dict[str, int]) -> str:
    return " ".join(f"{reason}={n}" for reason, n in dead.items()) or "none"


def alert_fields(a: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """(time UTC, level, rule, subject, observed / threshold) of an alert."""
    at = a.get("triggeredAt")
    when = (
        datetime.fromtimestamp(at / 1000, UTC).strftime("%H:%M:%S") if isinstance(at, int) else "-"
    )
    subject = a.get("subject")
    who = f"{subject.get('type')} {subject.get('id')}" if isinstance(subject, dict) else "?"
    metric = str(a.get("metric", ""))
    observed, threshold = a.get("observed", "?"), a.get("threshold", "?")
    if metric == "costUsd":
        measure = f"${_money(observed)} / ${_money(threshold)}"
    else:
        measure = f"{observed} / {threshold} {metric}"
    return when, str(a.get("level", "?")), str(a.get("rule", "?")), who, measure


def summary_line(s: Snapshot) -> str:
    """The --headless line: one a second, every figure on it."""
    o = s.outcomes
    line = (
        f"[{s.elapsed:5.0f}s] in {_rate(s.in_rate)} applied {_rate(s.applied_rate)} "
        f"lag {_int(s.lag)} | published {s.published.entries} | "
        f"accepted {o.get('accepted', 0)} duplicate {o.get('duplicate', 0)} "
        f"rejected {o.get('rejected', 0)} | dead letters {dead_letters_text(s.dead_letters)} | "
        f"alerts {s.alerts_total}"
    )
    if s.runs:
        top = s.runs[0]
        line += f" | top run {top['runId']} ${_money(top.get('costIncludingSubAgentsUsd'))}"
    if s.problems:
        line += " | " + "; ".join(s.problems)
    return line


def render(s: Snapshot, info: DemoInfo) -> RenderableType:
    """The whole screen, redrawn in place each second."""
    until = f" of {info.seconds:.0f} s" if info.seconds else ""
    head = Text.assemble(
        ("usage-stream demo", "bold"),
        f"  {s.elapsed:.0f} s{until}  ·  tenant {info.tenant}  ·  key prefix {info.key_prefix}"
        f"  ·  fleet of {info.users} users at {info.rate} entries/s  ·  Ctrl-C stops",
    )
    urls = Text.assemble(
        ("API ", "dim"),
        f"{info.api_url}/v1   ",
        ("metrics ", "dim"),
        f"{info.metrics_url}   ",
        ("OpenAPI ", "dim"),
        info.openapi_url,
    )
    auth = Text(
        f'/v1 needs the demo\'s key: curl -H "Authorization: Bearer $(cat {info.key_file})" '
        f"{info.api_url}/v1/runs   ·  log {info.log_file}",
        style="dim",
    )

    o = s.outcomes
    p = s.published
    flow = _figures(
        ("in", _rate(s.in_rate)),
        ("applied", _rate(s.applied_rate)),
        ("consumer lag", _int(s.lag)),
        ("published", f"{p.entries:,} ({p.resent:,} re-sent, {p.bad:,} bad)"),
    )
    outcomes = _figures(
        ("accepted", f"{o.get('accepted', 0):,}"),
        ("duplicate", f"{o.get('duplicate', 0):,}"),
        ("rejected", f"{o.get('rejected', 0):,}"),
        ("dead letters", dead_letters_text(s.dead_letters)),
        ("alerts", f"{s.alerts_total:,}"),
    )

    # the namespace's prefix is on every id of the demo: the tables leave it out
    short = _Shortener(f"{info.key_prefix}-")
    runs = Table(
        title=f"top runs by cost (ids after {short.prefix}; * including sub-agent runs)",
        title_justify="left",
        expand=True,
    )
    for title, justify in (
        ("run", "left"),
        ("agent", "left"),
        ("user", "left"),
        ("entries", "right"),
        ("tokens*", "right"),
        ("cost USD", "right"),
        ("cost* USD", "right"),
        ("tools ok/fail", "right"),
    ):
        runs.add_column(title, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in s.runs:
        tools = r.get("toolStats", {})
        runs.add_row(
            short(r.get("runId")),
            str(r.get("agentName") or "-"),
            short(r.get("userId")),
            f"{r.get('entryCount', 0):,}",
            f"{r.get('tokensIncludingSubAgents', {}).get('total', 0):,}",
            _money(r.get("costUsd")),
            _money(r.get("costIncludingSubAgentsUsd")),
            f"{tools.get('successfulCalls', 0)}/{tools.get('failedCalls', 0)}",
        )

    users = Table.grid(padding=(0, 4), expand=True)
    users.add_column()
    users.add_column()
    users.add_row(
        _users_table("top users this month", s.users_month, short),
        _users_table("top users today (UTC)", s.users_today, short),
    )

    alerts = Table(
        title=f"latest alerts on the notifications topic ({s.alerts_total} so far, newest last)",
        title_justify="left",
        expand=True,
    )
    for title in ("time UTC", "level", "rule", "subject", "observed / threshold"):
        alerts.add_column(title, no_wrap=True)
    for a in s.alerts:
        when, level, rule, who, measure = alert_fields(a)
        style = "bold red" if level == "critical" else "yellow"
        alerts.add_row(when, Text(level, style=style), rule, who.replace(short.prefix, ""), measure)

    parts: list[RenderableType] = [head, urls, auth, Text(""), flow, outcomes, runs, users, alerts]
    if s.problems:
        parts.append(Text("; ".join(s.problems), style="red"))
    return Group(*parts)


def _users_table(title: str, rows: list[tuple[str, str]], short: _Shortener) -> Table:
    table = Table(title=title, title_justify="left", expand=True)
    table.add_column("user", no_wrap=True)
    table.add_column("cost USD", justify="right")
    for user, cost in rows:
        table.add_row(short(user), _money(cost))
    return table


def _figures(*pairs: tuple[str, str]) -> Text:
    """One line of ``label value`` pairs."""
    line = Text()
    for label, value in pairs:
        line.append(f"{label} ", style="dim")
        line.append(value, style="bold")
        line.append("    ")
    return line


class _Shortener:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, value: Any) -> str:
        text = str(value)
        return text[len(self.prefix) :] if text.startswith(self.prefix) else text
