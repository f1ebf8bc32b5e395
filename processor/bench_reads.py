"""`usage-stream bench --reads`: latency of the user and billing reads, and of invoicing.

1. One user with 1,000,000 accepted entries over 60 days and 40 models (written through
   the real validate, price and apply path), then p50/p99 over HTTP of the all-time,
   daily (30-day range), monthly and dashboard endpoints, one request at a time.
2. A period with 10,000 users: the time of ``POST /v1/billing/{period}/invoices``
   creating their invoices.
3. The budget check: a tree of 100 runs (a root, sub-agent children, grandchildren), then
   p50/p99 of ``GET /v1/budgets?runId=<root>`` (which walks the tree) and of the same with
   the user's windows added (``userId=&runId=``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from processor.batch_pipeline import retention_of
from processor.bench import cleanup_keys, percentile
from processor.connections import redis_client
from processor.domain.accept import accept_entry
from processor.domain.fold import AcceptedEntry
from processor.domain.pricing import PriceCatalog, load_catalog
from processor.invoicing import previous_period
from processor.local_worker import LocalWorker
from processor.settings import Settings
from processor.stack.connect import with_local_stack
from processor.stack.ports import pick_port
from processor.stack.settings import StackSettings
from processor.store.keys import Keys
from processor.store.runs import RunStore
from processor.topics import ensure_topics, namespaced
from schemas.entry import parse_entry

HEAVY_ENTRIES = 1_000_000
HEAVY_DAYS = 60
HEAVY_MODELS = 40
INVOICE_USERS = 10_000
#: the budget tree: a root, its children, and grandchildren under the first few children
BUDGET_CHILDREN = 19
BUDGET_PARENTS_OF_GRANDCHILDREN = 8
BUDGET_GRANDCHILDREN = 10
BUDGET_RUNS = 1 + BUDGET_CHILDREN + BUDGET_PARENTS_OF_GRANDCHILDREN * BUDGET_GRANDCHILDREN
_REQUESTS = 200
_DAY_MS = 86_400_000


def _models(catalog: PriceCatalog, n: int) -> list[str]:
    """``n`` priced model names of the built-in catalog (exact names, stable order)."""
    names: list[str] = []
    for model in catalog:
        if model.periods and model.exact and model.provider in ("openai", "anthropic", "google"):
            names.append(model.exact[0])
        if len(names) == n:
            return names
    raise RuntimeError(f"the catalog has fewer than {n} priced models")


def _entry(i: int, user: str, ts: int, model: str, rnd: random.Random) -> dict[str, Any]:
    run = f"{user}-run-{i // 1000}"
    common = {"id": f"{user}-{i}", "runId": run, "userId": user, "timestamp": ts}
    common["agentName"] = ("researcher", "coder", "support-bot", "planner")[(i // 1000) % 4]
    if i % 10 == 9:
        return {**common, "kind": "tool", "toolName": "web_search", "durationMs": 120,
                "success": i % 50 != 49}  # fmt: skip
    tokens = {"prompt": rnd.randint(50, 4000), "completion": rnd.randint(10, 1500)}
    return {**common, "kind": "tokens", "model": model, "tokens": tokens}


async def _write(settings: Settings, entries: Any, total: int) -> None:
    """Entries (dicts) through parse, price and the real batch step."""
    redis = redis_client(settings, decode_responses=True)
    store = RunStore(
        redis,
        Keys(settings.key_prefix),
        dedup_ttl_s=settings.dedup_retention_seconds,
        entry_ttl_s=settings.entry_retention_seconds,
        retention=retention_of(settings),
    )
    catalog = load_catalog(settings.prices_file)
    now = time.time_ns() // 1_000_000
    batch: list[AcceptedEntry] = []
    pending: asyncio.Task[Any] | None = None
    try:
        for entry in entries:
            raw = json.dumps(entry, separators=(",", ":")).encode()
            batch.append(accept_entry(parse_entry(raw, now_ms=now), raw, catalog))
            if len(batch) == settings.batch_max_entries:
                plan = store.plan(batch, now)
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(store.execute(plan))
                batch = []
        if pending is not None:
            await pending
        if batch:
            await store.apply(batch)
    finally:
        await redis.aclose()


def _heavy_user(settings: Settings, user: str) -> None:
    catalog = load_catalog(settings.prices_file)
    models = _models(catalog, HEAVY_MODELS)
    now = time.time_ns() // 1_000_000
    start = now - HEAVY_DAYS * _DAY_MS
    step = HEAVY_DAYS * _DAY_MS / HEAVY_ENTRIES
    rnd = random.Random(7)
    entries = (
        _entry(i, user, int(start + i * step), models[i % HEAVY_MODELS], rnd)
        for i in range(HEAVY_ENTRIES)
    )
    asyncio.run(_write(settings, entries, HEAVY_ENTRIES))


def _invoice_users(settings: Settings, period_start: datetime, prefix: str) -> None:
    base = int(period_start.timestamp() * 1000) + _DAY_MS
    rnd = random.Random(11)
    entries = (
        _entry(i, f"{prefix}-{i // 2:05d}", base + i, ("gpt-4o", "gpt-4o-mini")[i % 2], rnd)
        for i in range(INVOICE_USERS * 2)
    )
    asyncio.run(_write(settings, entries, INVOICE_USERS * 2))


def _budget_tree(settings: Settings, user: str, root: str) -> int:
    """A tree of :data:`BUDGET_RUNS` runs of ``user`` under ``root``, each with a few tokens
    and tool entries, children linked by ``subagent`` entries; returns the tree's tokens."""
    now = time.time_ns() // 1_000_000
    rnd = random.Random(17)
    children: dict[str, list[str]] = {root: [f"{root}-c{i:02d}" for i in range(BUDGET_CHILDREN)]}
    for child in children[root][:BUDGET_PARENTS_OF_GRANDCHILDREN]:
        children[child] = [f"{child}-g{j:02d}" for j in range(BUDGET_GRANDCHILDREN)]
    parent_of = {c: p for p, cs in children.items() for c in cs}
    runs = [root, *parent_of]
    assert len(runs) == BUDGET_RUNS
    entries: list[dict[str, Any]] = []
    tokens_total = 0
    for n, run in enumerate(runs):
        common: dict[str, Any] = {"runId": run, "userId": user, "timestamp": now - 60_000 + n}
        common["agentName"] = "planner"
        if run in parent_of:
            common["parentRunId"] = parent_of[run]
        for i in range(3):
            tokens = {"prompt": rnd.randint(50, 4000), "completion": rnd.randint(10, 1500)}
            tokens_total += tokens["prompt"] + tokens["completion"]
            entries.append({**common, "id": f"{run}-t{i}", "kind": "tokens",
                            "model": "gpt-4o-mini", "tokens": tokens})  # fmt: skip
        for i in range(2):
            entries.append({**common, "id": f"{run}-w{i}", "kind": "tool", "success": i == 0,
                            "toolName": "web_search", "durationMs": 90})  # fmt: skip
        for i, child in enumerate(children.get(run, ())):
            entries.append({**common, "id": f"{run}-s{i:02d}", "kind": "subagent",
                            "subAgentType": "researcher", "subAgentRunId": child,
                            "durationMs": 1200, "success": True})  # fmt: skip
    asyncio.run(_write(settings, entries, len(entries)))
    return tokens_total


