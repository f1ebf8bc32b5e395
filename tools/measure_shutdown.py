"""How long a loaded worker takes from SIGTERM to exit, and whether it commits first.

    .venv/bin/python tools/measure_shutdown.py [--runs 7] [--backlog 600000] [--seconds 3]

Produces a backlog of simulated fleet entries (processor/simulate.py) to fresh topics,
then, ``--runs`` times: starts a real worker (``usage-stream worker`` in a child process),
lets it consume at full speed for ``--seconds`` after /readyz, sends SIGTERM and times
the exit. A saturated worker always has a batch in flight when the signal comes, the
worst case for the drain in ``IngestConsumer.on_stop``. After each exit it compares the
offsets Redis holds for the consumer group (written with each batch's effects) with the
offsets committed to Kafka: equal means the batch in flight was finished and committed.
``--rate N`` also produces N entries/s during the runs (0: the backlog only).

Uses the servers of USAGE_KAFKA_BOOTSTRAP / USAGE_REDIS_URL, else the local stack;
deletes its topics and keys at the end. The figures feed terminationGracePeriodSeconds
in deploy/k8s/deployment.yaml (docs/decisions.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from processor.consumer import ingest_group_id
from processor.local_worker import LocalWorker
from processor.settings import Settings, load_settings
from processor.simulate import Fleet, encode
from processor.stack.connect import with_local_stack
from processor.stack.ports import pick_port
from processor.stack.settings import StackSettings
from processor.store.keys import Keys
from processor.topics import ensure_topics, namespaced, owned_topics

_ABANDONED = "stopping with a batch in flight"


def _settings() -> Settings:
    base = with_local_stack(load_settings())
    tag = f"shutdown-{uuid.uuid4().hex[:8]}"
    api = pick_port()
    return base.model_copy(
        update={
            **namespaced(tag),
            "api_port": api,
            "metrics_port": pick_port(exclude={api}),
            "log_level": "info",
        }
    )


async def _produce(settings: Settings, fleet: Fleet, n: int, rate: float = 0) -> None:
    """``n`` fleet entries, as fast as the broker takes them or at ``rate`` per second."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    try:
        started = time.monotonic()
        futures = []
        for i, entry in enumerate(fleet.entries(n)):
            key, value = encode(entry)
            futures.append(await producer.send(settings.topic_entries, value, key=key))
            if rate and i % 100 == 99:
                ahead = started + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)  # pacing the offered load, not waiting on state
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _offsets(settings: Settings) -> tuple[dict[int, int], dict[int, int]]:
    """(offsets Redis holds, offsets committed to Kafka) of the ingest group, by partition."""
    group = ingest_group_id(settings)
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        held_raw = await redis.hgetall(Keys(settings.key_prefix).offsets(group))
    finally:
        await redis.aclose()
    held = {int(field.rsplit(":", 1)[1]): int(v) for field, v in held_raw.items()}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        committed_raw = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    committed = {
        tp.partition: meta.offset
        for tp, meta in committed_raw.items()
        if tp.topic == settings.topic_entries and meta.offset >= 0
    }
    return held, committed


async def _applied(settings: Settings) -> int:
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        return int(await redis.hget(Keys(settings.key_prefix).stats(), "applied") or 0)
    finally:
        await redis.aclose()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _one_run(settings: Settings, log_path: Path, seconds: float) -> dict[str, object]:
    worker = LocalWorker(settings, log_path)
    log_before = log_path.stat().st_size if log_path.exists() else 0
    worker.start()
    proc = worker._proc
    assert proc is not None
    try:
        await asyncio.to_thread(worker.wait_ready, 120)
        before = await _applied(settings)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # let it consume: this is the load being measured
        applied = await _applied(settings) - before
        rss = _rss_mib(proc.pid)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 120)
        took = time.monotonic() - t0
    finally:
        worker.stop()
    held, committed = await _offsets(settings)
    with log_path.open("rb") as f:
        f.seek(log_before)
        log = f.read().decode(errors="replace")
    return {
        "exitSeconds": round(took, 3),
        "exitCode": code,
        "appliedWhileUp": applied,
        "entriesPerSecond": round(applied / seconds),
        "rssMiB": round(rss),
        "committedEqualsRedis": held == committed,
        "partitionsBehind": sorted(p for p in held if committed.get(p) != held[p]),
        "abandonedBatch": _ABANDONED in log,
        "traceback": "Traceback" in log,
    }


async def _cleanup(settings: Settings) -> None:
    redis = Redis.from_url(settings.redis_url)
    try:
        async for key in redis.scan_iter(match=Keys(settings.key_prefix).pattern_all(), count=1000):
            await redis.unlink(key)
    finally:
        await redis.aclose()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(owned_topics(settings))
    finally:
        await admin.close()


async def _main(args: argparse.Namespace) -> int:
    settings = _settings()
    await ensure_topics(settings)
    log_path = Path(StackSettings().stack_dir) / f"{settings.app_id}-worker.log"
    fleet = Fleet(seed=9, run_prefix=settings.app_id, start_ms=time.time_ns() // 1_000_000)
    results: list[dict[str, object]] = []
    try:
        t0 = time.monotonic()
        await _produce(settings, fleet, args.backlog)
        print(f"backlog: {args.backlog} entries in {time.monotonic() - t0:.1f} s", flush=True)
        for i in range(args.runs):
            producing = (
                asyncio.create_task(_produce(settings, fleet, 10_000_000, rate=args.rate))
                if args.rate
                else None
            )
            try:
                result = await _one_run(settings, log_path, args.seconds)
            finally:
                if producing is not None:
                    producing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await producing
            results.append(result)
            print(f"run {i + 1}: {json.dumps(result)}", flush=True)
        lag = args.backlog - await _applied(settings)
        times = [float(str(r["exitSeconds"])) for r in results]
        summary = {
            "runs": len(times),
            "medianSeconds": round(statistics.median(times), 3),
            "maxSeconds": max(times),
            "minSeconds": min(times),
            "allCommitted": all(r["committedEqualsRedis"] for r in results),
            "anyAbandoned": any(r["abandonedBatch"] for r in results),
            "backlogLeft": lag,
            "workerLog": str(log_path),
        }
        print("summary " + json.dumps(summary), flush=True)
        if lag <= 0 and not args.rate:
            print("the backlog ran out: the last runs were not under load; raise --backlog")
            return 1
        return 0
    finally:
        await _cleanup(settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--backlog", type=int, default=600_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="consuming before SIGTERM")
    parser.add_argument("--rate", type=float, default=0, help="entries/s produced meanwhile")
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
