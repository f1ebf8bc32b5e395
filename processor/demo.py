"""`usage-stream demo`: the local stack, a worker, a simulated fleet, live rollups.

Everything is real: the fleet publishes to Kafka, the worker consumes into Redis, and the
screen is drawn from the worker's HTTP API, the same one dashboards use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from aiokafka import AIOKafkaProducer

from processor.local_worker import LocalWorker
from processor.settings import Settings
from processor.simulate import Fleet, encode
from processor.stack.connect import with_local_stack
from processor.topics import ensure_topics

_ENTRIES_RE = re.compile(r'^usage_entries_total\{kind="(\w+)",outcome="(\w+)"\} (\S+)$', re.M)
_DLQ_RE = re.compile(r'^usage_dead_letters_total\{reason="(\w+)"\} (\S+)$', re.M)

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
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    fleet = Fleet(seed=int(time.time()), run_prefix=f"demo-{int(time.time()) % 100000}")
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
                await _screen(http, sent, time.monotonic() - started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2)
            await publisher
            await producer.flush()
            await _screen(http, sent, time.monotonic() - started)
    finally:
        publisher.cancel()
        await producer.stop()


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


async def _screen(http: httpx.AsyncClient, sent: dict[str, int], elapsed: float) -> None:
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
        f"{'run':<22} {'agent':<12} {'user':<9} {'entries':>7} {'tokens':>9} "
        f"{'cost USD':>12} {'+sub-agents':>12} {'tools ok/fail':>13}",
        "(the 8 costliest of the 60 newest runs; tokens and cost include sub-agent runs)",
    ]
    for r in top:
        lines.append(_row(r))
    lines += await _top_users(http)
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
        f"{'top users this month':<34} {'cost USD':>14}   {'top users today':<20} {'cost USD':>14}"
    ]
    for i in range(max(len(by_month), len(by_today))):
        left = (
            f"{by_month[i]['userId']:<34} {by_month[i]['costUsd']:>14}"
            if i < len(by_month)
            else " " * 49
        )
        right = f"{by_today[i][0]:<20} {by_today[i][1]:>14}" if i < len(by_today) else ""
        lines.append(f"{left}   {right}")
    return lines


def _row(r: dict[str, Any]) -> str:
    tools = r["toolStats"]
    return (
        f"{r['runId']:<22} {(r['agentName'] or '-'):<12} {r['userId']:<9} "
        f"{r['entryCount']:>7} {r['tokensIncludingSubAgents']['total']:>9} "
        f"{r['costUsd']:>12} {r['costIncludingSubAgentsUsd']:>12} "
        f"{tools['successfulCalls']:>6}/{tools['failedCalls']:<6}"
    )
