"""The TypeScript client against the real stack: an entry recorded through each transport
(Kafka with kafkajs, HTTP ``POST /v1/entries`` with fetch) arrives in the run's rollup.

A real worker runs on fresh topics with an API key; ``node dist/scripts/roundtrip.js``
records the same set of entries for one run per transport (two LLM calls, a successful
and a failed tool call, a custom metric, a sub-agent with its own LLM call), flushes, and
prints what it recorded. The rollups and raw entries are then checked exactly.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from processor.settings import Settings
from tests.integration.harness import WorkerProcess, create_topics, wait_for
from tests.typescript_client import DIST, TS_DIR, ensure_built, node_tools

KEY = "ts-client-key"
TENANT = "ts-tenant"
AUTH = {"Authorization": f"Bearer {KEY}"}

# What scripts/roundtrip.ts records for each run (contract semantics).
OWN_TOKENS = {  # gpt-4o-mini 100/20 (40 cached) + claude AI SDK v6 usage 1210/50
    "prompt": 1310,
    "completion": 70,
    "reasoning": 30,
    "cached": 1040,
    "cacheWrite": 200,
    "total": 1380,
}
CHILD_TOKENS = {
    "prompt": 7,
    "completion": 3,
    "reasoning": 0,
    "cached": 0,
    "cacheWrite": 0,
    "total": 10,
}


async def _run_node(env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    node, _npm = node_tools()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(DIST / "scripts" / "roundtrip.js"),
        cwd=TS_DIR,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"roundtrip.js did not finish within {timeout}s", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"roundtrip.js exited with {proc.returncode}\n--- stdout ---\n{out.decode()}\n"
            f"--- stderr ---\n{err.decode()}",
            pytrace=False,
        )
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _rollup(http: httpx.AsyncClient, run: str, count: int) -> dict[str, Any] | None:
    """The run's rollup once it counts ``count`` entries (None before)."""
    r = await http.get(f"/v1/runs/{run}/rollup")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc if doc["entryCount"] >= count else None


async def test_entries_from_both_typescript_transports_arrive_in_the_rollup(
    settings: Settings, tmp_path: Path
) -> None:
    await asyncio.to_thread(ensure_built)
    settings = settings.model_copy(update={"api_keys": SecretStr(f"{KEY}:{TENANT}")})
    await create_topics(settings)
    user = f"ts-user-{uuid.uuid4().hex[:8]}"
    runs = {"kafka": f"ts-kafka-{uuid.uuid4().hex}", "http": f"ts-http-{uuid.uuid4().hex}"}
    async with (
        WorkerProcess(settings, tmp_path / "worker.log") as worker,
        httpx.AsyncClient(base_url=worker.url, timeout=30.0, headers=AUTH) as http,
    ):
        result = await _run_node(
            {
                "USAGE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "USAGE_TOPIC_ENTRIES": settings.topic_entries,
                "USAGE_API_URL": worker.url,
                "USAGE_API_KEY": KEY,
                "RT_TENANT_ID": TENANT,
                "RT_USER_ID": user,
                "RT_RUN_ID_KAFKA": runs["kafka"],
                "RT_RUN_ID_HTTP": runs["http"],
            }
        )

        for transport, run_id in runs.items():
            recorded = result[transport]
            assert recorded["runId"] == run_id
            assert recorded["stats"] == {"buffered": 0, "delivered": 7, "failed": 0, "rejected": 0}
            child = recorded["childRunId"]

            own = await wait_for(
                functools.partial(_rollup, http, run_id, 6),
                timeout=60,
                interval=0.2,
                message=f"{transport}: rollup of 6 entries\n{worker.log_tail()}",
            )
            sub = await wait_for(
                functools.partial(_rollup, http, child, 1),
                timeout=60,
                interval=0.2,
                message=f"{transport}: child rollup",
            )
            assert own is not None and sub is not None
            assert own["entryCount"] == 6, transport
            assert own["userId"] == user and own["tenantId"] == TENANT
            assert own["agentName"] == "ts-roundtrip"
            assert own["tokens"] == OWN_TOKENS, transport
            assert own["tokensByModel"]["gpt-4o-mini"]["prompt"] == 100
            assert own["tokensByModel"]["claude-3-5-sonnet-20241022"]["cacheWrite"] == 200
            tools = own["toolStats"]
            assert (tools["totalCalls"], tools["successfulCalls"], tools["failedCalls"]) == (
                2,
                1,
                1,
            )
            assert set(tools["byTool"]) == {"search", "fetch"}
            subs = own["subAgentStats"]
            assert (subs["totalCalls"], subs["successfulCalls"]) == (1, 1)
            assert set(subs["byType"]) == {"researcher"}
            assert own["subAgentRunIds"] == [child]
            assert own["custom"] == {"api_calls": {"tavily": 1}}
            assert own["tokensIncludingSubAgents"] == {
                k: OWN_TOKENS[k] + CHILD_TOKENS[k] for k in OWN_TOKENS
            }
            assert sub["entryCount"] == 1 and sub["tokens"] == CHILD_TOKENS
            assert sub["agentName"] == "researcher"

            page = await http.get(f"/v1/runs/{run_id}/entries", params={"limit": 100})
            assert page.status_code == 200, page.text
            entries = page.json()["entries"]
            assert page.json()["total"] == 6
            ids = {e["id"] for e in entries}
            assert set(recorded["entryIds"]) <= ids
            assert all(e["parentRunId"] == run_id for e in (await http.get(
                f"/v1/runs/{child}/entries")).json()["entries"])  # fmt: skip
            steps = sorted((e["stepCount"], e["kind"]) for e in entries)
            assert steps == [
                (1, "tokens"),
                (2, "custom"),
                (2, "subagent"),
                (2, "tokens"),
                (2, "tool"),
                (2, "tool"),
            ]
