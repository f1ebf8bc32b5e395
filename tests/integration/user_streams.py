"""Helpers of the user-window and invoice tests: settings, entry streams, Redis progress,
the invoices topic read as a billing consumer does, and the invoices CLI as a subprocess.

Everything waits by polling with a deadline; nothing sleeps to "let things settle".
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.settings import Settings
from processor.store.keys import Keys
from tests.integration.ground_truth import Entry, usd
from tests.integration.harness import WorkerProcess, wait_for

#: Priced models (the catalog's first price periods cover 2020 on) and one unknown (cost 0).
MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "claude-3-5-sonnet-20241022",
    "claude-3-opus-20240229",
    "gemini-2.0-flash",
    "acme-llm-9000",
)
AGENTS = ("researcher", "coder", "planner", None)  # None: no agentName ("unknown")
KINDS = ("tokens", "tool", "subagent", "custom")
INVOICES_OUTBOX = "invoices"  # Keys(prefix).outbox("invoices"): what the relay publishes


def window_settings(settings: Settings, **updates: Any) -> Settings:
    """The test's settings for old timestamps: hour and day windows kept forever (0)."""
    values: dict[str, Any] = {"hour_retention_seconds": 0, "day_retention_seconds": 0}
    values.update(updates)
    return settings.model_copy(update=values)


# --- entries ----------------------------------------------------------------------------


