"""Turn a validated usage entry into what the rollups apply: priced, flattened, pure."""

from __future__ import annotations

import json
from typing import Any, cast

from processor.domain.counts import TokenCounts
from processor.domain.fields import custom_to_nano, duration_to_us
from processor.domain.fold import AcceptedEntry
from processor.domain.money import format_usd, parse_usd
from processor.domain.pricing import PriceCatalog
from schemas.entry import (
    CustomEntry,
    SubagentEntry,
    TokensEntry,
    ToolEntry,
    UsageEntry,
    effective_total,
)

COST_SEPARATOR = b"\x00"


def with_cost(raw_json: bytes, cost_pico: int) -> bytes:
    """The stored form of an entry priced here: ``<cost pico>\\x00<entry as received>``.

    The reader adds ``costUsd`` (``entry_from_stored``). A NUL byte cannot occur in JSON
    text, so the split is unambiguous; formatting the decimal string is left to the rare
    read instead of the hot write path.
    """
    return b"%d%s%s" % (cost_pico, COST_SEPARATOR, raw_json)


def entry_from_stored(stored: str | bytes) -> dict[str, Any]:
    """The entry as received, with ``costUsd`` for tokens entries priced here."""
    if isinstance(stored, str):
        stored = stored.encode()
    cost, sep, body = stored.partition(COST_SEPARATOR)
    if not sep:
        return cast(dict[str, Any], json.loads(stored))
    entry = cast(dict[str, Any], json.loads(body))
    entry["costUsd"] = format_usd(int(cost))
    return entry


def accept_entry(entry: UsageEntry, raw_json: bytes, catalog: PriceCatalog) -> AcceptedEntry:
    """Price and flatten one entry. ``raw_json`` is the entry's JSON as received."""
    accepted = AcceptedEntry(
        entry_id=entry.id,
        kind=entry.kind,
        tenant_id=entry.tenant_id,
        run_id=entry.run_id,
        user_id=entry.user_id,
        timestamp=entry.timestamp,
        agent_name=entry.agent_name,
        wire_json=raw_json,
    )
    if isinstance(entry, TokensEntry):
        t = entry.tokens
        prompt = t.prompt or 0
        completion = t.completion or 0
        reasoning = t.reasoning or 0
        cached = t.cached or 0
        cache_write = t.cache_write or 0
        accepted.model = entry.model
        accepted.tokens = TokenCounts(
            prompt, completion, reasoning, cached, cache_write, effective_total(t)
        )
        only_total = t.prompt is None and t.completion is None
        priced = catalog.price_tokens(
            entry.model,
            timestamp_ms=entry.timestamp,
            provider=entry.provider,
            prompt=0 if only_total else prompt,
            completion=0 if only_total else completion,
            reasoning=0 if only_total else reasoning,
            cached=0 if only_total else cached,
            cache_write=0 if only_total else cache_write,
            total_only=t.total if only_total else None,
        )
        accepted.provider = priced.provider
        if entry.cost_usd is not None:
            # the producer's figure wins, and counts as priced
            accepted.cost_pico = parse_usd(entry.cost_usd)
            accepted.priced = True
        else:
            accepted.cost_pico = priced.cost_pico
            accepted.priced = priced.priced
            accepted.wire_json = with_cost(raw_json, priced.cost_pico)
    elif isinstance(entry, ToolEntry):
        accepted.call_name = entry.tool_name
        accepted.success = entry.success
        accepted.duration_us = duration_to_us(entry.duration_ms)
    elif isinstance(entry, SubagentEntry):
        accepted.call_name = entry.sub_agent_type
        accepted.success = entry.success
        accepted.duration_us = duration_to_us(entry.duration_ms)
        accepted.child_run_id = entry.sub_agent_run_id
    elif isinstance(entry, CustomEntry):
        accepted.custom_type = entry.type
        accepted.custom_name = entry.name
        accepted.custom_nano = custom_to_nano(entry.value)
    return accepted
