"""Shared helpers of the unit tests: a real redis-server, entry builders, an app factory.

The fixtures built on them are in tests/unit/conftest.py; their self-checks in
test_api_support.py.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from processor.api.context import ApiContext, Readiness
from processor.api.routes import setup_routes
from processor.domain.counts import TokenCounts
from processor.domain.fields import custom_to_nano, duration_to_us
from processor.domain.fold import AcceptedEntry
from processor.domain.money import format_usd
from processor.metrics import UsageMetrics
from processor.settings import Settings
from processor.stack import redis_server as redis_mod
from processor.stack.ports import LOOPBACK, pick_port
from processor.store.keys import Keys
from processor.store.run_queries import RunQueries
from processor.store.runs import RunStore

T0 = 1_700_000_000_000


@contextmanager
def redis_server() -> Iterator[str]:
    """A throw-away redis-server on loopback without persistence; yields its URL.

    Started by the local stack's launcher (processor/stack/redis_server.py), with AOF and
    snapshots off.
    """
    with tempfile.TemporaryDirectory(prefix="api-test-redis-") as tmp:
        layout = redis_mod.RedisLayout(Path(tmp))
        port = pick_port()
        redis_mod.write_config(layout, port, appendonly=False, snapshots=False)
        proc = redis_mod.launch(redis_mod.install_redis(), layout)
        try:
            deadline = time.monotonic() + 10
            while not redis_mod.ping(LOOPBACK, port, timeout=0.2):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start\n{layout.tail()}")
                time.sleep(0.02)  # the polling interval of the deadline loop above
            yield f"redis://{LOOPBACK}:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def unique_prefix() -> str:
    return f"apitest-{uuid.uuid4().hex[:12]}"


def make_store(redis: Redis, prefix: str) -> RunStore:
    return RunStore(redis, Keys(prefix), dedup_ttl_s=3600, entry_ttl_s=3600)


def make_settings(prefix: str, **overrides: Any) -> Settings:
    return Settings(_env_file=None, key_prefix=prefix, **overrides)  # type: ignore[call-arg]


def ready_probe(ready: bool = True) -> Callable[[], Awaitable[Readiness]]:
    async def probe() -> Readiness:
        return Readiness(kafka=ready, redis=True, partitions_assigned=ready, detail="d")

    return probe


def make_queries(
    store: RunStore, settings: Settings, metrics: UsageMetrics | None = None
) -> RunQueries:
    """The API's reader over the same Redis and key prefix as ``store``."""
    return RunQueries(
        store._redis,
        store._keys,
        children_limit=settings.subagent_children_limit,
        metrics=metrics,
    )


def build_app(
    settings: Settings,
    store: RunStore,
    readiness: Callable[[], Awaitable[Readiness]] | None = None,
    registry: CollectorRegistry | None = None,
    metrics: UsageMetrics | None = None,
) -> web.Application:
    app = web.Application()
    ctx = ApiContext(
        settings=settings,
        runs=make_queries(store, settings, metrics),
        registry=registry or (metrics.registry if metrics else CollectorRegistry()),
        readiness=readiness or ready_probe(),
        metrics=metrics,
    )
    setup_routes(app, ctx)
    return app


# --- entry builders: the wire JSON and the AcceptedEntry agree ---------------------------

_counter = iter(range(10**9))


def _entry(kind: str, run: str, ts: int, wire: dict[str, Any], **fields: Any) -> AcceptedEntry:
    entry_id = wire.pop("id", None) or f"e{next(_counter):06d}"
    tenant = fields.pop("tenant", "default")
    user = fields.pop("user", "u1")
    agent = fields.pop("agent", None)
    step = fields.pop("step", None)
    body: dict[str, Any] = {"id": entry_id, "kind": kind, "runId": run, "userId": user}
    if tenant != "default":
        body["tenantId"] = tenant
    body["timestamp"] = ts
    if step is not None:
        body["stepCount"] = step
    if agent is not None:
        body["agentName"] = agent
    body.update(wire)
    return AcceptedEntry(
        entry_id=entry_id,
        kind=kind,
        tenant_id=tenant,
        run_id=run,
        user_id=user,
        timestamp=ts,
        agent_name=agent,
        wire_json=json.dumps(body),
        **fields,
    )


def tokens(
    run: str, ts: int, model: str, prompt: int, completion: int, cost_pico: int, **kw: Any
) -> AcceptedEntry:
    counts = TokenCounts(
        prompt=prompt,
        completion=completion,
        reasoning=kw.pop("reasoning", 0),
        cached=kw.pop("cached", 0),
        cache_write=kw.pop("cache_write", 0),
        total=prompt + completion,
    )
    wire = {
        "id": kw.pop("id", None),
        "model": model,
        "tokens": {"prompt": prompt, "completion": completion},
        "costUsd": format_usd(cost_pico),
    }
    return _entry("tokens", run, ts, wire, model=model, tokens=counts, cost_pico=cost_pico, **kw)


def tool(run: str, ts: int, name: str, ok: bool, ms: float, **kw: Any) -> AcceptedEntry:
    wire = {"id": kw.pop("id", None), "toolName": name, "durationMs": ms, "success": ok}
    return _entry(
        "tool", run, ts, wire, call_name=name, success=ok, duration_us=duration_to_us(ms), **kw
    )


def subagent(
    run: str, ts: int, sa_type: str, child: str, ok: bool = True, ms: float = 10, **kw: Any
) -> AcceptedEntry:
    wire = {
        "id": kw.pop("id", None),
        "subAgentType": sa_type,
        "subAgentRunId": child,
        "durationMs": ms,
        "success": ok,
    }
    return _entry(
        "subagent",
        run,
        ts,
        wire,
        call_name=sa_type,
        success=ok,
        duration_us=duration_to_us(ms),
        child_run_id=child,
        **kw,
    )


def custom(run: str, ts: int, ctype: str, name: str, value: float, **kw: Any) -> AcceptedEntry:
    wire = {"id": kw.pop("id", None), "type": ctype, "name": name, "value": value}
    return _entry(
        "custom",
        run,
        ts,
        wire,
        custom_type=ctype,
        custom_name=name,
        custom_nano=custom_to_nano(value),
        **kw,
    )