async def _check_budget(url: str, params: dict[str, str], run_tokens: int) -> None:
    """The run rule's observed tokens must be the whole tree's (all 100 runs walked)."""
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as resp:
        body = await resp.json()
    if resp.status != 200:
        raise RuntimeError(f"{url} answered {resp.status}: {str(body)[:200]}")
    observed = [b["observed"] for b in body["budgets"] if b["subject"]["type"] == "run"]
    if observed != [str(run_tokens)]:
        raise RuntimeError(f"budget of the tree: observed {observed}, expected {run_tokens}")


async def _latencies(url: str, params: dict[str, str] | None) -> list[float]:
    out: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(_REQUESTS + 10):  # the first 10 warm the connection up
            t0 = time.perf_counter()
            async with session.get(url, params=params) as resp:
                body = await resp.read()
            elapsed = time.perf_counter() - t0
            if resp.status != 200:
                raise RuntimeError(f"{url} answered {resp.status}: {body[:200]!r}")
            if i >= 10:
                out.append(elapsed)
    return out


async def _generate(url: str) -> tuple[float, int]:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.perf_counter()
        async with session.post(url) as resp:
            body = await resp.json()
        elapsed = time.perf_counter() - t0
    if resp.status != 200:
        raise RuntimeError(f"invoice generation answered {resp.status}: {str(body)[:200]}")
    return elapsed, len(body["invoices"])


