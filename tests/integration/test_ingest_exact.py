"""Exact run rollups from a real worker: a mixed stream with duplicates, checked run by run.

A few thousand simulated entries of all four kinds over ~200 runs, plus hand-made ones for
the edges: producer ``costUsd``, an unknown model, a ``total``-only tokens entry, cache
writes, reasoning, an effective-dated price change, fractional durations, negative custom
values, unicode ids, equal timestamps, and a sub-agent tree that is three levels deep, has
a child referenced by two parents, a dangling reference and a cycle. 10% of the entries are
re-sent: half right behind the original (same fetch batch), half much later, after the
worker has committed everything. Every run's rollup and entries page must equal the
independent model in ``ground_truth.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from processor.consumer import ingest_group_id
from processor.domain.pricing import load_catalog
from processor.settings import Settings
from tests.integration.ground_truth import (
    Entry,
    GroundTruth,
    check_all_runs,
    fetch_metrics,
    fleet_entries,
    messages,
    metric_sum,
    wait_caught_up,
    with_duplicates,
)
from tests.integration.harness import WorkerProcess, create_topics, produce, wait_for

T0 = 1_763_200_000_000  # after the simulated fleet's timestamps (2025-11-15)
O3_PRICE_CHANGE = 1_749_513_600_000  # 2025-06-10T00:00:00Z: o3 input 10 -> 2 USD/M


def _tokens(
    entry_id: str, run: str, ts: int, model: str, tokens: dict[str, int], **extra: Any
) -> Entry:
    return {
        "id": entry_id,
        "kind": "tokens",
        "runId": run,
        "userId": extra.pop("userId", "user-tree"),
        "timestamp": ts,
        "model": model,
        "tokens": tokens,
        **extra,
    }


def _call(
    kind: str, entry_id: str, run: str, ts: int, name: str, ms: float, ok: bool, **extra: Any
) -> Entry:
    e: Entry = {
        "id": entry_id,
        "kind": kind,
        "runId": run,
        "userId": extra.pop("userId", "user-tree"),
        "timestamp": ts,
        "durationMs": ms,
        "success": ok,
        **extra,
    }
    e["toolName" if kind == "tool" else "subAgentType"] = name
    if not ok:
        e["error"] = "boom"
    return e


def _custom(entry_id: str, run: str, ts: int, ctype: str, name: str, value: float) -> Entry:
    return {
        "id": entry_id,
        "kind": "custom",
        "runId": run,
        "userId": "user-tree",
        "timestamp": ts,
        "type": ctype,
        "name": name,
        "value": value,
    }


def hand_made(p: str) -> tuple[list[Entry], list[Entry]]:
    """(early, late) edge-case entries; ``late`` is produced after the first wave is done."""
    root, mid, leaf = f"{p}-tree-root", f"{p}-tree-mid", f"{p}-tree-leaf"
    shared, ghost = f"{p}-tree-shared", f"{p}-tree-ghost"
    cyc_a, cyc_b = f"{p}-cyc-a", f"{p}-cyc-b"
    uni = f"{p}-ユニコード-run"
    t = T0
    early: list[Entry] = [
        # the tree: root -> mid -> leaf, root -> shared, root -> ghost (never seen)
        _tokens(
            f"{p}-r1",
            root,
            t + 1,
            "gpt-4o",
            {"prompt": 1200, "completion": 300},
            agentName="orchestrator",
            stepCount=1,
            threadId="th-1",
            source={"type": "agent", "name": "orchestrator"},
        ),
        _call(
            "subagent",
            f"{p}-r2",
            root,
            t + 2,
            "researcher",
            1500,
            True,
            subAgentRunId=mid,
            agentName="orchestrator",
            stepCount=2,
        ),
        _call(
            "subagent",
            f"{p}-r3",
            root,
            t + 3,
            "summarizer",
            250.5,
            False,
            subAgentRunId=shared,
            agentName="orchestrator",
            stepCount=3,
        ),
        _call(
            "subagent",
            f"{p}-r4",
            root,
            t + 4,
            "researcher",
            10,
            True,
            subAgentRunId=ghost,
            agentName="orchestrator",
            stepCount=4,
        ),
        _custom(f"{p}-r5", root, t + 5, "api_calls", "tavily", 3),
        _call("tool", f"{p}-r6", root, t + 6, "web_search", 0.25, True, stepCount=5),
        _tokens(
            f"{p}-m1",
            mid,
            t + 10,
            "claude-3-5-sonnet-20241022",
            {"prompt": 5000, "completion": 700, "cached": 1000, "cacheWrite": 2000},
            agentName="researcher",
            parentRunId=root,
            provider="anthropic",
        ),
        _call(
            "subagent",
            f"{p}-m2",
            mid,
            t + 11,
            "fact-checker",
            99.5,
            True,
            subAgentRunId=leaf,
            agentName="researcher",
            parentRunId=root,
        ),
        _custom(f"{p}-m3", mid, t + 12, "api_calls", "tavily", 2),
        _custom(f"{p}-m4", mid, t + 13, "credits", "serpapi", -2.5),
        _tokens(
            f"{p}-l1",
            leaf,
            t + 20,
            "o3",
            {"prompt": 900, "completion": 1000, "reasoning": 800, "total": 1900},
            agentName="fact-checker",
            parentRunId=mid,
        ),
        _tokens(
            f"{p}-l2",
            leaf,
            O3_PRICE_CHANGE - 1,
            "o3",
            {"prompt": 100, "completion": 10},
            agentName="fact-checker",
        ),
        _tokens(
            f"{p}-l3",
            leaf,
            O3_PRICE_CHANGE,
            "o3",
            {"prompt": 100, "completion": 10},
            agentName="fact-checker",
        ),
        _custom(f"{p}-l4", leaf, t + 21, "api_calls", "tavily", 0.25),
        _tokens(
            f"{p}-s1",
            shared,
            t + 30,
            "acme-llm-9000",
            {"prompt": 4000, "completion": 400},
            provider="acme",
        ),  # unknown model: cost 0, no agentName yet
        _tokens(
            f"{p}-s2", shared, t + 31, "gpt-4o-mini", {"total": 4321}, agentName="summarizer"
        ),  # only ``total``: priced at input
        _tokens(
            f"{p}-s3",
            shared,
            t + 32,
            "gpt-4o-mini",
            {"prompt": 10, "completion": 5},
            costUsd="0.000000000001",
        ),  # producer cost wins, 12 decimals
        _tokens(
            f"{p}-s4", shared, t + 33, "gpt-4o", {"prompt": 10, "completion": 5}, costUsd="1.5"
        ),
        _tokens(f"{p}-s5", shared, t + 34, "acme-llm-9000", {"completion": 7}, costUsd="0"),
        # cycle A -> B (B -> A arrives late), and B -> B
        _tokens(f"{p}-a1", cyc_a, t + 40, "gpt-4o-mini", {"prompt": 111, "completion": 11}),
        _call("subagent", f"{p}-a2", cyc_a, t + 41, "loop", 5, True, subAgentRunId=cyc_b),
        _tokens(
            f"{p}-b1",
            cyc_b,
            t + 50,
            "gpt-4o-mini",
            {"prompt": 222, "completion": 22},
            costUsd="0.000123",
        ),
        _call("subagent", f"{p}-b2", cyc_b, t + 51, "loop", 5, True, subAgentRunId=cyc_b),
        _custom(f"{p}-b3", cyc_b, t + 52, "bytes", "s3_upload", 1024),
        # equal timestamps: served by (timestamp, id); unicode ids and run id
        _call("tool", f"{p}-u-b", uni, t + 60, "fetch_url", 1234.5, False, stepCount=2),
        _call("tool", f"{p}-u-a", uni, t + 60, "fetch_url", 3, True, stepCount=1),
        _tokens(
            f"{p}-u-ü",
            uni,
            t + 60,
            "gemini-2.0-flash",
            {"prompt": 1, "completion": 1},
            stepCount=3,
            schemaVersion=1,
            tenantId="default",
        ),
        _tokens(f"{p}-u-0", uni, t + 59, "mistral-large-latest", {"prompt": 0, "completion": 0}),
    ]
    late: list[Entry] = [
        _call("subagent", f"{p}-b4", cyc_b, t + 53, "loop", 7, True, subAgentRunId=cyc_a),
        _call(
            "subagent",
            f"{p}-m5",
            mid,
            t + 14,
            "summarizer",
            1,
            True,
            subAgentRunId=shared,
            agentName="researcher",
        ),
        _tokens(
            f"{p}-l0",
            leaf,
            t - 1000,
            "gpt-4o",
            {"prompt": 3, "completion": 4},
            agentName="fact-checker",
        ),  # moves the leaf's startedAt back
        _custom(f"{p}-u-c", uni, t + 60, "api_calls", "tavily", 1),
    ]
    return early, late


def _filtered(entries: list[Entry], **q: Any) -> list[Entry]:
    kinds = set(q["kinds"].split(",")) if "kinds" in q else None
    out = []
    for e in entries:
        step, ts = e.get("stepCount", 0), e["timestamp"]
        if kinds is not None and e["kind"] not in kinds:
            continue
        if "stepMin" in q and step < q["stepMin"]:
            continue
        if "stepMax" in q and step > q["stepMax"]:
            continue
        if "start" in q and ts < q["start"]:
            continue
        if "end" in q and ts > q["end"]:
            continue
        out.append(e)
    return out


async def _check_entry_filters(http: httpx.AsyncClient, truth: GroundTruth, run_id: str) -> None:
    entries = truth.entries(run_id)
    stamps = sorted({e["timestamp"] for e in entries})
    steps = sorted({e.get("stepCount", 0) for e in entries})
    queries: list[dict[str, Any]] = [
        {"kinds": "tokens"},
        {"kinds": "tool,subagent"},
        {"kinds": "custom,tokens", "stepMin": steps[len(steps) // 3]},
        {"stepMin": steps[len(steps) // 4], "stepMax": steps[len(steps) // 2]},
        {"start": stamps[len(stamps) // 3], "end": stamps[2 * len(stamps) // 3]},
        {"start": stamps[-1]},
        {"end": stamps[0]},
        {"kinds": "tokens", "start": stamps[1 % len(stamps)], "stepMax": steps[-1]},
    ]
    for q in queries:
        want = _filtered(entries, **q)
        response = await http.get(f"/v1/runs/{run_id}/entries", params={**q, "limit": 1000})
        assert response.status_code == 200, (q, response.text)
        page = response.json()
        assert page["total"] == len(want), q
        assert [e["id"] for e in page["entries"]] == [e["id"] for e in want], q
        assert page["entries"] == want, q
    # paging: default limit 100, then limit/offset pages that add up to the whole list
    default = (await http.get(f"/v1/runs/{run_id}/entries")).json()
    assert default["total"] == len(entries)
    assert default["entries"] == entries[:100]
    pages: list[Entry] = []
    for offset in range(0, len(entries) + 7, 7):
        page = (
            await http.get(f"/v1/runs/{run_id}/entries", params={"limit": 7, "offset": offset})
        ).json()
        assert page["total"] == len(entries)
        pages.extend(page["entries"])
    assert pages == entries


async def test_mixed_stream_with_duplicates_gives_exact_rollups(
    settings: Settings, tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    p = settings.app_id
    fleet = fleet_entries(3000, seed=20251115, prefix=f"{p}-fleet")
    early, late_new = hand_made(p)
    stream, late_dups = with_duplicates(fleet + early, fraction=0.10, seed=99)
    # late re-sends of hand-made entries too, in the same run as a new late edge
    late_dups += [e for e in early if e["id"].endswith(("-b1", "-s2", "-l1"))]
    wave2 = late_dups + late_new
    resent = (len(stream) - len(fleet) - len(early)) + len(late_dups)

    truth = GroundTruth(load_catalog(None))
    truth.add_all(stream)
    truth.add_all(wave2)
    assert truth.duplicates == resent
    assert set(truth.accepted_by_kind) == {"tokens", "tool", "subagent", "custom"}

    await create_topics(settings)
    await produce(settings, settings.topic_entries, messages(stream))  # before the worker
    group = ingest_group_id(settings)

    async with (
        WorkerProcess(settings, tmp_path / "worker.log"),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}", timeout=10.0) as http,
    ):
        await wait_caught_up(settings, group, timeout=120)
        await produce(settings, settings.topic_entries, messages(wave2))
        await wait_caught_up(settings, group, timeout=60)

        async def all_counted() -> bool:
            m = await fetch_metrics(http)
            seen = metric_sum(m, "usage_entries_total", outcome="accepted") + metric_sum(
                m, "usage_entries_total", outcome="duplicate"
            )
            return seen == len(stream) + len(wave2)

        await wait_for(all_counted, timeout=30, message="metrics count every entry")

        m = await fetch_metrics(http)
        for kind, n in truth.accepted_by_kind.items():
            assert metric_sum(m, "usage_entries_total", kind=kind, outcome="accepted") == n
        assert metric_sum(m, "usage_entries_total", outcome="duplicate") == resent
        assert metric_sum(m, "usage_entries_total", outcome="rejected") == 0
        assert metric_sum(m, "usage_dead_letters_total") == 0
        assert (
            metric_sum(m, "usage_unpriced_tokens_total", model="acme-llm-9000")
            == truth.unpriced_tokens["acme-llm-9000"]
            == 4400
        )

        await check_all_runs(http, truth)

        # spot checks the model and the contract agree on, written out by hand
        root = (await http.get(f"/v1/runs/{p}-tree-root/rollup")).json()
        tree = {p + s for s in ("-tree-root", "-tree-mid", "-tree-leaf", "-tree-shared")}
        assert set(truth.tree(f"{p}-tree-root")) == tree
        assert root["subAgentRunIds"] == sorted(
            [f"{p}-tree-ghost", f"{p}-tree-mid", f"{p}-tree-shared"]
        )
        shared = (await http.get(f"/v1/runs/{p}-tree-shared/rollup")).json()
        assert shared["costByModel"]["acme-llm-9000"] == "0"
        # 4321 * 0.15/M + producer's 0.000000000001
        assert shared["costByModel"]["gpt-4o-mini"] == "0.000648150001"
        assert shared["agentName"] == "summarizer"
        cyc = (await http.get(f"/v1/runs/{p}-cyc-a/rollup")).json()
        cyc_b = (await http.get(f"/v1/runs/{p}-cyc-b/rollup")).json()
        assert cyc["tokensIncludingSubAgents"]["total"] == 122 + 244
        assert cyc["costIncludingSubAgentsUsd"] == cyc_b["costIncludingSubAgentsUsd"]

        for run_id in (
            f"{p}-tree-root",
            f"{p}-ユニコード-run",
            max(truth.runs, key=lambda r: truth.runs[r].entry_count),
        ):
            await _check_entry_filters(http, truth, run_id)

        # run listing: every user's runs, newest start first
        for user in sorted({r.user_id for r in truth.runs.values()}):
            got = (await http.get("/v1/runs", params={"userId": user, "limit": 1000})).json()[
                "runIds"
            ]
            want = {r.run_id for r in truth.runs.values() if r.user_id == user}
            assert set(got) == want, user
            starts = [truth.runs[r].started_at for r in got]
            assert starts == sorted(starts, reverse=True), user