class EntryMaker:
    """Random valid entries of all four kinds for a fixed set of users (deterministic per
    seed). Each run belongs to one user; agentName varies per entry, sometimes absent."""

    def __init__(
        self,
        seed: int,
        prefix: str,
        users: Sequence[str],
        *,
        runs_per_user: int = 5,
        tenant: str | None = None,
        run_prefix: str | None = None,
    ) -> None:
        self.rnd = random.Random(seed)
        self.prefix = prefix
        self.run_prefix = run_prefix or prefix
        self.users = list(users)
        self.runs_per_user = runs_per_user
        self.tenant = tenant
        self.count = 0

    def entry(
        self,
        ts: int,
        *,
        user: str | None = None,
        kind: str | None = None,
        cost: str | None = None,
        model: str | None = None,
    ) -> Entry:
        """One entry at ``ts``; ``cost`` forces a tokens entry with that producer costUsd."""
        rnd = self.rnd
        user = user if user is not None else rnd.choice(self.users)
        self.count += 1
        run = f"{self.run_prefix}-u{self.users.index(user)}-r{rnd.randrange(self.runs_per_user)}"
        e: Entry = {
            "id": f"{self.prefix}-e{self.count}",
            "runId": run,
            "userId": user,
            "timestamp": ts,
            "stepCount": rnd.randint(0, 40),
        }
        agent = rnd.choice(AGENTS)
        if agent is not None:
            e["agentName"] = agent
        if self.tenant is not None:
            e["tenantId"] = self.tenant
        if cost is not None:
            kind = "tokens"
        kind = kind or rnd.choices(KINDS, weights=(60, 15, 7, 18))[0]
        e["kind"] = kind
        if kind == "tokens":
            e["model"] = model or rnd.choice(MODELS)
            e["tokens"] = self._tokens()
            if cost is not None:
                e["costUsd"] = cost
            elif rnd.random() < 0.08:
                e["costUsd"] = usd(Decimal(rnd.randint(0, 3 * 10**9)).scaleb(-12))
        elif kind == "tool":
            ok = rnd.random() > 0.2
            e.update(toolName=rnd.choice(("web_search", "sql")), durationMs=rnd.randint(1, 900))
            e["success"] = ok
            if not ok:
                e["error"] = "timeout"
        elif kind == "subagent":
            e.update(
                subAgentType=rnd.choice(("researcher", "critic")),
                subAgentRunId=f"{run}-child",
                durationMs=rnd.randint(10, 9000) + 0.5,
                success=rnd.random() > 0.1,
            )
        else:
            e.update(
                type=rnd.choice(("api_calls", "credits")),
                name=rnd.choice(("tavily", "serpapi")),
                value=rnd.choice((1, 2, 3, -2.5, 0.25)),
            )
        return e

    def _tokens(self) -> dict[str, int]:
        rnd = self.rnd
        shape = rnd.random()
        if shape < 0.05:
            return {"total": rnd.randint(1, 40_000)}  # priced at input, counted as given
        if shape < 0.08:
            return {"completion": rnd.randint(0, 3_000)}
        prompt, completion = rnd.randint(0, 20_000), rnd.randint(0, 4_000)
        tokens = {"prompt": prompt, "completion": completion}
        if rnd.random() < 0.3:
            tokens["cached"] = rnd.randint(0, prompt // 2)
        if rnd.random() < 0.15:
            tokens["cacheWrite"] = rnd.randint(0, prompt - tokens.get("cached", 0))
        if rnd.random() < 0.2:
            tokens["reasoning"] = rnd.randint(0, completion)
        if rnd.random() < 0.1:
            tokens["total"] = prompt + completion
        return tokens

    def many(self, stamps: Iterable[int], **kwargs: Any) -> list[Entry]:
        return [self.entry(ts, **kwargs) for ts in stamps]


def shuffled(entries: Sequence[Entry], seed: int) -> list[Entry]:
    out = list(entries)
    random.Random(seed).shuffle(out)
    return out


# --- Redis -----------------------------------------------------------------------------


def decoding_redis(settings: Settings) -> aioredis.Redis:
    client: aioredis.Redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    return client


async def applied_count(redis: aioredis.Redis, settings: Settings) -> int:
    """Entries the worker applied (first sightings only, every tenant): ``p:stats``."""
    raw = await redis.hget(Keys(settings.key_prefix).stats(), "applied")  # type: ignore[misc]
    return int(raw or 0)


async def wait_applied(
    redis: aioredis.Redis,
    settings: Settings,
    count: int,
    timeout: float = 120.0,
    workers: Sequence[WorkerProcess] = (),
) -> None:
    """Until the worker applied ``count`` distinct entries; fails with the logs otherwise."""

    async def done() -> bool:
        return await applied_count(redis, settings) >= count

    try:
        await wait_for(done, timeout=timeout, interval=0.1, message=f"{count} entries applied")
    except TimeoutError as exc:
        got = await applied_count(redis, settings)
        logs = "\n".join(w.log_tail() for w in workers)
        raise AssertionError(f"{exc} (applied: {got})\n{logs}") from None


async def outbox_length(redis: aioredis.Redis, settings: Settings) -> int:
    return int(await redis.xlen(Keys(settings.key_prefix).outbox(INVOICES_OUTBOX)))


async def wait_outbox_empty(
    redis: aioredis.Redis,
    settings: Settings,
    timeout: float = 60.0,
    workers: Sequence[WorkerProcess] = (),
) -> None:
    """Until the invoices outbox holds nothing: every message decided has been published
    (the relay deletes an entry only after its transaction committed)."""

    async def empty() -> bool:
        return await outbox_length(redis, settings) == 0

    try:
        await wait_for(empty, timeout=timeout, interval=0.1, message="invoices outbox drained")
    except TimeoutError as exc:
        left = await outbox_length(redis, settings)
        logs = "\n".join(w.log_tail() for w in workers)
        raise AssertionError(
            f"{exc}: {left} message(s) still in {Keys(settings.key_prefix).outbox('invoices')} "
            f"(is the worker relaying the invoices outbox to {settings.topic_invoices}?)\n{logs}"
        ) from None


# --- the invoices topic ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    key: str | None
    value: dict[str, Any]
    partition: int
    offset: int


async def read_committed(settings: Settings, topic: str, timeout: float = 60.0) -> list[Published]:
    """Every committed message of ``topic`` (as a ``read_committed`` billing consumer sees
    it), each partition read from the start up to its last stable offset."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list[Published] = []
    try:

        async def known() -> set[int]:
            await consumer._client.force_metadata_update()
            return consumer.partitions_for_topic(topic) or set()

        found = await wait_for(known, timeout=30, interval=0.2, message=f"{topic} metadata")
        parts = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)  # read_committed: last stable offsets
        await consumer.seek_to_beginning(*parts)

        async def done() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    key = None if r.key is None else r.key.decode()
                    out.append(Published(key, json.loads(r.value), r.partition, r.offset))
            return all([await consumer.position(tp) >= ends[tp] for tp in parts])

        await wait_for(done, timeout=timeout, interval=0, message=f"{topic} read to its end")
    finally:
        await consumer.stop()
    return out


def by_type(messages: Iterable[Published]) -> dict[str, list[Published]]:
    out: dict[str, list[Published]] = {}
    for m in messages:
        out.setdefault(str(m.value.get("type")), []).append(m)
    return out


def invoice_counts(messages: Iterable[Published]) -> Counter[str]:
    """invoiceId -> how many ``invoice`` messages carry it."""
    return Counter(
        m.value["invoice"]["invoiceId"] for m in messages if m.value.get("type") == "invoice"
    )


# --- the invoices CLI ----------------------------------------------------------------------


def usage_stream_script() -> str:
    """The ``usage-stream`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "usage-stream"
    assert script.exists(), f"{script} missing: is the package installed in the venv?"
    return str(script)


class CliRun:
    """``usage-stream <args>`` in a subprocess with exactly the test's settings (scrubbed
    environment, no .env); output to ``log_path``."""

    def __init__(self, settings: Settings, log_path: Path, *args: str) -> None:
        self.args = args
        self.log_path = log_path
        env = WorkerProcess(settings, log_path).env()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [usage_stream_script(), *args],
            cwd=log_path.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        try:
            while self.proc.poll() is None:
                if time.monotonic() > deadline:
                    self.proc.kill()
                    self.proc.wait(10)
                    raise AssertionError(f"usage-stream {' '.join(self.args)} hung\n{self.output}")
                await asyncio.sleep(0.05)
        finally:
            if self.proc.poll() is not None:
                self._log.close()
        return self.proc.returncode

    @property
    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