def run_read_bench(settings: Settings) -> int:
    stack = StackSettings()
    settings = with_local_stack(settings, stack)
    tag = f"benchr-{uuid.uuid4().hex[:8]}"
    settings = settings.model_copy(
        update={
            **namespaced(tag),
            # a free port: a demo or another worker may hold the default one
            "api_port": pick_port(settings.api_port),
        }
    )
    asyncio.run(ensure_topics(settings))
    user = "heavy-user"
    t0 = time.perf_counter()
    _heavy_user(settings, user)
    print(
        f"wrote {HEAVY_ENTRIES:,} entries of one user over {HEAVY_DAYS} days and "
        f"{HEAVY_MODELS} models in {time.perf_counter() - t0:.0f} s"
    )
    today = datetime.now(UTC)
    # two months back: the previous month is generated by the worker's start-up catch-up,
    # which would leave nothing for the timed request to create
    period = previous_period(today.replace(day=1) - timedelta(days=1))
    year, month = map(int, period.split("-"))
    _invoice_users(settings, datetime(year, month, 1, tzinfo=UTC), "inv-user")
    print(f"wrote {INVOICE_USERS * 2:,} entries of {INVOICE_USERS:,} users in {period}")
    budget_user, budget_root = "budget-user", "budget-root"
    budget_tokens = _budget_tree(settings, budget_user, budget_root)
    print(f"wrote a tree of {BUDGET_RUNS} runs of {budget_user} under {budget_root}")

    worker = LocalWorker(settings, Path(stack.stack_dir) / "bench-reads-worker.log")
    result: dict[str, Any] = {}
    try:
        worker.start()
        worker.wait_ready()
        base = f"{worker.url}/v1/users/{user}"
        first = (today - timedelta(days=29)).date().isoformat()
        reads = {
            "allTime": (f"{base}/usage", None),
            "daily30": (f"{base}/usage/daily", {"from": first, "to": today.date().isoformat()}),
            "monthly": (f"{base}/usage/monthly/{today:%Y-%m}", None),
            "dashboard": (f"{base}/dashboard", None),
        }
        for name, (url, params) in reads.items():
            lat = asyncio.run(_latencies(url, params))
            p50, p99 = percentile(lat, 0.5) * 1000, percentile(lat, 0.99) * 1000
            print(f"{name:<10} {_REQUESTS} requests over HTTP: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            result[f"{name}P50Ms"], result[f"{name}P99Ms"] = round(p50, 2), round(p99, 2)
        url = f"{worker.url}/v1/billing/{period}/invoices"
        took, count = asyncio.run(_generate(url))
        again, _ = asyncio.run(_generate(url))
        print(
            f"generated {count:,} invoices of {period} in {took:.1f} s "
            f"(asked again, nothing new: {again:.1f} s)"
        )
        result.update(
            invoices=count,
            invoiceGenerationSeconds=round(took, 1),
            invoiceRegenerationSeconds=round(again, 1),
        )
        url = f"{worker.url}/v1/budgets"
        budget_reads = {
            "budgetRun": {"runId": budget_root},
            "budgetUserRun": {"userId": budget_user, "runId": budget_root},
        }
        for name, params in budget_reads.items():
            asyncio.run(_check_budget(url, params, budget_tokens))
            lat = asyncio.run(_latencies(url, params))
            p50, p99 = percentile(lat, 0.5) * 1000, percentile(lat, 0.99) * 1000
            print(
                f"{name:<13} ({BUDGET_RUNS}-run tree) {_REQUESTS} requests over HTTP: "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
            )
            result[f"{name}P50Ms"], result[f"{name}P99Ms"] = round(p50, 2), round(p99, 2)
        print("result " + json.dumps(result))
    finally:
        worker.stop()
        asyncio.run(cleanup_keys(settings))
    return 0
