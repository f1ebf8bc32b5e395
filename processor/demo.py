"""`usage-stream demo`: the local stack, a worker, a simulated fleet, live rollups.

Everything is real: the fleet publishes to Kafka, the worker consumes into Redis, and the
screen is drawn from the worker's HTTP API, the same one dashboards use. The fleet includes a
runaway agent (a run tree that keeps spending tokens) and a big spender (a user whose daily
cost soars); the alerts they trigger are read from the notifications topic, as an alerting
consumer would (committed transactions only), and listed under the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
import time
from collections import deque
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from processor.local_worker import LocalWorker
from processor.settings import Settings
from processor.simulate import Fleet, encode
from processor.stack.connect import with_local_stack
from processor.topics import ensure_topics

_ENTRIES_RE = re.compile(r'^usage_entries_total\{kind="(\w+)",outcome="(\w+)"\} (\S+)$', re.M)
_DLQ_RE = re.compile(r'^usage_dead_letters_total\{reason="(\w+)"\} (\S+)$', re.M)
#: How many of the latest alerts the screen lists.
_ALERTS_SHOWN = 8

# What a careless producer sends now and then: each lands on the DLQ with its reason.
_BAD_INPUT: list[bytes] = [
    b'{"id": "oops", "kind": "tokens"',  # truncated JSON
    b'{"id": "x1", "kind": "tokens", "runId": "r", "userId": "u", "timestamp": 1700000000000,'
    b' "model": "gpt-4o", "tokens": {"prompt": 10, "completion": 5, "reasoning": 9}}',
    b'{"id": "x2", "kind": "tool", "runId": "r", "userId": "u", "timestamp": 1700000000000,'
    b' "toolName": "search", "durationMs": 5, "success": true, "tokenz": 1}',
]


def run_demo(settings: Settings, *, seconds: float = 0, rate: int = 200) -> int:
    print("usage-stream demo: starting the local stack (Kafka KRaft + Redis) ...", flush=True)
    settings = with_local_stack(settings)
    asyncio.run(ensure_topics(settings))
    worker = LocalWorker(settings, Path(settings.stack_dir) / "demo-worker.log")
    print(f"starting a worker (log: {worker.log_path}) ...", flush=True)
    worker.start()
    try:
        worker.wait_ready()
        print(f"worker ready: API {worker.url}/v1, metrics {worker.url}/metrics\n", flush=True)
        asyncio.run(_drive(settings, worker.url, seconds=seconds, rate=rate))
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping the worker; the stack keeps running (usage-stream stack down)")
        worker.stop()
    return 0


async def _drive(settings: Settings, api: str, *, seconds: float, rate: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if seconds:
        loop.call_later(seconds, stop.set)
    alerts = _Alerts()
    await alerts.start(settings)  # before the fleet: every alert of this demo is seen
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    try:
        await producer.start()
    except BaseException:
        await alerts.stop()
        raise
    fleet = Fleet(
        seed=int(time.time()), run_prefix=f"demo-{int(time.time()) % 100000}", runaway=True
    )
    sent: dict[str, int] = {"entries": 0, "resent": 0, "bad": 0}
    started = time.monotonic()

    async def publish() -> None:
        tick = 0
        while not stop.is_set():
            await _publish_tick(settings, producer, fleet, rate, sent)
            tick += 1
            delay = started + tick / 10 - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)

    publisher = asyncio.create_task(publish())
    try:
        async with httpx.AsyncClient(base_url=api, timeout=5) as http:
            while not stop.is_set():
                await _screen(http, sent, time.monotonic() - started, alerts)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2)
            await publisher
            await producer.flush()
            await _screen(http, sent, time.monotonic() - started, alerts)
    finally:
        publisher.cancel()
        await producer.stop()
        await alerts.stop()


class _Alerts:
    """The alerts on the notifications topic since the demo started (CONTRACT §4), read with
    ``read_committed`` (alerts are published in Kafka transactions) and no consumer group."""

    def __init__(self) -> None:
        self.latest: deque[dict[str, Any]] = deque(maxlen=_ALERTS_SHOWN)
        self.total = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, settings: Settings) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            topic = settings.topic_notifications
            await consumer.topics()  # fetches the cluster's metadata
            partitions = consumer.partitions_for_topic(topic) or set()
            assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_end(*assigned)
            for tp in assigned:  # resolve the positions now, before the fleet publishes
                await consumer.position(tp)
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

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # a consumer that failed has said so on every redraw (lines())
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def lines(self) -> list[str]:
        head = f"alerts on the notifications topic: {self.total}"
        if self.latest:
            head += f" (the latest {len(self.latest)}, newest last)"
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            head += f"; the consumer stopped: {task.exception()!r}"
        lines = [head]
        if self.latest:
            lines.append(
                f"{'time UTC':<8}  {'level':<8} {'rule':<24} {'subject':<30} observed / threshold"
            )
        for a in self.latest:
            lines.append(_alert_row(a))
        return lines


def _alert_row(a: dict[str, Any]) -> str:
    at = a.get("triggeredAt")
    when = (
        datetime.fromtimestamp(at / 1000, UTC).strftime("%H:%M:%S") if isinstance(at, int) else "-"
    )
    subject = a.get("subject")
    who = f"{subject.get('type')} {subject.get('id')}" if isinstance(subject, dict) else "?"
    metric = str(a.get("metric", ""))
    observed, threshold = str(a.get("observed", "?")), str(a.get("threshold", "?"))
    if metric == "costUsd":
        measure = f"${_short(observed)} / ${_short(threshold)}"
    else:
        measure = f"{observed} / {threshold} {metric}"
    return f"{when:<8}  {a.get('level', '?')!s:<8} {a.get('rule', '?')!s:<24} {who:<30} {measure}"


def _short(amount: str) -> str:
    """A decimal string with two decimals for the screen (the topic keeps the exact value)."""
    try:
        return f"{Decimal(amount):.2f}"
    except ArithmeticError:
        return amount


async def _publish_tick(
    settings: Settings,
    producer: AIOKafkaProducer,
    fleet: Fleet,
    rate: int,
    sent: dict[str, int],
) -> None:
    """One tenth of a second of the fleet's traffic, with re-sends and the odd bad entry."""
    batch: list[tuple[bytes, bytes]] = []
    for entry in fleet.entries(max(1, rate // 10)):
        entry["timestamp"] = time.time_ns() // 1_000_000
        batch.append(encode(entry))
    if random.random() < 0.3:
        batch.append(random.choice(batch))  # a producer retry: same id, changes nothing
        sent["resent"] += 1
    if random.random() < 0.05:
        batch.append((b"bad-producer", random.choice(_BAD_INPUT)))
        sent["bad"] += 1
    for key, value in batch:
        await producer.send(settings.topic_entries, value, key=key)
    sent["entries"] += len(batch)


async def _screen(
    http: httpx.AsyncClient, sent: dict[str, int], elapsed: float, alerts: _Alerts
) -> None:
    metrics = (await http.get("/metrics")).text
    outcomes: dict[str, float] = {}
    for _kind, outcome, value in _ENTRIES_RE.findall(metrics):
        outcomes[outcome] = outcomes.get(outcome, 0) + float(value)
    dead = {reason: float(v) for reason, v in _DLQ_RE.findall(metrics) if float(v)}
    runs = (await http.get("/v1/runs", params={"limit": 60})).json()["runIds"]
    replies = await asyncio.gather(*(http.get(f"/v1/runs/{run_id}/rollup") for run_id in runs))
    rollups = [r.json() for r in replies if r.status_code == 200]
    top = sorted(rollups, key=lambda r: Decimal(r["costIncludingSubAgentsUsd"]), reverse=True)[:8]
    lines = [
        f"--- {elapsed:5.0f}s  published {sent['entries']} "
        f"(incl. {sent['resent']} re-sends, {sent['bad']} bad) | "
        f"accepted {outcomes.get('accepted', 0):.0f}  duplicate {outcomes.get('duplicate', 0):.0f}"
        f"  rejected {outcomes.get('rejected', 0):.0f}  dead letters {json.dumps(dead)}",
        f"{'run':<22} {'agent':<12} {'user':<22} {'entries':>7} {'tokens':>9} "
        f"{'cost USD':>12} {'+sub-agents':>12} {'tools ok/fail':>13}",
        "(the 8 costliest of the 60 newest runs; tokens and cost include sub-agent runs)",
    ]
    for r in top:
        lines.append(_row(r))
    lines += await _top_users(http)
    lines += alerts.lines()
    print("\n".join(lines), flush=True)


async def _top_users(http: httpx.AsyncClient, n: int = 5) -> list[str]:
    """The costliest users of this UTC month and of today (from the billing list and each
    user's daily window: reads of window counters, never of entries)."""
    today = datetime.now(UTC).date()
    period = f"{today.year:04d}-{today.month:02d}"
    reply = await http.get(f"/v1/billing/{period}/users", params={"limit": 1000})
    if reply.status_code != 200:
        return []
    month = reply.json()["users"]
    days = await asyncio.gather(
        *(
            http.get(
                f"/v1/users/{quote(u['userId'], safe='')}/usage/daily",
                params={"from": today.isoformat(), "to": today.isoformat()},
            )
            for u in month
        )
    )
    today_cost = {}
    for u, d in zip(month, days, strict=True):
        rows = d.json().get("days", []) if d.status_code == 200 else []
        today_cost[u["userId"]] = rows[0]["costUsd"] if rows else "0"
    by_month = sorted(month, key=lambda u: Decimal(u["costUsd"]), reverse=True)[:n]
    by_today = sorted(today_cost.items(), key=lambda kv: Decimal(kv[1]), reverse=True)[:n]
    lines = [
        f"{'top users this month':<34} {'cost USD':>14}   {'top users today':<22} {'cost USD':>14}"
    ]
    for i in range(max(len(by_month), len(by_today))):
        left = (
            f"{by_month[i]['userId']:<34} {by_month[i]['costUsd']:>14}"
            if i < len(by_month)
            else " " * 49
        )
        right = f"{by_today[i][0]:<22} {by_today[i][1]:>14}" if i < len(by_today) else ""
        lines.append(f"{left}   {right}")
    return lines


def _row(r: dict[str, Any]) -> str:
    tools = r["toolStats"]
    return (
        f"{r['runId']:<22} {(r['agentName'] or '-'):<12} {r['userId']:<22} "
        f"{r['entryCount']:>7} {r['tokensIncludingSubAgents']['total']:>9} "
        f"{r['costUsd']:>12} {r['costIncludingSubAgentsUsd']:>12} "
        f"{tools['successfulCalls']:>6}/{tools['failedCalls']:<6}"
    )
