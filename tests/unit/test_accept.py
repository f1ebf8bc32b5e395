"""Entry acceptance: pricing per CONTRACT §7, flattening, and the stored form of entries."""

from __future__ import annotations

import json
from typing import Any

from processor.domain.accept import accept_entry, entry_from_stored
from processor.domain.counts import TokenCounts
from processor.domain.pricing import load_catalog
from schemas.entry import parse_entry

NOW = 1_795_392_000_000
TS = 1_763_000_000_000  # 2025-11-13: gpt-4o-mini at 0.15 / 0.075 / 0.60 per million
CATALOG = load_catalog(None)


def accept(**fields: Any) -> Any:
    entry = {"id": "e1", "runId": "r1", "userId": "u1", "timestamp": TS, **fields}
    raw = json.dumps(entry).encode()
    return accept_entry(parse_entry(raw, now_ms=NOW), raw, CATALOG), entry


def test_tokens_are_priced_by_part_and_stored_with_cost() -> None:
    accepted, entry = accept(
        kind="tokens",
        model="gpt-4o-mini",
        tokens={"prompt": 1_000_000, "completion": 200_000, "cached": 400_000, "reasoning": 50_000},
    )
    # 600k uncached at 0.15 + 400k cached at 0.075 + 200k output at 0.60 (reasoning = output)
    assert accepted.cost_pico == (90_000 + 30_000 + 120_000) * 10**6
    assert accepted.priced and accepted.provider == "openai"
    assert accepted.tokens == TokenCounts(1_000_000, 200_000, 50_000, 400_000, 0, 1_200_000)
    assert entry_from_stored(accepted.wire_json) == {**entry, "costUsd": "0.24"}


def test_producer_cost_wins_and_is_stored_as_received() -> None:
    accepted, entry = accept(
        kind="tokens", model="gpt-4o-mini", tokens={"prompt": 10}, costUsd="0.000000000001"
    )
    assert accepted.cost_pico == 1 and accepted.priced
    assert entry_from_stored(accepted.wire_json) == entry


def test_total_only_is_priced_at_input_and_counted_as_given() -> None:
    accepted, _ = accept(kind="tokens", model="gpt-4o-mini", tokens={"total": 1_000_000})
    assert accepted.cost_pico == 150_000 * 10**6
    assert accepted.tokens == TokenCounts(total=1_000_000)


def test_unknown_model_costs_nothing_and_is_marked_unpriced() -> None:
    accepted, _ = accept(kind="tokens", model="acme-9000", tokens={"prompt": 5, "completion": 1})
    assert (accepted.cost_pico, accepted.priced) == (0, False)
    assert entry_from_stored(accepted.wire_json)["costUsd"] == "0"


def test_tool_subagent_and_custom_are_flattened() -> None:
    tool, _ = accept(kind="tool", toolName="search", durationMs=12.5, success=False)
    assert (tool.call_name, tool.success, tool.duration_us) == ("search", False, 12_500)
    sub, _ = accept(
        kind="subagent", subAgentType="coder", subAgentRunId="r2", durationMs=3, success=True
    )
    assert (sub.call_name, sub.child_run_id, sub.duration_us) == ("coder", "r2", 3000)
    custom, entry = accept(kind="custom", type="api_calls", name="tavily", value=-2.5)
    assert (custom.custom_type, custom.custom_name, custom.custom_nano) == (
        "api_calls",
        "tavily",
        -2_500_000_000,
    )
    assert entry_from_stored(custom.wire_json) == entry


def test_stored_form_reads_back_from_str_too() -> None:
    accepted, entry = accept(kind="tokens", model="gpt-4o-mini", tokens={"prompt": 3})
    assert entry_from_stored(accepted.wire_json.decode())["id"] == entry["id"]
