"""Redis, then Kafka, away for 10 s under a running worker: it waits, says so, and resumes.

The tests of this module share a Kafka and a Redis of their own (a LocalStack under the
module's temporary directory), so stopping them disturbs no other test of the session.
20,000 entries (with re-sent duplicates) are produced at a steady 1,000/s while one worker
runs; 30% into the stream one server is taken away for 10 s and brought back on the same
port with the same data:

- Redis: the redis-server is SIGKILLed and started again (same port, same data dir);
- Kafka: the broker is stopped and started again (same ports, same log dir). The test's
  producer pauses first and produces the messages of the outage window after the broker
  is back, at the same rate.

Asserted (every problem collected, then reported together): nothing lost and nothing
counted twice (every run equals the ground truth), ``/readyz`` answered 503 during the
outage and 200 again after it, the worker's log grew by at most ``MAX_LOG_LINES`` lines
from the start of the outage to the end of the stream (a line per state change, not per
retry), Redis holds the end offsets, and, for Kafka, ``POST /v1/entries`` answered 503
while the broker was away and 202 again after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from processor.consumer import ingest_group_id
from processor.domain.pricing import load_catalog
from processor.settings import Settings
from processor.stack import LocalStack, StackInfo
from processor.stack.redis_server import ping
from tests.integration.ground_truth import (
    GroundTruth,
    end_offsets,
    fetch_metrics,
    fleet_entries,
    messages,
    metric_sum,
    wait_caught_up,
    with_duplicates,
)
from tests.integration.harness import (
    WorkerProcess,
    create_topics,
    stack_settings,
    unique_settings,
    wait_for,
)
from tests.integration.redis_control import (
    PacedProducer,
    ReadyzWatcher,
    assert_nothing_lost,
    assert_redis_offsets_at_end,
    count_lines,
    log_digest,
)

# above the default per-test timeout: the waits' own deadlines (the producer's 300 s, the
# catch-up's 240 s) fail first, with a message that says what was not reached
pytestmark = pytest.mark.timeout(600)

ENTRIES = 20_000
RATE = 1_000.0  # entries per second, before and after the outage
OUTAGE_S = 10.0
OUTAGE_AT = 0.3  # share of the stream produced when the outage begins
MAX_LOG_LINES = 40
STALL_S = 3.0  # USAGE_APPLY_STALL_SECONDS in the Redis outage: well inside its 10 s
RETRY_MAX_S = 2.0  # USAGE_RETRY_MAX_SECONDS: several retries fit in the outage


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A Kafka + Redis for this module only."""
    local = LocalStack(
        stack_settings(tmp_path_factory.mktemp("outage-stack")), prefer_default_ports=False
    )
    try:
        local.up()
        yield local
    finally:
        local.down()


@dataclass
class Run:
    settings: Settings
    entries: list[dict[str, Any]]
    truth: GroundTruth
    worker: WorkerProcess
    producer: PacedProducer
    watcher: ReadyzWatcher
    problems: list[str] = field(default_factory=list)

    @property
    def group(self) -> str:
        return ingest_group_id(self.settings)

    async def stop(self) -> None:
        await self.producer.stop()
        await self.watcher.stop()
        await self.worker.aterminate(timeout=20)


async def start_run(
    local: LocalStack, tmp_path: Path, seed: int, **overrides: Any
) -> tuple[Run, StackInfo]:
    # up() is a no-op when both run; it brings back what an earlier test left stopped
    info = await asyncio.to_thread(local.up)
    settings = unique_settings(
        info.kafka_bootstrap,
        info.redis_url,
        retry_max_seconds=RETRY_MAX_S,
        **overrides,
    )
    fleet = fleet_entries(ENTRIES, seed=seed, prefix=f"{settings.app_id}-o")
    entries, late = with_duplicates(fleet, fraction=0.03, seed=seed + 1)
    entries += late
    truth = GroundTruth(load_catalog(None))
    truth.add_all(entries)
    await create_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    producer = PacedProducer(settings, settings.topic_entries, messages(entries), rate=RATE)
    watcher = ReadyzWatcher(worker.url)
    run = Run(settings, entries, truth, worker, producer, watcher)
    worker.start()
    try:
        await worker.wait_ready(timeout=120)
    except BaseException:
        await worker.aterminate(timeout=10)
        raise
    watcher.start()
    producer.start()
    await wait_for(
        lambda: producer.acked >= OUTAGE_AT * producer.total,
        timeout=120,
        interval=0.05,
        message="stream under way",
    )
    return run, info


