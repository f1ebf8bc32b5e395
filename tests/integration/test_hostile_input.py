"""No input, however hostile, stalls a partition, crashes a worker or half-applies a batch.

Against a real worker, Kafka and Redis: a partition carrying small runs, then one run with
thousands of distinct models, tools and custom names, then maximum-size entries, then
normal runs; entries with extreme numbers over Kafka and over HTTP; and a message that
makes preparation itself raise (through the real consumer, in this process).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from processor.batch_pipeline import IngestPipeline, now_ms
from processor.consumer import IngestConsumer, ingest_group_id
from processor.domain.pricing import PriceCatalog, load_catalog
from processor.metrics import UsageMetrics
from processor.publisher import Publisher
from processor.settings import Settings
from processor.store.keys import Keys
from processor.store.run_queries import RunQueries
from processor.store.runs import RunStore
from tests.integration.ground_truth import (
    GroundTruth,
    check_run,
    fetch_metrics,
    metric_sum,
    wait_caught_up,
)
from tests.integration.harness import (
    WorkerProcess,
    consume_all,
    create_topics,
    produce,
    wait_for,
)

FULL = {"prompt": 1000, "completion": 500, "reasoning": 100, "cached": 300, "cacheWrite": 200}


def strict_json(text: str) -> Any:
    """RFC 8259 only: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def base(run: str, i: int, ts: int) -> dict[str, Any]:
    return {"id": f"{run}-{i}", "runId": run, "userId": "hostile-user", "timestamp": ts + i}


async def test_one_partition_with_a_giant_run_and_maximum_size_entries_never_stalls(
    settings: Settings, tmp_path: Path
) -> None:
    ts = now_ms() - 3_600_000
    entries: list[dict[str, Any]] = []
    for r in range(20):
        entries += [
            {**base(f"before-{r}", i, ts), "kind": "tokens", "model": "gpt-4o-mini",
             "tokens": {"prompt": 10, "completion": 5}}
            for i in range(10)
        ]  # fmt: skip
    entries += [
        {**base("giant", i, ts), "kind": "tokens", "model": f"model-{i}", "tokens": FULL}
        for i in range(3000)
    ]
    entries += [
        {**base("giant", 3000 + i, ts), "kind": "tool", "toolName": f"tool-{i}",
         "durationMs": 2.5, "success": i % 3 != 0}
        for i in range(3000)
    ]  # fmt: skip
    entries += [
        {**base("giant", 6000 + i, ts), "kind": "custom", "type": f"type-{i}", "name": "n",
         "value": 0.1}
        for i in range(3000)
    ]  # fmt: skip
    pad = "x" * (64 * 1024 - 400)
    entries += [
        {**base("max-size", i, ts), "kind": "tool", "toolName": "t", "durationMs": 1,
         "success": False, "error": pad}
        for i in range(150)
    ]  # fmt: skip
    for r in range(20):
        entries += [
            {**base(f"after-{r}", i, ts), "kind": "custom", "type": "api_calls",
             "name": "tavily", "value": 1}
            for i in range(10)
        ]  # fmt: skip
    assert max(len(json.dumps(e)) for e in entries) <= 64 * 1024
    truth = GroundTruth(load_catalog(None))
    truth.add_all(entries)

    await create_topics(settings)
    # one key: every entry in one partition, in this order
    await produce(
        settings, settings.topic_entries, [(b"p", json.dumps(e).encode()) for e in entries]
    )
    async with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        await wait_caught_up(settings, ingest_group_id(settings), timeout=180)
        async with httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http:
            for run in truth.runs:
                await check_run(http, truth, run, entries=run not in ("giant",))
            metrics = await fetch_metrics(http)
            assert metric_sum(metrics, "usage_entries_total", outcome="accepted") == len(entries)
            assert metric_sum(metrics, "usage_entries_total", outcome="duplicate") == 0
            assert metric_sum(metrics, "usage_batch_apply_failures_total") == 0
        assert worker.alive


