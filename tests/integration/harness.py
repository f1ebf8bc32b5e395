"""Helpers for tests against the real stack: settings, topics, produce/consume, workers.

Everything waits with a deadline and polls; nothing sleeps a fixed time to "let things
settle".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord, RecordMetadata

from processor.settings import ENV_PREFIX, Settings, settings_env
from processor.stack.ports import pick_port
from processor.stack.process import log_tail
from processor.stack.settings import StackSettings
from processor.topics import topic_configs

REPO_ROOT = Path(__file__).resolve().parents[2]
TOPIC_ALREADY_EXISTS = 36

T = TypeVar("T")


# --- settings --------------------------------------------------------------------------


@contextlib.contextmanager
def _without_usage_env() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def build_settings(**values: Any) -> Settings:
    """``Settings`` from explicit values only: no USAGE_* variables, no ``.env`` file."""
    with _without_usage_env():
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def stack_settings(stack_dir: Path) -> StackSettings:
    """The local stack's settings with its state in ``stack_dir``; the jar cache and the
    Kafka version from ``USAGE_CACHE_DIR`` / ``USAGE_KAFKA_VERSION`` as make and CI set
    them (never from a ``.env``)."""
    return StackSettings(_env_file=None, stack_dir=stack_dir)  # type: ignore[call-arg]


def unique_settings(kafka_bootstrap: str, redis_url: str, **overrides: Any) -> Settings:
    """Settings for one test: its own app id (consumer group), topics, key prefix, port."""
    u = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "app_id": f"test-{u}",
        "key_prefix": f"t{u}",
        "topic_entries": f"{u}.usage.entries",
        "topic_dlq": f"{u}.usage.entries.dlq",
        "topic_notifications": f"{u}.usage.notifications",
        "topic_invoices": f"{u}.usage.invoices",
        "topic_outbox_progress": f"{u}.usage.outbox.progress",
        "topic_partitions": 4,
        "api_host": "127.0.0.1",
        "api_port": pick_port(),
    }
    values.update(overrides)
    return build_settings(**values)


# --- waiting ---------------------------------------------------------------------------


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    message: str | None = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    message: str | None = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.1,
    message: str | None = None,
) -> T:
    """Call ``predicate`` (sync or async) until it returns something truthy; return that.

    Raises TimeoutError (with ``message`` and the last value) at the deadline.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = predicate()
        last = await result if inspect.isawaitable(result) else result
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{message or 'condition'} not met within {timeout}s (last value: {last!r})"
            )
        await asyncio.sleep(interval)


# --- Kafka -----------------------------------------------------------------------------


def owned_topics(settings: Settings) -> list[str]:
    return [
        settings.topic_entries,
        settings.topic_dlq,
        settings.topic_notifications,
        settings.topic_invoices,
    ]


async def create_topics(
    settings: Settings, topics: list[str] | None = None, partitions: int | None = None
) -> None:
    """Create the settings' topics (or ``topics``) and wait until every partition has a leader."""
    names = topics if topics is not None else owned_topics(settings)
    count = partitions or settings.topic_partitions
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(
                    n, count, settings.topic_replication, topic_configs=topic_configs(settings, n)
                )
                for n in names
            ],
            timeout_ms=30_000,
        )
        for topic, code, *rest in response.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"creating topic {topic} failed: error {code} {rest}")
    finally:
        await admin.close()

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:

        async def ready() -> bool:
            await consumer._client.force_metadata_update()
            return all(len(consumer.partitions_for_topic(name) or ()) >= count for name in names)

        await wait_for(ready, timeout=30, interval=0.2, message=f"topics {names} ready")
    finally:
        await consumer.stop()


async def produce(
    settings: Settings, topic: str, messages: list[tuple[bytes | None, bytes]]
) -> list[RecordMetadata]:
    """Send ``(key, value)`` messages with acks=all and wait until every one is acknowledged."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key) for key, value in messages]
        await producer.flush()
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def consume_all(
    settings: Settings, topic: str, expected_count: int, timeout: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the earliest offset until ``expected_count`` records or the deadline.

    Uses no consumer group at all (every partition assigned by hand), so it is always a
    fresh reader and never joins or disturbs the worker's group. Returns what it got;
    the caller asserts on the count.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:

        async def partitions() -> set[int]:
            await consumer._client.force_metadata_update()
            return consumer.partitions_for_topic(topic) or set()

        parts = await wait_for(partitions, timeout=timeout, interval=0.2, message=f"{topic} exists")
        assigned = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        deadline = time.monotonic() + timeout
        while len(records) < expected_count and time.monotonic() < deadline:
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            batch = await consumer.getmany(timeout_ms=min(500, remaining_ms))
            for tp_records in batch.values():
                records.extend(tp_records)
    finally:
        await consumer.stop()
    return records


# --- worker processes ------------------------------------------------------------------


class WorkerProcess:
    """One ``python -m processor.cli worker`` subprocess configured from a Settings object.

    It runs in its own process group with a scrubbed environment (no ambient USAGE_*
    variables) and a working directory without a ``.env``; output goes to ``log_path``.
    """

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        *,
        args: tuple[str, ...] = ("worker",),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.log_path = Path(log_path)
        self.args = args
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    @property
    def ops_url(self) -> str:
        """/metrics, /healthz and /readyz: the API's port unless USAGE_METRICS_PORT is set."""
        return f"http://127.0.0.1:{self.settings.operations_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
        env.update(settings_env(self.settings))
        pythonpath = [str(REPO_ROOT)]
        if env.get("PYTHONPATH"):
            pythonpath.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def start(self) -> WorkerProcess:
        """Start (or, after it exited, restart) the worker; the log file is appended to."""
        if self.alive:
            raise RuntimeError(f"worker pid {self.pid} is still running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {' '.join(self.args)} at {time.time():.3f} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "processor.cli", *self.args],
                cwd=self.log_path.parent,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll ``/readyz`` until it answers 200; fail early, with the log, if the worker dies."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise RuntimeError(
                        f"worker exited with {self.returncode} before it was ready\n"
                        + self.log_tail()
                    )
                try:
                    response = await client.get(self.ops_url + "/readyz")
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
                await asyncio.sleep(0.2)
        raise TimeoutError(f"worker not ready within {timeout}s (last: {last})\n" + self.log_tail())

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self, sig: int = signal.SIGKILL, wait: float = 10.0) -> int | None:
        """Send ``sig`` to the worker's process group; for SIGKILL, wait until it is gone."""
        self._signal(sig)
        if self.proc is not None and sig == signal.SIGKILL:
            return self.proc.wait(timeout=wait)
        return self.returncode

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        self._signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self.proc.wait(timeout=10)

    async def aterminate(self, timeout: float = 30.0) -> int | None:
        """``terminate`` without blocking the event loop."""
        return await asyncio.to_thread(self.terminate, timeout)

    def log_tail(self, lines: int = 60) -> str:
        return f"--- {self.log_path} ---\n" + log_tail(self.log_path, lines)

    async def __aenter__(self) -> WorkerProcess:
        self.start()
        try:
            await self.wait_ready()
        except BaseException:
            await self.aterminate(timeout=10)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aterminate()
