"""`usage-stream bench`: the full pipeline against the raw aiokafka ceiling, same run.

1. Produce N simulated entries (all four kinds, ~200 runs active at a time) to a fresh
   topic.
2. Raw ceiling: a plain aiokafka consumer reads them and decodes JSON into a dict.
3. Pipeline: a real worker process, with the default alert rules, consumes the same
   entries into Redis rollups; the rate counts entries fully applied (from the worker's own
   counters). The workload's run trees cross the default run token budget thousands of
   times; the alerts fired are counted.
4. Latency: a fixed offered load; probe entries open runs of their own, and the time from
   produce to the run's rollup being readable in Redis is recorded.
5. Alert latency: the worker restarted with a rules file (a user ``hour`` ``tokens`` rule,
   warning 1,000, critical 2,000); at the same offered load, entries of many fresh users,
   each crossing both thresholds within a few entries; a ``read_committed`` consumer of
   the notifications topic records, per alert, the time from producing the entry named by
   its ``entryId`` to consuming the alert. A warm-up user's alerts are awaited first, so
   the figure is the steady state, not the relay's start (its transactional producer and
   the leadership it waits for).
6. Entries pages: one run of 100,000 entries (written through the real apply path), and
   the time of ``GET /v1/runs/{runId}/entries`` at random offsets over the worker's API.
Absolute rates vary run to run on shared machines; the ratio is the figure to quote.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from processor.connections import kafka_options, redis_client
from processor.domain.accept import accept_entry
from processor.domain.fold import AcceptedEntry
from processor.domain.pricing import load_catalog
from processor.local_worker import LocalWorker
from processor.settings import Settings
from processor.simulate import Fleet, encode
from processor.stack.connect import with_local_stack
from processor.stack.ports import pick_port
from processor.stack.settings import StackSettings
from processor.store.keys import Keys
from processor.store.runs import RunStore
from processor.topics import ensure_topics, namespaced
from schemas.entry import parse_entry

#: Entries of the one run whose entries pages are timed.
_BIG_RUN = 100_000
#: The alert step's rule: each user's tokens in the current UTC hour.
_ALERT_RULE = "bench-user-hour-tokens"
_ALERT_RULES_YAML = f"""\
rules:
  - name: {_ALERT_RULE}
    subject: user
    window: hour
    metric: tokens
    thresholds: {{warning: "1000", critical: "2000"}}
