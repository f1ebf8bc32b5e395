"""Property tests of usage entry parsing (hypothesis)."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.entry import (
    MAX_CUSTOM_VALUE,
    MAX_DURATION_MS,
    MAX_FUTURE_MS,
    MIN_TIMESTAMP_MS,
    TokensEntry,
    effective_total,
    entry_to_json,
    entry_to_wire,
    parse_entry,
)
from schemas.errors import EntryRejected

NOW_MS = 1_795_392_000_000
MAX_SAFE = 2**53 - 1

ident = st.text(min_size=1, max_size=40)
timestamps = st.integers(MIN_TIMESTAMP_MS, NOW_MS + MAX_FUTURE_MS)
counts = st.integers(0, 10**9)


@st.composite
def valid_tokens(draw: st.DrawFn) -> dict[str, int]:
    """Token objects that satisfy every invariant, with a random subset of fields present."""
    prompt = draw(st.none() | counts)
    completion = draw(st.none() | counts)
    tokens: dict[str, int] = {}
    if prompt is not None:
        tokens["prompt"] = prompt
        cached = draw(st.none() | st.integers(0, prompt))
        if cached is not None:
            tokens["cached"] = cached
        cache_write = draw(st.none() | st.integers(0, prompt - (cached or 0)))
        if cache_write is not None:
            tokens["cacheWrite"] = cache_write
    if completion is not None:
        tokens["completion"] = completion
        reasoning = draw(st.none() | st.integers(0, completion))
        if reasoning is not None:
            tokens["reasoning"] = reasoning
    if draw(st.booleans()) or not tokens:
        tokens["total"] = (prompt or 0) + (completion or 0) if tokens else draw(counts)
    return tokens


def common() -> st.SearchStrategy[dict[str, Any]]:
    required = st.fixed_dictionaries(
        {
            "id": st.text(min_size=1, max_size=128),
            "runId": ident,
            "userId": ident,
            "timestamp": timestamps,
        },
        optional={
            "tenantId": ident,
            "stepCount": st.integers(0, MAX_SAFE),
            "source": st.fixed_dictionaries(
                {"type": st.sampled_from(["agent", "tool", "subagent"]), "name": ident}
            ),
            "threadId": ident,
            "agentName": ident,
            "parentRunId": ident,
            "schemaVersion": st.just(1),
        },
    )
    return required


# costUsd is below 1,000,000 (the pattern allows at most 6 integer digits)
costs = st.decimals(
    min_value=0, max_value=Decimal("999999.999999999999"), places=12, allow_nan=False
).map(lambda d: format(abs(d), "f"))


def not_negative_zero(x: float) -> bool:
    """-0.0 is read as 0.0 (test_negative_zero_is_read_as_zero): it does not round-trip."""
    return not (x == 0 and math.copysign(1.0, x) < 0)


values = st.integers(-MAX_CUSTOM_VALUE, MAX_CUSTOM_VALUE) | st.floats(
    -MAX_CUSTOM_VALUE, MAX_CUSTOM_VALUE
).filter(not_negative_zero)
durations = st.integers(0, MAX_DURATION_MS) | st.floats(0, MAX_DURATION_MS).filter(
    not_negative_zero
)


@st.composite
def valid_entries(draw: st.DrawFn) -> dict[str, Any]:
    entry = draw(common())
    kind = draw(st.sampled_from(["tokens", "tool", "subagent", "custom"]))
    entry["kind"] = kind
    if kind == "tokens":
        entry["model"] = draw(st.text(min_size=1, max_size=200))
        entry["tokens"] = draw(valid_tokens())
        if draw(st.booleans()):
            entry["provider"] = draw(ident)
        if draw(st.booleans()):
            entry["costUsd"] = draw(costs)
    elif kind in ("tool", "subagent"):
        if kind == "tool":
            entry["toolName"] = draw(ident)
        else:
            entry["subAgentType"] = draw(ident)
            entry["subAgentRunId"] = draw(ident)
        entry["durationMs"] = draw(durations)
        entry["success"] = draw(st.booleans())
        if draw(st.booleans()):
            entry["error"] = draw(st.text(max_size=100))
    else:
        entry["type"] = draw(ident)
        entry["name"] = draw(ident)
        entry["value"] = draw(values)
    return entry


@settings(max_examples=300)
@given(valid_entries())
def test_valid_entries_round_trip_unchanged(wire: dict[str, Any]) -> None:
    raw = json.dumps(wire, ensure_ascii=False).encode()
    entry = parse_entry(raw, now_ms=NOW_MS)
    assert entry_to_wire(entry) == wire
    assert parse_entry(entry_to_json(entry), now_ms=NOW_MS) == entry
    again = entry_to_wire(parse_entry(entry_to_json(entry), now_ms=NOW_MS))
    assert json.dumps(again, sort_keys=True) == json.dumps(wire, sort_keys=True)


def _holds(t: dict[str, int | None]) -> bool:
    """The invariants of §2, written independently of the implementation."""

    def n(key: str) -> int:
        value = t.get(key)
        return 0 if value is None else value

    present = {k for k, v in t.items() if v is not None}
    if not present & {"prompt", "completion", "total"}:
        return False
    if n("reasoning") > n("completion"):
        return False
    if n("cached") + n("cacheWrite") > n("prompt"):
        return False
    return not (
        "total" in present
        and present & {"prompt", "completion"}
        and n("total") != n("prompt") + n("completion")
    )


any_tokens = st.dictionaries(
    st.sampled_from(["prompt", "completion", "reasoning", "cached", "cacheWrite", "total"]),
    st.none() | st.integers(0, 50),
)


@settings(max_examples=500)
@given(any_tokens)
def test_invariants_accept_exactly_the_valid_token_objects(tokens: dict[str, int | None]) -> None:
    wire = {
        "id": "e",
        "kind": "tokens",
        "runId": "r",
        "userId": "u",
        "timestamp": 1_780_000_000_000,
        "model": "m",
        "tokens": tokens,
    }
    raw = json.dumps(wire).encode()
    if _holds(tokens):
        entry = parse_entry(raw, now_ms=NOW_MS)
        assert isinstance(entry, TokensEntry)
        t = entry.tokens
        assert effective_total(t) == (
            t.total if t.total is not None else (t.prompt or 0) + (t.completion or 0)
        )
        assert effective_total(t) >= (t.reasoning or 0)
    else:
        try:
            parse_entry(raw, now_ms=NOW_MS)
        except EntryRejected as err:
            assert err.code == "invariant"
            assert err.field is not None and err.field.startswith("tokens")
        else:
            raise AssertionError(f"accepted {tokens}")


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        parse_entry(raw, now_ms=NOW_MS)
    except EntryRejected as err:
        assert err.code in ("json", "schema", "invariant", "timestamp")
        assert err.message


@settings(max_examples=200)
@given(
    valid_entries(),
    st.sampled_from(["timestamp", "id", "runId", "kind"]),
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.lists(st.none()),
)
def test_corrupting_a_field_is_never_accepted_silently(
    wire: dict[str, Any], key: str, junk: Any
) -> None:
    wire[key] = junk
    try:
        entry = parse_entry(json.dumps(wire).encode(), now_ms=NOW_MS)
    except EntryRejected as err:
        assert err.code in ("schema", "timestamp", "invariant")
        return
    # Only a still-valid value may pass (e.g. a timestamp integer within bounds).
    assert entry_to_wire(entry)[key] == junk


_TOOL = {"id": "e", "kind": "tool", "runId": "r", "userId": "u", "timestamp": 1_780_000_000_000,
         "toolName": "t", "success": True}  # fmt: skip
_CUSTOM = {"id": "e", "kind": "custom", "runId": "r", "userId": "u",
           "timestamp": 1_780_000_000_000, "type": "t", "name": "n"}  # fmt: skip


def _outcome(entry: dict[str, Any]) -> tuple[str, str | None]:
    try:
        parse_entry(json.dumps(entry).encode(), now_ms=NOW_MS)
    except EntryRejected as err:
        return err.code, err.field
    return "ok", None


@settings(max_examples=300)
@given(st.integers() | st.floats(allow_nan=False, allow_infinity=False))
def test_numeric_bounds_are_exact(number: float) -> None:
    """durationMs in [0, 1e10] and custom value in [-1e15, 1e15], integer or not; anything
    else is 'schema' on the field. Also the int/float form makes no difference."""
    in_duration = 0 <= number <= MAX_DURATION_MS
    in_value = -MAX_CUSTOM_VALUE <= number <= MAX_CUSTOM_VALUE
    for kind, field, ok in (("tool", "durationMs", in_duration), ("custom", "value", in_value)):
        entry = {**(_TOOL if kind == "tool" else _CUSTOM), field: number}
        assert _outcome(entry) == (("ok", None) if ok else ("schema", field)), (kind, number)


@given(st.integers(2**53, 2**80) | st.floats(allow_nan=False, allow_infinity=False))
def test_token_counts_and_step_count_are_safe_integers(number: float) -> None:
    tokens = {"id": "e", "kind": "tokens", "runId": "r", "userId": "u", "model": "m",
              "timestamp": 1_780_000_000_000, "tokens": {"prompt": 1}}  # fmt: skip
    assert _outcome({**tokens, "tokens": {"prompt": number}}) == ("schema", "tokens.prompt")
    assert _outcome({**tokens, "stepCount": number}) == ("schema", "stepCount")


def test_negative_zero_is_read_as_zero() -> None:
    cases = (({**_TOOL, "durationMs": -0.0}, "duration_ms"), ({**_CUSTOM, "value": -0.0}, "value"))
    for entry, field in cases:
        parsed = parse_entry(json.dumps(entry).encode(), now_ms=NOW_MS)
        value = getattr(parsed, field)
        assert value == 0 and str(value) == "0.0"
        assert b"-0" not in entry_to_json(parsed)
