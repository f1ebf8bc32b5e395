"""Helpers for tests that take Redis or Kafka away from a running worker.

- ``RedisServer``: a dedicated ``redis-server`` of one test (the local stack's
  configuration: loopback, AOF ``everysec``), optionally a replica of another; kill,
  detach (``REPLICAOF NO ONE``), snapshot (``BGSAVE``) and restore from a snapshot.
- ``SwitchableProxy``: a TCP proxy a worker connects to instead of Redis, whose backend
  can be switched (a failover behind a stable address, as Sentinel or a VIP gives).
- ``PacedProducer``: produces a stream at a steady rate in the background; can hold the
  tail until released and pause while the broker is away (then produces the held-back
  messages after it is back, at the same rate).
- ``ReadyzWatcher``: polls ``/readyz`` and keeps every answer.
- ``assert_nothing_lost``: says how many entries are missing or doubled, then compares
  every run with the ground truth.

Everything waits by polling with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from processor.settings import Settings
from processor.stack import redis_server as redis_mod
from processor.stack.ports import LOOPBACK, pick_port
from processor.stack.process import log_tail
from processor.store.keys import Keys
from tests.integration.ground_truth import (
    GroundTruth,
    check_all_runs,
    fetch_metrics,
    metric_sum,
)
from tests.integration.harness import wait_for

log = logging.getLogger(__name__)

Message = tuple[bytes | None, bytes]


# --- a dedicated redis-server ----------------------------------------------------------


class RedisServer:
    """One ``redis-server`` process of a test, configured like the local stack's."""

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        replica_of: RedisServer | None = None,
        appendonly: bool = True,
    ) -> None:
        self.layout = redis_mod.RedisLayout(Path(root))
        self.port = port or pick_port()
        self.replica_of = replica_of
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self.layout.data_dir

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, timeout: float = 30.0) -> RedisServer:
        binary = redis_mod.install_redis()
        replica = (
            () if self.replica_of is None else (f"replicaof {LOOPBACK} {self.replica_of.port}",)
        )
        redis_mod.write_config(self.layout, self.port, appendonly=self.appendonly, extra=replica)
        self.proc = redis_mod.launch(binary, self.layout)

        async def answers() -> bool:
            if not self.alive:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited at start\n{self.layout.tail()}"
                )
            return await asyncio.to_thread(redis_mod.ping, LOOPBACK, self.port)

        await wait_for(answers, timeout=timeout, interval=0.05, message=f"redis :{self.port} up")
        return self

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(host=LOOPBACK, port=self.port, decode_responses=True)

    async def info(self, section: str) -> dict[str, Any]:
        client = self.client()
        try:
            return dict(await client.info(section))
        finally:
            await client.aclose()

    async def execute(self, *args: Any) -> Any:
        client = self.client()
        try:
            return await client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()

    def kill(self) -> None:
        """SIGKILL (a crash: nothing flushed beyond what the OS already has) and reap."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def tail(self) -> str:
        return self.layout.tail()


async def wait_replica_in_sync(primary: RedisServer, replica: RedisServer) -> None:
    """Until the replica's link is up and it has processed the primary's whole stream."""

    async def synced() -> bool:
        r = await replica.info("replication")
        p = await primary.info("replication")
        return r.get("master_link_status") == "up" and int(r.get("slave_repl_offset", -1)) >= int(
            p.get("master_repl_offset", 0)
        )

    await wait_for(synced, timeout=60, interval=0.1, message="replica in sync")


async def detach(replica: RedisServer) -> int:
    """``REPLICAOF NO ONE``: the replica keeps the state it has now and becomes a primary.

    Returns its replication offset at that moment (in the old primary's offset space).
    """
    await replica.execute("REPLICAOF", "NO", "ONE")

    async def promoted() -> dict[str, Any] | None:
        info = await replica.info("replication")
        return info if info.get("role") == "master" else None

    info = await wait_for(promoted, timeout=30, interval=0.05, message="replica promoted")
    return int(info["master_repl_offset"])


async def repl_offset(server: RedisServer) -> int:
    return int((await server.info("replication"))["master_repl_offset"])


async def snapshot_rdb(server: RedisServer, dest: Path) -> Path:
    """``BGSAVE`` now, wait for it to finish, copy the RDB file to ``dest`` (a directory)."""
    before = int((await server.info("persistence"))["rdb_saves"])

    async def bgsave() -> bool:
        try:
            await server.execute("BGSAVE")
        except aioredis.ResponseError as exc:  # an automatic save is running: retry
            if "in progress" not in str(exc):
                raise
            return False
        return True

    await wait_for(bgsave, timeout=60, interval=0.05, message="BGSAVE started")

    async def saved() -> bool:
        p = await server.info("persistence")
        return int(p["rdb_saves"]) > before and int(p["rdb_bgsave_in_progress"]) == 0

    await wait_for(saved, timeout=60, interval=0.05, message="BGSAVE finished")
    last = await server.info("persistence")
    assert last["rdb_last_bgsave_status"] == "ok", last
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "dump.rdb"
    shutil.copyfile(server.data_dir / "dump.rdb", target)
    return target


async def restore_from_rdb(root: Path, rdb: Path) -> RedisServer:
    """A fresh redis-server whose data is ``rdb``, then AOF switched on as the stack has it.

    (With ``appendonly yes`` and no AOF yet, redis-server would start empty and ignore the
    RDB file, so it starts without AOF and turns it on once the snapshot is loaded.)
    """
    server = RedisServer(root, appendonly=False)
    server.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rdb, server.data_dir / "dump.rdb")
    await server.start()
    await server.execute("CONFIG", "SET", "appendonly", "yes")

    async def aof_on() -> bool:
        p = await server.info("persistence")
        return int(p["aof_enabled"]) == 1 and int(p["aof_rewrite_in_progress"]) == 0

    await wait_for(aof_on, timeout=60, interval=0.05, message="AOF on after restore")
    return server


async def stats_applied(server: RedisServer, settings: Settings) -> int | None:
    """The ``applied`` counter of the key prefix's stats hash (None when it has none)."""
    client = server.client()
    try:
        value = await client.hget(Keys(settings.key_prefix).stats(), "applied")  # type: ignore[misc]
    finally:
        await client.aclose()
    return int(value) if value is not None else None


async def redis_offsets(redis_url: str, settings: Settings, group: str) -> dict[str, str]:
    client = aioredis.from_url(redis_url, decode_responses=True)  # type: ignore[no-untyped-call]
    try:
        return dict(await client.hgetall(Keys(settings.key_prefix).offsets(group)))
    finally:
        await client.aclose()


async def assert_redis_offsets_at_end(
    redis_url: str, settings: Settings, group: str, ends: dict[int, int]
) -> None:
    """Redis holds every partition's next offset, and it is the end of the partition."""
    want = {Keys.offset_field(settings.topic_entries, p): str(end) for p, end in ends.items()}

    async def matches() -> bool:
        got = await redis_offsets(redis_url, settings, group)
        return {k: got.get(k) for k in want} == want

    try:
        # written in the step that applied the batch, before the Kafka commit: already there
        await wait_for(matches, timeout=10, interval=0.25, message="offsets in Redis")
    except TimeoutError:
        got = await redis_offsets(redis_url, settings, group)
        raise AssertionError(
            f"Redis hash {Keys(settings.key_prefix).offsets(group)} holds {got}, "
            f"want the end offsets {want}"
        ) from None


# --- a TCP proxy with a switchable backend ---------------------------------------------


class SwitchableProxy:
    """Listens on a loopback port and forwards each connection to ``target`` (a port).

    ``switch`` points new connections elsewhere and cuts the open ones, as a failover
    behind a stable address does; clients see their connections drop and reconnect.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = pick_port()
        self._server: asyncio.Server | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    async def start(self) -> SwitchableProxy:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._open.add(pair)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(256 * 1024):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._open.discard(pair)
            writer.transport.abort()
            up_writer.transport.abort()

    def cut(self) -> None:
        for client, upstream in list(self._open):
            client.transport.abort()
            upstream.transport.abort()

    def switch(self, target: int) -> None:
        self.target = target
        self.cut()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)


# --- a producer at a steady rate -------------------------------------------------------


class PacedProducer:
    """Produce ``messages`` to ``topic`` at about ``rate`` per second, acknowledged.

    ``hold_at``: stop before that index until ``release()``. ``pause()`` waits until
    nothing is in flight and stops; ``resume()`` goes on at the same rate (what was not
    produced meanwhile comes after, not in a burst). A send that fails (broker away) is
    retried with a fresh producer; a re-sent message is a duplicate by id, so harmless.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        messages: Sequence[Message],
        *,
        rate: float,
        chunk: int = 100,
        hold_at: int | None = None,
    ) -> None:
        self._bootstrap = settings.kafka_bootstrap
        self._topic = topic
        self._messages = list(messages)
        self._rate = rate
        self._chunk = chunk
        self._hold_at = hold_at
        self._released = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.acked = 0
        self.retries = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def total(self) -> int:
        return len(self._messages)

    def start(self) -> PacedProducer:
        self.task = asyncio.create_task(self._run(), name="paced-producer")
        return self

    def release(self) -> None:
        self._released.set()

    async def pause(self) -> None:
        self._running.clear()
        await self._idle.wait()

    def resume(self) -> None:
        self._running.set()

    async def wait_done(self, timeout: float = 300.0) -> None:
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), timeout=timeout)

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    def _producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=10_000,
            max_request_size=4 * 1024 * 1024,
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        producer: AIOKafkaProducer | None = None
        i, n = 0, len(self._messages)
        next_at = loop.time()
        try:
            while i < n:
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._hold_at is not None and i >= self._hold_at and not self._released.is_set():
                    await self._released.wait()
                    next_at = loop.time()
                    continue
                if not self._running.is_set():
                    await self._running.wait()
                    next_at = loop.time()
                    continue
                end = min(i + self._chunk, n)
                if self._hold_at is not None and i < self._hold_at:
                    end = min(end, self._hold_at)
                self._idle.clear()
                try:
                    producer = await self._send(producer, self._messages[i:end])
                finally:
                    self._idle.set()
                self.acked = end
                next_at += (end - i) / self._rate
                i = end
        finally:
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()

    async def _send(self, producer: AIOKafkaProducer | None, chunk: list[Message]) -> Any:
        deadline = time.monotonic() + 180
        while True:
            try:
                if producer is None:
                    producer = self._producer()
                    await producer.start()
                futures = [
                    await producer.send(self._topic, value=value, key=key) for key, value in chunk
                ]
                await asyncio.wait_for(asyncio.gather(*futures), timeout=30)
                return producer
            except (KafkaError, OSError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                log.warning("test producer: %r; retrying with a new producer", exc)
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                producer = None
                await asyncio.sleep(0.5)  # back-off between attempts, not a synchronisation


# --- watching a worker -----------------------------------------------------------------


async def handled(urls: Sequence[str]) -> float:
    """Entries the workers handled so far (accepted + duplicate), from their metrics."""
    total = 0.0
    for url in urls:
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
            m = await fetch_metrics(http)
        total += metric_sum(m, "usage_entries_total", outcome="accepted")
        total += metric_sum(m, "usage_entries_total", outcome="duplicate")
    return total


async def wait_handled(urls: Sequence[str], at_least: float, timeout: float = 180.0) -> float:
    async def enough() -> float | None:
        try:
            n = await handled(urls)
        except httpx.HTTPError:
            return None
        return n if n >= at_least else None

    got: float = await wait_for(
        enough,  # type: ignore[arg-type]
        timeout=timeout,
        interval=0.05,
        message=f"{at_least:.0f} entries handled",
    )
    return got


class ReadyzWatcher:
    """Polls ``GET /readyz`` every ``interval``; keeps (monotonic time, status or None)."""

    def __init__(self, url: str, interval: float = 0.25) -> None:
        self.url = url + "/readyz"
        self.interval = interval
        self.samples: list[tuple[float, int | None]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> ReadyzWatcher:
        self.task = asyncio.create_task(self._run(), name="readyz-watcher")
        return self

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=6.0) as http:
            while True:
                at = time.monotonic()
                try:
                    status: int | None = (await http.get(self.url)).status_code
                except httpx.HTTPError:
                    status = None
                self.samples.append((at, status))
                await asyncio.sleep(self.interval)

    def seen(self, status: int | None, since: float, until: float = float("inf")) -> bool:
        return any(s == status and since <= at <= until for at, s in self.samples)

    def first_seen(self, status: int | None, since: float) -> float | None:
        """Seconds from ``since`` to the first answer ``status`` after it (None: none)."""
        return next((at - since for at, s in self.samples if s == status and at >= since), None)

    def summary(self, since: float) -> str:
        """Runs of equal answers after ``since``: ``200 x12, 503 x30, 200 x4``."""
        runs: list[list[Any]] = []
        for at, s in self.samples:
            if at < since:
                continue
            if runs and runs[-1][0] == s:
                runs[-1][1] += 1
            else:
                runs.append([s, 1])
        return ", ".join(f"{s} x{n}" for s, n in runs) or "(no samples)"

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def log_digest(path: Path, start_line: int, *, first: int = 15, top: int = 12) -> str:
    """The log from line ``start_line`` (0-based) on: its first lines, then the most
    frequent kinds of line (timestamps dropped, digits as ``#``) with their counts."""
    with open(path, "rb") as fh:
        lines = fh.read().decode("utf-8", "replace").splitlines()[start_line:]
    kinds: Counter[str] = Counter(
        re.sub(r"\d+", "#", re.sub(r"^\[[^\]]*\]\s*", "", line))[:160] for line in lines
    )
    head = "\n".join(lines[:first])
    common = "\n".join(f"{n:>8} x {kind}" for kind, n in kinds.most_common(top))
    return f"first lines:\n{head}\nmost frequent lines:\n{common}"


# --- comparing ---------------------------------------------------------------------------


async def entry_count_gap(http: httpx.AsyncClient, truth: GroundTruth) -> tuple[int, int, int]:
    """(missing, doubled, unknown runs): entries the rollups lack or count twice."""
    semaphore = asyncio.Semaphore(8)
    missing = doubled = unknown = 0

    async def one(run_id: str) -> None:
        nonlocal missing, doubled, unknown
        want = truth.runs[run_id].entry_count
        async with semaphore:
            response = await http.get(
                f"/v1/runs/{quote(run_id, safe='')}/rollup", params={"includeSubAgents": "false"}
            )
        if response.status_code == 404:
            unknown += 1
            missing += want
            return
        assert response.status_code == 200, (run_id, response.text)
        got = int(response.json()["entryCount"])
        missing += max(0, want - got)
        doubled += max(0, got - want)

    await asyncio.gather(*(one(r) for r in sorted(truth.runs)))
    return missing, doubled, unknown


async def assert_nothing_lost(http: httpx.AsyncClient, truth: GroundTruth) -> None:
    """First the headline (how many entries lost or doubled), then every run exactly."""
    missing, doubled, unknown = await entry_count_gap(http, truth)
    if missing or doubled:
        raise AssertionError(
            f"of {truth.accepted} accepted entries, {missing} are missing from the run "
            f"rollups ({unknown} of {len(truth.runs)} runs unknown) and {doubled} are "
            "counted twice"
        )
    await check_all_runs(http, truth)


def worker_log_tail(path: Path, lines: int = 40) -> str:
    return f"--- {path} ---\n" + log_tail(path, lines)
