"""Table writes/s of a Faust agent: RedisStore vs the default memory store.

Not a test (no ``test_`` prefix). Run against a running stack::

    .venv/bin/python -m tests.integration.bench_faust_redis_store \\
        --bootstrap 127.0.0.1:9092 --redis redis://127.0.0.1:6379/0 --events 50000

For each store it pre-loads ``--events`` events (200 keys) into a fresh topic, starts
``faust_table_app`` as a worker, and times from the end of recovery until the worker's
consumer group has committed every event (one table write per event).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from tests.integration.harness import create_topics, produce, unique_settings, wait_for
from tests.integration.test_faust_redis_recovery import FaustWorker, events, group_caught_up


async def run_one(store: str, bootstrap: str, redis_url: str, n: int, workdir: Path) -> float:
    s = unique_settings(bootstrap, redis_url, stack_dir=workdir / "stack")
    topic = f"{s.app_id}.fta-events"
    await create_topics(s, [topic], 4)
    await produce(s, topic, events(n))
    worker = FaustWorker(s, topic, workdir / f"{s.app_id}.log")
    if store == "memory":
        worker.store_url = "memory://"
    worker.start()
    try:
        await worker.wait_line(b"Worker ready")
        started = time.monotonic()
        await wait_for(
            lambda: group_caught_up(s, topic),
            timeout=600,
            interval=0.05,
            message="all events committed",
        )
        elapsed = time.monotonic() - started
    finally:
        await worker.stop()
        client = aioredis.Redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=f"{s.key_prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    return n / elapsed


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fta-bench-"))
    try:
        for rnd in range(args.rounds):
            for store in ("memory", "redis"):
                rate = await run_one(store, args.bootstrap, args.redis, args.events, workdir)
                print(f"round {rnd + 1} {store:>6}: {rate:,.0f} table writes/s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