def extreme_entries(ts: int) -> list[tuple[bytes, str | None]]:
    """(raw bytes, the dead-letter code expected, or None when it must apply)."""

    def tool(i: int, duration: Any) -> dict[str, Any]:
        return {**base("x-tool", i, ts), "kind": "tool", "toolName": "t",
                "durationMs": duration, "success": True}  # fmt: skip

    def custom(i: int, value: Any) -> dict[str, Any]:
        return {**base("x-custom", i, ts), "kind": "custom", "type": "t", "name": "n",
                "value": value}  # fmt: skip

    def tokens(i: int, **counts: int) -> dict[str, Any]:
        return {**base("x-tokens", i, ts), "kind": "tokens", "model": "gpt-4o",
                "tokens": counts}  # fmt: skip

    def enc(e: dict[str, Any]) -> bytes:
        return json.dumps(e).encode()

    return [
        (enc(tool(0, 1e308)), "schema"),
        (enc(tool(1, 1e10)), None),
        (enc(tool(2, -0.0)), None),
        (enc(tool(3, 5e-324)), None),
        (enc(tool(4, 10**10 + 1)), "schema"),
        (enc(custom(10, 1e308)), "schema"),
        (enc(custom(11, 1e15)), None),
        (enc(custom(12, -1e15)), None),
        (enc(custom(13, 5e-324)), None),
        (enc(custom(14, -0.0)), None),
        (enc(custom(15, 0.1)), None),
        (enc(tokens(20, prompt=2**63)), "schema"),
        # priced, 2**53 - 2 prompt tokens of gpt-4o cost more than a 64-bit counter holds
        (enc(tokens(22, prompt=2**53 - 2)), "invariant"),
        (enc(tokens(23, prompt=1000, completion=10)), None),
        (b'{"id": "x-nan", "kind": "custom", "runId": "x-custom", "userId": "u", '
         b'"timestamp": %d, "type": "t", "name": "n", "value": NaN}' % ts, "json"),
        (b'{"id": "x-inf", "kind": "tool", "runId": "x-tool", "userId": "u", '
         b'"timestamp": %d, "toolName": "t", "durationMs": Infinity, "success": true}' % ts,
         "json"),
        (b"[1, 2]", "schema"),
        (b"", "json"),
    ]  # fmt: skip


async def test_extreme_numbers_over_kafka_apply_exactly_or_dead_letter(
    settings: Settings, tmp_path: Path
) -> None:
    ts = now_ms() - 60_000
    cases = extreme_entries(ts)
    await create_topics(settings)
    await produce(settings, settings.topic_entries, [(b"x", raw) for raw, _ in cases])
    async with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        await wait_caught_up(settings, ingest_group_id(settings), timeout=120)
        want_codes = sorted(code for _, code in cases if code is not None)
        letters = await consume_all(settings, settings.topic_dlq, len(want_codes))
        assert sorted(json.loads(r.value)["error"]["code"] for r in letters) == want_codes
        async with httpx.AsyncClient(base_url=worker.url, timeout=10.0) as http:
            await check_extremes(http)
        assert worker.alive


async def check_extremes(http: httpx.AsyncClient) -> None:
    tool = strict_json((await http.get("/v1/runs/x-tool/rollup")).text)
    assert tool["toolStats"]["totalCalls"] == 3
    assert tool["toolStats"]["totalDurationMs"] == 10**10  # 1e10 + 0 + (5e-324 -> 0 us)
    custom = strict_json((await http.get("/v1/runs/x-custom/rollup")).text)
    # 1e15 - 1e15 + 0 + 0 + 0.1, at nine decimals (5e-324 counts as 0)
    assert Decimal(repr(custom["custom"]["t"]["n"])) == Decimal("0.1")
    assert custom["entryCount"] == 5
    tokens = strict_json((await http.get("/v1/runs/x-tokens/rollup")).text)
    assert tokens["entryCount"] == 1 and tokens["tokens"]["prompt"] == 1000
    for run in ("x-tool", "x-custom", "x-tokens"):
        for include in ("true", "false"):
            r = await http.get(f"/v1/runs/{run}/rollup", params={"includeSubAgents": include})
            strict_json(r.text)
        strict_json((await http.get(f"/v1/runs/{run}/entries")).text)