"""
#: Entries per user in the alert step (500 tokens each: warning at the 2nd, critical at the
#: 4th), and users written to at a time (interleaved, as concurrent agents would be).
_ALERT_USER_ENTRIES = 5
_ALERT_ACTIVE_USERS = 200


async def _produce(settings: Settings, messages: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(
        **kafka_options(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(settings.topic_entries, v, key=k) for k, v in messages]
        await asyncio.gather(*futures)
        return time.perf_counter() - t0
    finally:
        await producer.stop()


async def _raw_ceiling(settings: Settings, n: int) -> float:
    """Entries/s of a plain consumer that only decodes JSON and counts per run."""
    consumer = AIOKafkaConsumer(
        settings.topic_entries,
        **kafka_options(settings),
        group_id=f"{settings.app_id}.raw",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        per_run: dict[str, int] = {}
        seen = 0
        t0: float | None = None
        while seen < n:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for msgs in batches.values():
                if t0 is None:
                    t0 = time.perf_counter()
                for m in msgs:
                    entry = json.loads(m.value)
                    per_run[entry["runId"]] = per_run.get(entry["runId"], 0) + 1
                    seen += 1
        assert t0 is not None
        return n / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


async def _pipeline_rate(settings: Settings, n: int, timeout: float) -> float:
    """Entries/s from the first applied batch to the last, from the applied counter.

    Polls Redis, not /metrics: rendering the metrics page every few milliseconds would
    take the worker's CPU away from the work being measured.
    """
    redis = redis_client(settings)
    try:
        return await _poll_applied(redis, Keys(settings.key_prefix).stats(), n, timeout)
    finally:
        await redis.aclose()


async def _poll_applied(redis: Redis, stats_key: str, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    first: tuple[float, int] | None = None
    while time.monotonic() < deadline:
        counted = int(await redis.hget(stats_key, "applied") or 0)  # type: ignore[misc]
        now = time.perf_counter()
        if counted > 0 and first is None:
            first = (now, counted)
        if counted >= n and first is not None:
            if now == first[0]:
                raise RuntimeError("the whole run fitted in one poll; raise --entries")
            return (counted - first[1]) / (now - first[0])
        await asyncio.sleep(0.01)
    raise TimeoutError(f"pipeline did not count {n} entries within {timeout}s")


async def _latency(
    settings: Settings, rate: int, seconds: float, probe_every: int = 10
) -> list[float]:
    """Produce-to-visible latencies (s) of probe entries at a fixed offered load."""
    keys = Keys(settings.key_prefix)
    redis = redis_client(settings, decode_responses=True)
    producer = AIOKafkaProducer(
        **kafka_options(settings), acks="all", enable_idempotence=True, linger_ms=2
    )
    await producer.start()
    fleet = Fleet(seed=11, run_prefix=f"lat-{uuid.uuid4().hex[:6]}", start_ms=_now_ms() - 60_000)
    pending: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def poll() -> None:
        while not (done.is_set() and not pending):
            if pending:
                probes = list(pending)
                async with redis.pipeline(transaction=False) as pipe:
                    for run_id in probes:
                        pipe.exists(keys.run("default", run_id))
                    found = await pipe.execute()
                now = time.perf_counter()
                for run_id, exists in zip(probes, found, strict=True):
                    if exists:
                        latencies.append(now - pending.pop(run_id))
            await asyncio.sleep(0.005)

    poller = asyncio.create_task(poll())
    try:
        total = int(rate * seconds)
        entries = fleet.entries(total)
        t0 = time.perf_counter()
        for i, entry in enumerate(entries):
            target = t0 + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the offered load, not synchronisation
            entry["timestamp"] = _now_ms()
            if i % probe_every == 0:
                entry = dict(entry, runId=f"probe-{uuid.uuid4().hex}", id=uuid.uuid4().hex)
                entry.pop("parentRunId", None)
                if entry["kind"] == "subagent":
                    entry.update(kind="custom", type="probe", name="probe", value=1)
                    for f in ("subAgentType", "subAgentRunId", "durationMs", "success"):
                        entry.pop(f, None)
            key, value = encode(entry)
            sent_at = time.perf_counter()
            await producer.send(settings.topic_entries, value, key=key)
            if i % probe_every == 0:
                pending[entry["runId"]] = sent_at
        await producer.flush()
        done.set()
        await asyncio.wait_for(poller, timeout=60)
    finally:
        poller.cancel()
        await producer.stop()
        await redis.aclose()
    return latencies


async def _alert_latency(
    settings: Settings, rate: int, seconds: float
) -> tuple[list[float], list[float], int]:
    """Produce-to-consumed latencies (s) of the alerts of fresh users at a fixed offered
    load; of those, the part from the relay's send (the alert's Kafka timestamp) to the
    consumer; and the number of alerts expected (two per user, warning and critical)."""
    consumer = AIOKafkaConsumer(
        settings.topic_notifications,
        **kafka_options(settings),
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(
        **kafka_options(settings), acks="all", enable_idempotence=True, linger_ms=2
    )
    await consumer.start()
    await producer.start()
    prefix = f"alert-{uuid.uuid4().hex[:6]}"
    sent: dict[str, float] = {}  # entry id -> produce time
    seen: set[str] = set()
    latencies: list[float] = []
    from_send: list[float] = []
    users = int(rate * seconds) // _ALERT_USER_ENTRIES
    expected = 2 * users
    last_alert = time.monotonic()
    produced = asyncio.Event()

    async def consume() -> None:
        nonlocal last_alert
        while len(latencies) < expected:
            batches = await consumer.getmany(timeout_ms=100)
            now, wall_ms = time.perf_counter(), time.time() * 1000
            for msgs in batches.values():
                for m in msgs:
                    alert = json.loads(m.value)
                    if alert["rule"] != _ALERT_RULE or alert["entryId"] not in sent:
                        continue
                    if alert["alertId"] in seen:
                        raise RuntimeError(f"alert {alert['alertId']} published twice")
                    seen.add(alert["alertId"])
                    latencies.append(now - sent[alert["entryId"]])
                    from_send.append(max(0.0, wall_ms - m.timestamp) / 1000)
                    last_alert = time.monotonic()
            if produced.is_set() and time.monotonic() - last_alert > 10:
                return  # nothing new for 10 s after the last entry: report what came

    await _warm_up_alerts(settings, producer, consumer, f"{prefix}-warm-up")
    consumer_task = asyncio.create_task(consume())
    try:
        t0 = time.perf_counter()
        for i in range(users * _ALERT_USER_ENTRIES):
            group, within = divmod(i, _ALERT_ACTIVE_USERS * _ALERT_USER_ENTRIES)
            nth, slot = divmod(within, _ALERT_ACTIVE_USERS)
            user = f"{prefix}-{group * _ALERT_ACTIVE_USERS + slot:06d}"
            target = t0 + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the offered load, not synchronisation
            entry: dict[str, Any] = {"id": f"{user}-{nth}", "runId": f"{user}-run",
                                     "userId": user, "timestamp": _now_ms(), "kind": "tokens",
                                     "model": "gpt-4o-mini",
                                     "tokens": {"prompt": 400, "completion": 100}}  # fmt: skip
            key, value = encode(entry)
            sent[entry["id"]] = time.perf_counter()
            await producer.send(settings.topic_entries, value, key=key)
        await producer.flush()
        last_alert = time.monotonic()
        produced.set()
        await asyncio.wait_for(consumer_task, timeout=120)
    finally:
        consumer_task.cancel()
        await producer.stop()
        await consumer.stop()
    return latencies, from_send, expected


async def _warm_up_alerts(
    settings: Settings, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, user: str
) -> None:
    """Cross the alert rule for one user and wait until its alert is consumed."""
    for nth in range(_ALERT_USER_ENTRIES):
        entry: dict[str, Any] = {"id": f"{user}-{nth}", "runId": f"{user}-run", "userId": user,
                                 "timestamp": _now_ms(), "kind": "tokens", "model": "gpt-4o-mini",
                                 "tokens": {"prompt": 400, "completion": 100}}  # fmt: skip
        key, value = encode(entry)
        await producer.send(settings.topic_entries, value, key=key)
    await producer.flush()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=200)
        for msgs in batches.values():
            for m in msgs:
                if json.loads(m.value)["subject"]["id"] == user:
                    return
    raise TimeoutError("the warm-up alert was not consumed within 120 s")


async def _alerts_fired(settings: Settings) -> dict[str, int]:
    """Alerts recorded per rule (the default tenant's index)."""
    redis = redis_client(settings, decode_responses=True)
    keys = Keys(settings.key_prefix)
    try:
        ids = await redis.zrange(keys.alerts("default"), 0, -1)
        counts: dict[str, int] = {}
        for i in range(0, len(ids), 1000):
            texts = await redis.mget([keys.alert("default", a) for a in ids[i : i + 1000]])
            for text in texts:
                if text is not None:
                    rule = json.loads(text)["rule"]
                    counts[rule] = counts.get(rule, 0) + 1
        return counts
    finally:
        await redis.aclose()


async def _write_big_run(settings: Settings, run_id: str, n: int) -> None:
    """``n`` entries of one run through the real validate, price and apply path."""
    redis = redis_client(settings, decode_responses=True)
    store = RunStore(
        redis,
        Keys(settings.key_prefix),
        dedup_ttl_s=settings.dedup_retention_seconds,
        entry_ttl_s=settings.entry_retention_seconds,
    )
    catalog = load_catalog(settings.prices_file)
    now = _now_ms()
    fleet = Fleet(seed=5, run_prefix=run_id, start_ms=now - n)
    try:
        batch: list[AcceptedEntry] = []
        for i, entry in enumerate(fleet.entries(n)):
            entry.pop("parentRunId", None)
            if entry["kind"] == "subagent":  # no children: the tree is not measured here
                entry.update(kind="custom", type="probe", name="probe", value=1)
                for f in ("subAgentType", "subAgentRunId", "durationMs", "success"):
                    entry.pop(f, None)
            # one run, timestamps in pairs: ties ordered by id, as the contract says
            entry.update(runId=run_id, id=f"{run_id}-{i:06d}", timestamp=now - n + i // 2)
            _, raw = encode(entry)
            batch.append(accept_entry(parse_entry(raw, now_ms=now), raw, catalog))
            if len(batch) == settings.batch_max_entries:
                await store.apply(batch)
                batch = []
        if batch:
            await store.apply(batch)
    finally:
        await redis.aclose()


async def _entries_page_latency(
    settings: Settings, api_url: str, *, entries: int, requests: int
) -> list[float]:
    """Latencies (s) of ``GET /v1/runs/{runId}/entries`` at random offsets of one run
    holding ``entries`` entries, one request at a time over a kept-alive connection."""
    run_id = f"big-{uuid.uuid4().hex[:6]}"
    await _write_big_run(settings, run_id, entries)
    rnd = random.Random(13)
    url = f"{api_url}/v1/runs/{run_id}/entries"
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(requests + 10):  # the first 10 warm the connection up
            params = {"offset": str(rnd.randrange(entries)), "limit": "100"}
            t0 = time.perf_counter()
            async with session.get(url, params=params) as resp:
                body = await resp.json()
            elapsed = time.perf_counter() - t0
            if resp.status != 200 or body["total"] != entries:
                raise RuntimeError(f"entries page answered {resp.status}: {str(body)[:200]}")
            if i >= 10:
                latencies.append(elapsed)
    return latencies


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def cleanup_keys(settings: Settings) -> None:
    redis = redis_client(settings)
    try:
        async for key in redis.scan_iter(match=Keys(settings.key_prefix).pattern_all(), count=1000):
            await redis.unlink(key)
    finally:
        await redis.aclose()


def run_bench(settings: Settings, *, entries: int, rate: int, latency_seconds: float) -> int:
    stack = StackSettings()
    settings = with_local_stack(settings, stack)
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    settings = settings.model_copy(
        update={
            **namespaced(tag),
            # a free port: a demo or another worker may hold the default one
            "api_port": pick_port(settings.api_port),
        }
    )
    asyncio.run(ensure_topics(settings))
    fleet = Fleet(seed=3, run_prefix=tag, start_ms=_now_ms() - 3_600_000)
    messages = [encode(e) for e in fleet.entries(entries)]
    kinds: dict[str, int] = {}
    for _, v in messages:
        kind = json.loads(v)["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
    produce_s = asyncio.run(_produce(settings, messages))
    print(f"produced {entries} entries ({kinds}) in {produce_s:.2f}s")

    # The ceiling moves a lot between runs on a shared machine: take the median of three.
    raws = sorted(
        asyncio.run(_raw_ceiling(settings.model_copy(update={"app_id": f"{tag}-{i}"}), entries))
        for i in range(3)
    )
    raw = raws[1]
    print(
        f"raw aiokafka ceiling (consume + JSON decode): {raw:,.0f} entries/s "
        f"(median of {', '.join(f'{r:,.0f}' for r in raws)})"
    )

    log_path = Path(stack.stack_dir) / "bench-worker.log"
    worker = LocalWorker(settings, log_path)
    result: dict[str, Any] = {
        "entries": entries,
        "rawPerSec": round(raw),
        "rawRuns": [round(r) for r in raws],
    }
    rules_dir = tempfile.TemporaryDirectory(prefix="bench-alerts-")
    try:
        worker.start()
        pipeline = asyncio.run(_pipeline_rate(settings, entries, timeout=600))
        worker.wait_ready()
        print(f"pipeline (validated, priced, de-duplicated, in Redis): {pipeline:,.0f} entries/s")
        print(f"ratio pipeline / raw ceiling: {pipeline / raw:.3f}")
        fired = asyncio.run(_alerts_fired(settings))
        print(f"alerts the pipeline's entries fired (default rules): {fired or 'none'}")
        latencies = asyncio.run(_latency(settings, rate, latency_seconds))
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(
            f"produce-to-visible latency at {rate}/s for {latency_seconds:.0f}s "
            f"({len(latencies)} probes): p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
        )
        result.update(
            pipelinePerSec=round(pipeline),
            ratio=round(pipeline / raw, 3),
            pipelineAlerts=fired,
            offeredRate=rate,
            latencyP50Ms=round(p50 * 1000, 1),
            latencyP99Ms=round(p99 * 1000, 1),
        )
        # the alert step: the same worker (app id, topics, Redis) restarted with a rules file
        rules_file = Path(rules_dir.name) / "alert-rules.yaml"
        rules_file.write_text(_ALERT_RULES_YAML, encoding="utf-8")
        worker.stop()
        worker = LocalWorker(settings.model_copy(update={"alert_rules_file": rules_file}), log_path)
        worker.start()
        worker.wait_ready()
        alerts, from_send, expected = asyncio.run(_alert_latency(settings, rate, latency_seconds))
        if not alerts:
            raise RuntimeError(f"no alert consumed; see {log_path}")
        p50, p99 = percentile(alerts, 0.5), percentile(alerts, 0.99)
        print(
            f"produce-to-alert-consumed latency (read_committed) at {rate}/s for "
            f"{latency_seconds:.0f}s ({len(alerts)} of {expected} alerts): "
            f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; of which relay send to "
            f"consumed p50 {percentile(from_send, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(from_send, 0.99) * 1000:.0f} ms"
        )
        result.update(
            alerts=len(alerts),
            alertsExpected=expected,
            alertLatencyP50Ms=round(p50 * 1000, 1),
            alertLatencyP99Ms=round(p99 * 1000, 1),
        )
        pages = asyncio.run(
            _entries_page_latency(settings, worker.url, entries=_BIG_RUN, requests=200)
        )
        p50, p99 = percentile(pages, 0.5), percentile(pages, 0.99)
        print(
            f"entries page (limit 100, random offset) of a run with {_BIG_RUN:,} entries, "
            f"{len(pages)} requests over HTTP: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"
        )
        result.update(entriesPageP50Ms=round(p50 * 1000, 2), entriesPageP99Ms=round(p99 * 1000, 2))
        print("result " + json.dumps(result))
    finally:
        worker.stop()
        rules_dir.cleanup()
        asyncio.run(cleanup_keys(settings))
    return 0
