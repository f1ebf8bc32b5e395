"""Redis memory per run, per retained raw entry, per user-hour/day/month and per dedup id.

    .venv/bin/python tools/redis_sizing.py [--entries 300000] [--users 500] [--days 7]

Starts a throw-away ``redis-server`` (default configuration, no persistence) so nothing
else moves its memory, writes a simulated fleet (processor/simulate.py; ids and run ids
as UUIDs like the clients send, timestamps spread over the last ``--days`` days) through
the real parse, price and batch-apply path (``RunStore.apply``, the worker's Lua step),
then measures each kind of key two ways:

- ``MEMORY USAGE <key> SAMPLES 0`` summed over the keys of the kind (the value, the key
  name and their allocations);
- ``INFO memory`` ``used_memory`` before and after ``DEL`` of every key of the kind, one
  kind after the other: this also counts the main and expires dictionaries' entries, so
  it is the figure to size a server with.

Key kinds are the tags of processor/store/keys.py. Prints one JSON line per kind and the
per-unit figures quoted in the README ("Scaling out").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from redis.asyncio import Redis

from processor.batch_pipeline import retention_of
from processor.domain.accept import accept_entry
from processor.domain.fold import AcceptedEntry
from processor.domain.pricing import load_catalog
from processor.settings import Settings, load_settings
from processor.simulate import Fleet
from processor.store.keys import Keys
from processor.store.runs import RunStore
from schemas.entry import parse_entry

PREFIX = "size"
_DAY_MS = 86_400_000
#: The kinds measured together, in the order they are deleted for the INFO deltas.
GROUPS: dict[str, tuple[str, ...]] = {
    "dedup": ("seen",),
    "raw_entries": ("runentries", "runidx"),
    "run": ("run", "runkids", "runparents"),
    "run_indexes": ("runs", "runsbyuser", "runsbyagent", "runsbyuseragent"),
    "user_hour": ("uh",),
    "user_day": ("ud",),
    "user_month": ("um",),
    "user_all_time": ("ua",),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)  # polling the port with a deadline


def _entries(n: int, users: int, days: int, now_ms: int) -> Iterator[dict[str, Any]]:
    """Fleet entries with UUID ids and run ids, spread evenly over the last ``days``."""
    fleet = Fleet(seed=21, users=users, start_ms=now_ms - days * _DAY_MS)
    run_ids: dict[str, str] = defaultdict(lambda: str(uuid.uuid4()))
    start = now_ms - days * _DAY_MS
    step = days * _DAY_MS / n
    for i, entry in enumerate(fleet.entries(n)):
        entry["id"] = str(uuid.uuid4())
        for field in ("runId", "parentRunId", "subAgentRunId"):
            if field in entry:
                entry[field] = run_ids[entry[field]]
        entry["timestamp"] = int(start + i * step)
        yield entry


async def _write(settings: Settings, redis: Redis, entries: Iterator[dict[str, Any]]) -> int:
    store = RunStore(
        redis,
        Keys(settings.key_prefix),
        dedup_ttl_s=settings.dedup_retention_seconds,
        entry_ttl_s=settings.entry_retention_seconds,
        retention=retention_of(settings),
    )
    catalog = load_catalog(None)
    now = time.time_ns() // 1_000_000
    batch: list[AcceptedEntry] = []
    written = 0
    for entry in entries:
        raw = json.dumps(entry, separators=(",", ":")).encode()
        batch.append(accept_entry(parse_entry(raw, now_ms=now), raw, catalog))
        if len(batch) == settings.batch_max_entries:
            await store.apply(batch)
            written += len(batch)
            batch = []
    if batch:
        await store.apply(batch)
        written += len(batch)
    return written


def _tag(key: str) -> str:
    return key.split(":", 2)[1]


async def _used(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def _measure(redis: Redis) -> dict[str, dict[str, Any]]:
    keys_by_tag: dict[str, list[str]] = defaultdict(list)
    async for key in redis.scan_iter(match=f"{PREFIX}:*", count=1000):
        keys_by_tag[_tag(key)].append(key)
    usage: Counter[str] = Counter()
    members: Counter[str] = Counter()
    for tag, keys in keys_by_tag.items():
        for key in keys:
            usage[tag] += int(await redis.memory_usage(key, samples=0) or 0)
            kind = await redis.type(key)
            if kind == "hash":
                members[tag] += int(await redis.hlen(key))  # type: ignore[misc]
            elif kind == "zset":
                members[tag] += int(await redis.zcard(key))
            elif kind == "set":
                members[tag] += int(await redis.scard(key))  # type: ignore[misc]
    result: dict[str, dict[str, Any]] = {}
    for group, tags in GROUPS.items():
        before = await _used(redis)
        for tag in tags:
            keys = keys_by_tag.get(tag, [])
            for start in range(0, len(keys), 1000):
                await redis.delete(*keys[start : start + 1000])
        freed = before - await _used(redis)
        result[group] = {
            "keys": {t: len(keys_by_tag.get(t, [])) for t in tags},
            "members": {t: members[t] for t in tags},
            "memoryUsage": sum(usage[t] for t in tags),
            "freedUsedMemory": freed,
        }
    return result


def _per(total: int, n: int) -> float:
    return round(total / n, 1) if n else 0.0


async def _main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="redis-sizing-") as tmp:
        proc, url = _start_redis(tmp)
        try:
            # retention settings from the environment, as the workers would have them
            settings = load_settings(redis_url=url, key_prefix=PREFIX)
            redis = Redis.from_url(url, decode_responses=True)
            try:
                version = (await redis.info("server"))["redis_version"]
                baseline = await _used(redis)
                now = time.time_ns() // 1_000_000
                written = await _write(
                    settings, redis, _entries(args.entries, args.users, args.days, now)
                )
                total = await _used(redis) - baseline
                groups = await _measure(redis)
            finally:
                await redis.aclose()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    for name, figures in groups.items():
        print(json.dumps({"group": name, **figures}))
    runs = groups["run"]["keys"]["run"]
    seen = sum(groups["dedup"]["members"].values())
    raw = groups["raw_entries"]["members"]["runentries"]
    hours, days = groups["user_hour"]["keys"]["uh"], groups["user_day"]["keys"]["ud"]
    months = groups["user_month"]["keys"]["um"]
    users = groups["user_all_time"]["keys"]["ua"]

    def both(group: str, n: int) -> dict[str, float]:
        g = groups[group]
        return {
            "usedMemory": _per(g["freedUsedMemory"], n),
            "memoryUsage": _per(g["memoryUsage"], n),
        }

    summary = {
        "redisVersion": version,
        "entries": written,
        "runs": runs,
        "userDays": days,
        "usedMemoryTotal": total,
        "bytesPerDedupId": both("dedup", seen),
        "bytesPerRawEntry": both("raw_entries", raw),
        "bytesPerRun": both("run", runs),
        "bytesPerRunIndexes": both("run_indexes", runs),
        "bytesPerUserHour": both("user_hour", hours),
        "bytesPerUserDay": both("user_day", days),
        "bytesPerUserDayWithItsHours": {
            "usedMemory": _per(
                groups["user_day"]["freedUsedMemory"] + groups["user_hour"]["freedUsedMemory"], days
            ),
        },
        "bytesPerUserMonth": both("user_month", months),
        "bytesPerUserAllTime": both("user_all_time", users),
    }
    print("summary " + json.dumps(summary))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--days", type=int, default=7)
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
