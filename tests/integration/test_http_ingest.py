"""HTTP ingest end to end (CONTRACT §3.5b) on a real worker, Kafka and Redis.

A batch of valid and invalid entries is POSTed with an API key: the valid ones reach the
run's rollup (under the key's tenant), the invalid ones are on the DLQ topic in the §5
format, and POSTing the same batch again changes nothing in the rollup (ids deduplicate).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from pydantic import SecretStr

from processor.consumer import ingest_group_id
from processor.settings import Settings
from schemas.deadletter import DeadLetter
from tests.integration.ground_truth import fetch_metrics, metric_sum, wait_caught_up
from tests.integration.harness import WorkerProcess, consume_all, create_topics, wait_for

KEY = "http-ingest-key"
TENANT = "acme"
AUTH = {"Authorization": f"Bearer {KEY}"}


def batch(prefix: str, now: int) -> tuple[list[Any], str]:
    run = f"{prefix}-run"
    base = {"runId": run, "userId": f"{prefix}-user", "agentName": "planner"}
    entries: list[Any] = [
        {**base, "id": f"{prefix}-t1", "kind": "tokens", "timestamp": now - 3000,
         "model": "gpt-4o-mini", "tokens": {"prompt": 100, "completion": 20},
         "costUsd": "0.0012"},
        {**base, "id": f"{prefix}-bad-field", "kind": "tokens", "timestamp": now,
         "model": "gpt-4o-mini", "tokens": {"prompt": 1}, "modle": "typo"},
        {**base, "id": f"{prefix}-tool", "kind": "tool", "timestamp": now - 2000,
         "toolName": "search", "durationMs": 40, "success": False, "error": "timeout"},
        "not an entry",
        {**base, "id": f"{prefix}-t2", "kind": "tokens", "timestamp": now - 1000,
         "model": "gpt-4o-mini", "tokens": {"prompt": 7, "completion": 3, "total": 10},
         "costUsd": "0.0003", "tenantId": TENANT},
        {**base, "id": f"{prefix}-other", "kind": "tokens", "timestamp": now,
         "model": "gpt-4o-mini", "tokens": {"prompt": 1}, "tenantId": "someone-else"},
    ]  # fmt: skip
    return entries, run


async def test_http_batch_reaches_rollup_and_dlq_and_retries_change_nothing(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    settings = settings.model_copy(update={"api_keys": SecretStr(f"{KEY}:{TENANT}")})
    entries, run = batch(settings.app_id, time.time_ns() // 1_000_000)
    body = {"entries": entries}
    await create_topics(settings)
    async with (
        WorkerProcess(settings, tmp_path / "worker.log") as worker,
        httpx.AsyncClient(base_url=worker.url, timeout=30.0) as http,
    ):
        resp = await http.post("/v1/entries", json=body)
        assert resp.status_code == 401, resp.text

        before_ms = time.time_ns() // 1_000_000
        resp = await http.post("/v1/entries", json=body, headers=AUTH)
        after_ms = time.time_ns() // 1_000_000
        assert resp.status_code == 202, resp.text
        answer = resp.json()
        assert answer["accepted"] == 3
        got = [(r["index"], r["error"]["code"], r["error"]["field"]) for r in answer["rejected"]]
        # "not an entry" is a JSON text but not an object: schema, field null
        assert got == [(1, "schema", "modle"), (3, "schema", None), (5, "schema", "tenantId")]

        async def rollup() -> dict[str, Any] | None:
            r = await http.get(f"/v1/runs/{run}/rollup", headers=AUTH)
            if r.status_code == 404:
                return None
            assert r.status_code == 200, r.text
            doc: dict[str, Any] = r.json()
            return doc if doc["entryCount"] == 3 else None

        first = await wait_for(rollup, timeout=30, interval=0.2, message="rollup of 3 entries")
        assert first["tenantId"] == TENANT
        assert first["tokens"]["total"] == 130
        assert first["tokens"]["prompt"] == 107 and first["tokens"]["completion"] == 23
        assert first["costUsd"] == "0.0015"
        assert first["toolStats"]["failedCalls"] == 1
        assert first["startedAt"] == entries[0]["timestamp"]
        assert first["lastUpdatedAt"] == entries[4]["timestamp"]

        letters = await consume_all(settings, settings.topic_dlq, 3, timeout=20)
        assert len(letters) == 3
        by_index = {1: entries[1], 3: entries[3], 5: entries[5]}
        seen: set[int] = set()
        for record in letters:
            doc = json.loads(record.value)
            DeadLetter.model_validate(doc)
            assert doc["topic"] == settings.topic_entries
            assert doc["partition"] == -1 and doc["offset"] == -1
            assert before_ms <= doc["receivedAt"] <= after_ms
            original = json.loads(doc["value"])
            index = next(i for i, e in by_index.items() if e == original)
            seen.add(index)
            assert doc["error"] == answer["rejected"][[1, 3, 5].index(index)]["error"]
            if isinstance(original, dict):
                assert record.key == run.encode() and doc["key"] == run
            else:
                assert record.key is None and doc["key"] is None
        assert seen == {1, 3, 5}

        # the client retries the same batch: same answer, nothing changes in the rollup
        resp = await http.post("/v1/entries", json=body, headers=AUTH)
        assert resp.status_code == 202, resp.text
        assert resp.json() == answer
        await wait_caught_up(settings, ingest_group_id(settings), timeout=60)

        async def duplicates_counted() -> bool:
            m = await fetch_metrics(http)
            return metric_sum(m, "usage_entries_total", outcome="duplicate") == 3

        await wait_for(duplicates_counted, timeout=30, message="3 duplicates counted")
        again = await http.get(f"/v1/runs/{run}/rollup", headers=AUTH)
        assert again.status_code == 200
        assert again.json() == first

        m = await fetch_metrics(http)
        assert metric_sum(m, "usage_entries_total", outcome="accepted") == 3
        assert metric_sum(m, "usage_entries_total", outcome="rejected") == 6
        assert metric_sum(m, "usage_dead_letters_total", reason="schema") == 6
        assert metric_sum(m, "usage_dead_letters_total", reason="json") == 0
        # every rejection of the retried batch was dead-lettered again
        assert len(await consume_all(settings, settings.topic_dlq, 6, timeout=20)) == 6