async def finish(run: Run, *, outage_start: float, outage_end: float, log_lines: int) -> None:
    """Wait for the end of the stream, check everything, fail with every problem found."""
    problems = run.problems
    try:
        await wait_for(
            lambda: run.watcher.seen(200, since=outage_end),
            timeout=120,
            interval=0.1,
            message="/readyz 200 after the outage",
        )
    except TimeoutError:
        problems.append(
            "/readyz did not answer 200 again after the outage: "
            + run.watcher.summary(outage_start)
        )
    if not run.watcher.seen(503, since=outage_start, until=outage_end):
        problems.append(
            "/readyz never answered 503 during the outage (answers since its start: "
            + run.watcher.summary(outage_start)
            + ")"
        )
    await run.producer.wait_done(timeout=300)
    try:
        await wait_caught_up(run.settings, run.group, timeout=240)
    except TimeoutError as exc:
        problems.append(f"{exc}\n{run.worker.log_tail()}")
        raise AssertionError("\n\n".join(problems)) from None
    grown = count_lines(run.worker.log_path) - log_lines
    first_503 = run.watcher.first_seen(503, outage_start)
    print(f"readyz since the outage: {run.watcher.summary(outage_start)}")
    print(f"first 503 after {first_503 if first_503 is None else round(first_503, 1)} s")
    print(f"worker log grew by {grown} lines from the start of the outage")
    if grown > MAX_LOG_LINES:
        problems.append(
            f"the worker's log grew by {grown} lines (at most {MAX_LOG_LINES} allowed) from "
            "the start of the outage to the end of the stream:\n"
            + log_digest(run.worker.log_path, log_lines)
        )
    if not run.worker.alive:
        problems.append(f"the worker exited ({run.worker.returncode})\n{run.worker.log_tail()}")
    else:
        async with httpx.AsyncClient(base_url=run.worker.url, timeout=10.0) as http:
            try:
                await assert_nothing_lost(http, run.truth)
            except AssertionError as exc:
                problems.append(f"not exact: {exc}")
    ends = await end_offsets(run.settings, run.settings.topic_entries)
    try:
        await assert_redis_offsets_at_end(run.settings.redis_url, run.settings, run.group, ends)
    except AssertionError as exc:
        problems.append(str(exc))
    assert not problems, "\n\n".join(problems)


async def test_redis_away_for_ten_seconds(own_stack: LocalStack, tmp_path: Path) -> None:
    run, info = await start_run(own_stack, tmp_path, seed=31, apply_stall_seconds=STALL_S)
    try:
        assert info.redis_pid is not None
        log_lines = count_lines(run.worker.log_path)
        outage_start = time.monotonic()
        os.kill(info.redis_pid, signal.SIGKILL)  # the stack's redis-server, started by us
        await wait_for(
            lambda: asyncio.to_thread(lambda: not ping("127.0.0.1", info.redis_port)),
            timeout=30,
            message="redis gone",
        )
        async with httpx.AsyncClient(base_url=run.worker.url, timeout=5.0) as http:

            async def stalled() -> bool:
                body = (await http.get("/readyz")).json()
                return body["applying"] is False and "failed to apply" in body["detail"]

            # a batch failing for longer than USAGE_APPLY_STALL_SECONDS is reported
            await wait_for(stalled, timeout=OUTAGE_S, message="/readyz reports the stall")
        remaining = OUTAGE_S - (time.monotonic() - outage_start)
        await asyncio.sleep(max(0.0, remaining))  # the outage itself, not a synchronisation
        back = await asyncio.to_thread(own_stack.up)
        outage_end = time.monotonic()
        assert back.redis_port == info.redis_port, "redis came back on another port"
        await finish(run, outage_start=outage_start, outage_end=outage_end, log_lines=log_lines)
        log = run.worker.log_path.read_text("utf-8", errors="replace").splitlines()
        errors = [line for line in log if " ERROR " in line and "not applied for" in line]
        assert len(errors) == 1, errors
        assert "offsets" in errors[0] and "[" in errors[0], errors[0]
        async with httpx.AsyncClient(base_url=run.worker.url, timeout=5.0) as http:
            failures = metric_sum(await fetch_metrics(http), "usage_batch_apply_failures_total")
        assert failures >= 2
    finally:
        await run.stop()


async def test_kafka_away_for_ten_seconds(own_stack: LocalStack, tmp_path: Path) -> None:
    run, info = await start_run(own_stack, tmp_path, seed=41)
    # copies of entries produced long ago: if they ever get through, they are duplicates
    body = {"entries": run.entries[:20]}
    try:
        await run.producer.pause()
        log_lines = count_lines(run.worker.log_path)
        outage_start = time.monotonic()
        await asyncio.to_thread(own_stack.down, ("kafka",))
        down_at = time.monotonic()
        async with httpx.AsyncClient(base_url=run.worker.url, timeout=15.0) as http:
            with contextlib.suppress(TimeoutError):
                # the ingest check below is meaningful once the worker knows
                await wait_for(
                    lambda: run.watcher.seen(503, since=outage_start),
                    timeout=60,
                    interval=0.1,
                    message="/readyz 503",
                )
            try:
                response = await http.post("/v1/entries", json=body)
                if response.status_code != 503:
                    run.problems.append(
                        f"POST /v1/entries with the broker away answered "
                        f"{response.status_code} (want 503): {response.text[:300]}"
                    )
            except httpx.HTTPError as exc:
                run.problems.append(
                    f"POST /v1/entries with the broker away got no answer within 15 s: {exc!r}"
                )
            await asyncio.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))  # the outage
            back = await asyncio.to_thread(own_stack.up)
            outage_end = time.monotonic()
            assert back.kafka_port == info.kafka_port, "kafka came back on another port"
            run.producer.resume()

            async def ingest_accepts() -> bool:
                try:
                    return (await http.post("/v1/entries", json=body)).status_code == 202
                except httpx.HTTPError:
                    return False

            try:
                await wait_for(ingest_accepts, timeout=120, interval=0.5, message="ingest 202")
            except TimeoutError:
                run.problems.append("POST /v1/entries did not answer 202 after the broker was back")
        await finish(run, outage_start=outage_start, outage_end=outage_end, log_lines=log_lines)
    finally:
        await run.stop()