async def test_extreme_numbers_over_http_apply_exactly_or_are_rejected(
    settings: Settings, tmp_path: Path
) -> None:
    ts = now_ms() - 60_000
    cases = [(raw, code) for raw, code in extreme_entries(ts) if code not in ("json", None)]
    cases = [c for c in cases if c[0].startswith(b"{")]
    applied = [(raw, code) for raw, code in extreme_entries(ts) if code is None]
    bodies = [json.loads(raw) for raw, _ in cases + applied]
    await create_topics(settings)
    async with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        async with httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http:
            response = await http.post("/v1/entries", json={"entries": bodies})
            assert response.status_code == 202, response.text
            answer = response.json()
            # validation answers at once; an overflow is only found when applied (DLQ)
            rejected = {r["index"]: r["error"]["code"] for r in answer["rejected"]}
            assert rejected == {i: code for i, (_, code) in enumerate(cases) if code != "invariant"}
            overflow = sum(code == "invariant" for _, code in cases)
            assert answer["accepted"] == len(applied) + overflow

            async def settled() -> bool:
                m = await fetch_metrics(http)
                done = metric_sum(m, "usage_entries_total", outcome="accepted")
                return done == len(applied)

            await wait_for(settled, timeout=60, message="HTTP entries applied")
            await check_extremes(http)
        assert worker.alive


async def test_a_message_that_breaks_preparation_is_dead_lettered_as_internal(
    settings: Settings,
) -> None:
    """Through the real consumer and publisher: a catalog that raises on one model
    stands in for a bug of ours; that message goes to the DLQ as `internal`, the ones
    after it apply, and the consumer goes on."""

    class ExplodingCatalog(PriceCatalog):
        def price_tokens(self, model: str, **kw: Any) -> Any:
            if model == "explode":
                raise ZeroDivisionError("a bug of ours")
            return super().price_tokens(model, **kw)

    catalog = ExplodingCatalog.__new__(ExplodingCatalog)
    catalog.__dict__.update(load_catalog(None).__dict__)
    ts = now_ms() - 60_000

    def llm(i: int, model: str) -> bytes:
        body = {**base("boom", i, ts), "kind": "tokens", "model": model,
                "tokens": {"prompt": 10, "completion": 1}}  # fmt: skip
        return json.dumps(body).encode()

    await create_topics(settings)
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = Keys(settings.key_prefix)
    store = RunStore(redis, keys, dedup_ttl_s=3600, entry_ttl_s=3600)
    metrics = UsageMetrics()
    publisher = Publisher(settings)
    pipeline = IngestPipeline(
        settings=settings,
        catalog=catalog,
        runs=store,
        metrics=metrics,
        publish_dead_letters=lambda letters: publisher.publish(settings.topic_dlq, letters),
    )
    consumer = IngestConsumer(settings, pipeline, store, metrics)
    await publisher.start()
    await consumer.start()
    try:
        await produce(
            settings,
            settings.topic_entries,
            [(b"k", llm(0, "gpt-4o")), (b"k", llm(1, "explode")), (b"k", llm(2, "gpt-4o"))],
        )
        queries = RunQueries(redis, keys, children_limit=10)

        async def applied() -> bool:
            run = await queries.get_rollup("default", "boom")
            return run is not None and run.entry_count == 2

        await wait_for(applied, timeout=60, message="the two good entries applied")
        letters = await consume_all(settings, settings.topic_dlq, expected_count=1)
        assert len(letters) == 1
        letter = json.loads(letters[0].value)
        assert letter["error"]["code"] == "internal"
        assert json.loads(letter["value"])["model"] == "explode"
        # and the consumer goes on
        await produce(settings, settings.topic_entries, [(b"k", llm(3, "gpt-4o"))])

        async def three() -> bool:
            run = await queries.get_rollup("default", "boom")
            return run is not None and run.entry_count == 3

        await wait_for(three, timeout=60, message="a later entry applied")
        rejected = metrics.registry.get_sample_value(
            "usage_dead_letters_total", {"reason": "internal"}
        )
        assert rejected == 1
    finally:
        await consumer.stop()
        await publisher.stop()
        await redis.aclose()
