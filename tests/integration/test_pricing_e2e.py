"""Entries of several providers and a long-context call, through Kafka and a real worker:
each run's cost equals what genai-prices computes for the same calls, exactly."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import httpx

from processor.batch_pipeline import now_ms
from processor.consumer import ingest_group_id
from processor.settings import Settings
from tests.integration.ground_truth import wait_caught_up
from tests.integration.harness import WorkerProcess, create_topics, produce

#: (entry provider, model, genai-prices provider id), spellings as producers send them
CALLS = [
    (None, "gpt-4o", "openai"),
    ("openai.chat", "gpt-4o-mini", "openai"),
    ("groq", "llama-3.3-70b-versatile", "groq"),
    ("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", "aws"),
    ("vertex", "claude-sonnet-4-5", "google"),
    ("azure-openai", "gpt-4o", "azure"),
    (None, "claude-sonnet-4-5-20250929", "anthropic"),
    ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "together"),
]


def genai_usd(model: str, provider: str, tokens: dict[str, int], ts: int) -> Decimal:
    usage = genai_prices.Usage(
        input_tokens=tokens["prompt"],
        cache_read_tokens=tokens.get("cached", 0),
        cache_write_tokens=tokens.get("cacheWrite", 0),
        output_tokens=tokens["completion"],
    )
    when = dt.datetime.fromtimestamp(ts / 1000, dt.UTC)
    calc = genai_prices.calc_price(usage, model, provider_id=provider, genai_request_timestamp=when)
    return calc.total_price


async def test_several_providers_and_a_long_context_call_cost_exactly(
    settings: Settings, tmp_path: Path
) -> None:
    ts = now_ms() - 60_000
    entries: list[dict[str, Any]] = []
    expected: dict[str, Decimal] = {}
    for i, (provider, model, genai_provider) in enumerate(CALLS):
        run = f"{settings.app_id}-p{i}"
        tokens = {"prompt": 12_000, "completion": 800, "cached": 4_000}
        entry = {"id": f"{run}-a", "kind": "tokens", "runId": run, "userId": "u",
                 "timestamp": ts, "model": model, "tokens": tokens}  # fmt: skip
        if provider is not None:
            entry["provider"] = provider
        entries.append(entry)
        expected[run] = genai_usd(model, genai_provider, tokens, ts)
    # long context: gemini-2.5-pro doubles its price above 200k prompt tokens
    long_run = f"{settings.app_id}-long"
    for j, prompt in enumerate((200_000, 200_001, 350_000)):
        tokens = {"prompt": prompt, "completion": 2_000, "cached": 50_000}
        entries.append({"id": f"{long_run}-{j}", "kind": "tokens", "runId": long_run,
                        "userId": "u", "timestamp": ts, "model": "gemini-2.5-pro",
                        "provider": "google", "tokens": tokens})  # fmt: skip
        expected[long_run] = expected.get(long_run, Decimal(0)) + genai_usd(
            "gemini-2.5-pro", "google", tokens, ts
        )
    await create_topics(settings)
    await produce(
        settings,
        settings.topic_entries,
        [(e["runId"].encode(), json.dumps(e).encode()) for e in entries],
    )
    async with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        await wait_caught_up(settings, ingest_group_id(settings), timeout=60)
        async with httpx.AsyncClient(base_url=worker.url, timeout=10.0) as http:
            for run, want in expected.items():
                body = (await http.get(f"/v1/runs/{run}/rollup")).json()
                assert Decimal(body["costUsd"]) == want, (run, body["costUsd"], want)
                assert want > 0, run
            metrics = (await http.get("/metrics")).text
            assert "usage_unpriced_tokens_total{" not in metrics or all(
                line.endswith(" 0.0")
                for line in metrics.splitlines()
                if line.startswith("usage_unpriced_tokens_total{")
            )
