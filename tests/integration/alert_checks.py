"""What the alert end-to-end tests share: reading what was published once the alerts
outbox is empty, exactly-once and record checks, and the SIGKILL schedule of two workers.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import redis.asyncio as aioredis

from processor.consumer import ingest_group_id
from processor.settings import Settings
from processor.store.keys import Keys
from processor.store.runs import ALERTS_OUTBOX
from tests.integration.ground_truth import Entry, messages, wait_caught_up
from tests.integration.harness import WorkerProcess, create_topics, wait_for
from tests.integration.redis_control import PacedProducer
from tests.integration.user_streams import (
    Published,
    applied_count,
    decoding_redis,
    read_committed,
    wait_applied,
)

TENANT = "default"
LEVELS = ("warning", "critical")
ALERT_FIELDS = {
    "alertId", "rule", "level", "tenantId", "subject", "window", "metric",
    "observed", "threshold", "triggeredAt", "entryId", "message",
}  # fmt: skip
PLAIN_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")
QUIET_S = 3.0  # after the outbox is empty: nothing more may appear on the topic meanwhile


def alerts_outbox(settings: Settings) -> str:
    return Keys(settings.key_prefix).outbox(ALERTS_OUTBOX)


def by_index(got: Sequence[Published]) -> list[Published]:
    return sorted(got, key=lambda m: (m.partition, m.offset))


async def published_alerts(
    redis: aioredis.Redis, settings: Settings, workers: Sequence[WorkerProcess]
) -> list[Published]:
    """Once the alerts outbox is empty (each alert decided has been published), every
    committed message of the notifications topic (by partition and offset); then nothing
    more may appear for ``QUIET_S`` (the outbox stays empty, a second read gives the same
    messages)."""
    key = alerts_outbox(settings)

    async def empty() -> bool:
        return int(await redis.xlen(key)) == 0

    try:
        await wait_for(empty, timeout=60, interval=0.1, message="alerts outbox drained")
    except TimeoutError as exc:
        left = int(await redis.xlen(key))
        logs = "\n".join(w.log_tail() for w in workers)
        raise AssertionError(
            f"{exc}: {left} alert(s) still in {key} (is the leader relaying it to "
            f"{settings.topic_notifications}?)\n{logs}"
        ) from None
    first = by_index(await read_committed(settings, settings.topic_notifications))
    deadline = time.monotonic() + QUIET_S
    while time.monotonic() < deadline:
        assert int(await redis.xlen(key)) == 0, "new alerts decided after the stream was applied"
        await asyncio.sleep(0.2)
    second = by_index(await read_committed(settings, settings.topic_notifications))
    assert second == first, (
        f"the topic changed after the outbox was empty: {len(first)} then {len(second)} messages"
    )
    return first


def assert_exactly_once(
    got: Sequence[Published], expected: Sequence[str], describe: Callable[[str], str]
) -> None:
    """One message per expected alert id, and nothing else; ``describe`` names an
    expected id in the failure message."""
    counts = Counter(str(m.value.get("alertId")) for m in got)
    repeated = {a: n for a, n in counts.items() if n > 1}
    missing = sorted(set(expected) - set(counts))
    unexpected = sorted(set(counts) - set(expected))

    def name(aid: str) -> str:
        if aid in expected:
            return f"{aid} ({describe(aid)})"
        m = next(m for m in got if m.value.get("alertId") == aid)
        return f"{aid} {json.dumps(m.value, sort_keys=True)}"

    assert not repeated and not missing and not unexpected, (
        f"{len(got)} alert messages, {len(expected)} expected; "
        f"published more than once: {[(name(a), n) for a, n in repeated.items()]}; "
        f"missing: {[name(a) for a in missing]}; unexpected: {[name(a) for a in unexpected]}"
    )


async def assert_records(
    redis: aioredis.Redis, settings: Settings, got: Sequence[Published]
) -> None:
    """Each published alert is the record kept in Redis, listed in the tenant's index."""
    keys = Keys(settings.key_prefix)
    listed = set(await redis.zrange(keys.alerts(TENANT), 0, -1))
    assert listed == {m.value["alertId"] for m in got}, (
        f"alerts index: {len(listed)} ids; published: {len(got)}"
    )
    for m in got:
        raw = await redis.get(keys.alert(TENANT, m.value["alertId"]))
        assert raw is not None and json.loads(raw) == m.value, (m.value, raw)


async def kill_on_schedule(
    redis: aioredis.Redis,
    settings: Settings,
    workers: Sequence[WorkerProcess],
    producer: PacedProducer,
    schedule: Sequence[tuple[float, int]],
    total: int,
) -> None:
    """For each (share of ``total`` distinct entries applied, index of the victim): wait
    until that many are applied, SIGKILL the victim with the producer paused, restart it
    and resume; then check the premise: each kill at a different moment, each with part
    of the stream still to come."""
    kills = []
    for share, victim_index in schedule:
        victim = workers[victim_index]
        await wait_applied(redis, settings, int(share * total), timeout=120, workers=workers)
        victim.kill(signal.SIGKILL)
        assert victim.returncode == -signal.SIGKILL, victim.log_tail()
        await producer.pause()
        at_kill = await applied_count(redis, settings)
        kills.append((victim_index, at_kill, producer.acked))
        print(
            f"kill worker {victim_index}: {at_kill}/{total} entries applied, "
            f"{producer.acked}/{producer.total} messages produced"
        )
        victim.start()
        await victim.wait_ready(timeout=90)
        producer.resume()
    assert len({k[1] for k in kills}) == len(schedule), kills
    assert all(acked < producer.total for _, _, acked in kills), kills


async def two_workers_with_kills(
    settings: Settings,
    other: Settings,
    logs: Path,
    stream: Sequence[Entry],
    total: int,
    *,
    rate: float,
    burst: int,
    kills: Sequence[tuple[float, int]],
    check: Callable[[aioredis.Redis, list[Published], tuple[int, int]], Awaitable[None]],
) -> None:
    """Two workers of one group (``settings`` and ``other``) take ``stream``, produced in
    bursts of ``burst`` at about ``rate`` a second and paused while a worker is down, with
    the SIGKILLs of ``kills``; once all ``total`` distinct entries are applied and the
    alerts outbox is empty, ``check`` gets what was published and the span of time."""
    await create_topics(settings)
    redis = decoding_redis(settings)
    workers = [
        WorkerProcess(settings, logs / "worker-a.log"),
        WorkerProcess(other, logs / "worker-b.log"),
    ]
    producer: PacedProducer | None = None
    started_ms = int(time.time() * 1000)
    try:
        for w in workers:
            w.start()
        for w in workers:
            await w.wait_ready(timeout=90)
        producer = PacedProducer(
            settings, settings.topic_entries, messages(stream), rate=rate, chunk=burst
        ).start()
        await kill_on_schedule(redis, settings, workers, producer, kills, total)
        await producer.wait_done(timeout=120)
        await wait_applied(redis, settings, total, timeout=120, workers=workers)
        await wait_caught_up(settings, ingest_group_id(settings), timeout=120)
        assert await applied_count(redis, settings) == total
        got = await published_alerts(redis, settings, workers)
        await check(redis, got, (started_ms, int(time.time() * 1000)))
    finally:
        if producer is not None:
            await producer.stop()
        await asyncio.gather(*(w.aterminate(timeout=20) for w in workers))
        await redis.aclose()
