"""Usage entry parsing: example vectors, precedence, messages, HTTP dict path, helpers."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from schemas.entry import (
    MIN_TIMESTAMP_MS,
    CustomEntry,
    SubagentEntry,
    Tokens,
    TokensEntry,
    ToolEntry,
    effective_total,
    entry_to_json,
    entry_to_wire,
    parse_entry,
    validate_entry_dict,
)
from schemas.errors import REJECTION_CODES, EntryRejected

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
NOW_MS = 1_795_392_000_000  # 2026-11-23T00:00:00Z, the clock the vectors assume
EXPECTED: dict[str, dict[str, str | None]] = json.loads(
    (EXAMPLES / "expected.json").read_text(encoding="utf-8")
)
VALID = sorted((EXAMPLES / "valid").glob("*.json"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.json"))


def _base(**extra: Any) -> dict[str, Any]:
    return {"id": "e1", "runId": "r1", "userId": "u1", "timestamp": 1_780_000_000_000, **extra}


def _tokens(**tokens: Any) -> dict[str, Any]:
    return _base(kind="tokens", model="gpt-4o-mini", tokens=tokens)


def _reject(obj: Any) -> EntryRejected:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    with pytest.raises(EntryRejected) as info:
        parse_entry(raw, now_ms=NOW_MS)
    return info.value


def test_vector_counts() -> None:
    assert len(VALID) >= 12
    assert len(INVALID) >= 45
    assert {p.name for p in INVALID} == set(EXPECTED)
    assert {p.name.split("--")[0] for p in INVALID} == set(REJECTION_CODES)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_vector_parses(path: Path) -> None:
    raw = path.read_bytes()
    entry = parse_entry(raw, now_ms=NOW_MS)
    assert entry_to_wire(entry) == json.loads(raw)
    assert validate_entry_dict(json.loads(raw), now_ms=NOW_MS) == entry


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_vector_rejected(path: Path) -> None:
    expected = EXPECTED[path.name]
    with pytest.raises(EntryRejected) as info:
        parse_entry(path.read_bytes(), now_ms=NOW_MS)
    err = info.value
    assert (err.code, err.field) == (expected["code"], expected["field"]), err.message
    assert path.name.startswith(f"{err.code}--")
    if err.field is not None:
        assert err.field in err.message


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def strict_json_loads(raw: bytes) -> Any:
    """Decode like the HTTP ingest body parser: strict UTF-8 (a BOM is not stripped), no
    NaN/Infinity. Python's json still reads lone surrogate escapes (into ``str``)."""
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


def _dict_path_applies(path: Path) -> bool:
    """Vectors the dict path (HTTP ingest, the Python client) sees as such: decodable by
    :func:`strict_json_loads`, not a size case (size is checked on the re-encoded entry).
    Lone surrogates decode and must still be ``json`` there. Left out: values whose fault
    sits under a key that a later duplicate overrides (decoding discards it)."""
    if EXPECTED[path.name]["code"] == "too_large" or "overridden-by-duplicate" in path.name:
        return False
    try:
        strict_json_loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return False
    return True


DICT_PATH_INVALID = [p for p in INVALID if _dict_path_applies(p)]


def test_dict_path_sees_the_rfc_8259_corner_cases() -> None:
    names = {p.name for p in DICT_PATH_INVALID}
    assert "json--lone-surrogate-in-key.json" in names
    assert "schema--top-level-array.json" in names
    assert "json--custom-value-nan.json" not in names  # not JSON: never decoded


@pytest.mark.parametrize("path", DICT_PATH_INVALID, ids=lambda p: p.name)
def test_invalid_vector_rejected_on_dict_path(path: Path) -> None:
    """The HTTP ingest path gives the same code and field for every decodable vector."""
    expected = EXPECTED[path.name]
    obj = strict_json_loads(path.read_bytes())
    with pytest.raises(EntryRejected) as info:
        validate_entry_dict(obj, now_ms=NOW_MS)
    assert (info.value.code, info.value.field) == (expected["code"], expected["field"])


@pytest.mark.parametrize("path", DICT_PATH_INVALID, ids=lambda p: p.name)
def test_invalid_vector_rejected_by_python_client(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``usage_client`` refuses every decodable vector with the processor's code and field."""
    from usage_client import validation
    from usage_client.errors import EntryValidationError

    monkeypatch.setattr(validation, "now_ms", lambda: NOW_MS)
    expected = EXPECTED[path.name]
    with pytest.raises(EntryValidationError) as info:
        validation.encode_entry(strict_json_loads(path.read_bytes()))
    assert (info.value.code, info.value.field) == (expected["code"], expected["field"])


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_vector_accepted_by_python_client(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from usage_client import validation

    monkeypatch.setattr(validation, "now_ms", lambda: NOW_MS)
    raw = path.read_bytes()
    wire = validation.encode_entry(strict_json_loads(raw))
    assert parse_entry(wire, now_ms=NOW_MS) == parse_entry(raw, now_ms=NOW_MS)


def test_kinds_parse_to_their_classes() -> None:
    assert isinstance(
        parse_entry(json.dumps(_tokens(prompt=1)).encode(), now_ms=NOW_MS), TokensEntry
    )
    tool = _base(kind="tool", toolName="t", durationMs=1, success=True)
    assert isinstance(validate_entry_dict(tool, now_ms=NOW_MS), ToolEntry)
    sub = _base(kind="subagent", subAgentType="s", subAgentRunId="r2", durationMs=1, success=False)
    assert isinstance(validate_entry_dict(sub, now_ms=NOW_MS), SubagentEntry)
    custom = _base(kind="custom", type="a", name="b", value=-1)
    parsed = validate_entry_dict(custom, now_ms=NOW_MS)
    assert isinstance(parsed, CustomEntry)
    assert parsed.value == -1.0


def test_defaults() -> None:
    entry = parse_entry(json.dumps(_tokens(prompt=3)).encode(), now_ms=NOW_MS)
    assert entry.tenant_id == "default"
    assert entry.step_count == 0
    assert entry.schema_version == 1
    assert entry.source is None
    assert "tenantId" not in entry_to_wire(entry)


def test_timestamp_bounds_are_inclusive() -> None:
    assert parse_entry(
        json.dumps(_tokens(prompt=1) | {"timestamp": MIN_TIMESTAMP_MS}).encode(), now_ms=NOW_MS
    )
    limit = NOW_MS + 24 * 3600 * 1000
    assert parse_entry(json.dumps(_tokens(prompt=1) | {"timestamp": limit}).encode(), now_ms=NOW_MS)
    assert _reject(_tokens(prompt=1) | {"timestamp": limit + 1}).code == "timestamp"


def test_size_limit_is_configurable_and_checked_first() -> None:
    raw = b"[" * 100
    with pytest.raises(EntryRejected) as info:
        parse_entry(raw, now_ms=NOW_MS, max_bytes=99)
    assert info.value.code == "too_large"
    assert info.value.field is None
    assert "100 bytes" in info.value.message


def test_precedence_schema_before_timestamp_before_invariant() -> None:
    both = _tokens(prompt=1, reasoning=5) | {"timestamp": 0}
    assert _reject(both).code == "timestamp"
    assert _reject(both | {"bogus": 1}).code == "schema"


@pytest.mark.parametrize(
    ("obj", "field", "fragment"),
    [
        (_tokens(prompt="5"), "tokens.prompt", "valid integer"),
        (_tokens(prompt=1) | {"stepCount": -3}, "stepCount", "greater than or equal"),
        (_tokens(prompt=1) | {"wat": 1}, "wat", "unknown field"),
        (_tokens(prompt=1) | {"kind": "nope"}, "kind", "'nope'"),
        (_tokens(prompt=1) | {"costUsd": "1e-3"}, "costUsd", "plain decimal"),
        (_tokens(prompt=1) | {"schemaVersion": 2}, "schemaVersion", "unsupported"),
        (_tokens(prompt=5, completion=1, reasoning=2), "tokens.reasoning", "(2)"),
        (_tokens(prompt=5, total=6), "tokens.total", "(6)"),
    ],
)
def test_messages_name_the_field(obj: dict[str, Any], field: str, fragment: str) -> None:
    err = _reject(obj)
    assert err.field == field
    assert err.message.startswith(field)
    assert fragment in err.message
    assert err.as_dict() == {"code": err.code, "message": err.message, "field": field}
    assert str(err) == err.message


def test_json_messages() -> None:
    assert "UTF-8" in _reject(b'{"id": "\xc3\x28"}').message
    assert "empty" in _reject(b"").message
    assert "not JSON numbers" in _reject(b'{"value": NaN}').message
    assert "surrogate pair" in _reject(b'{"id": "\\ud800"}').message
    not_object = _reject(b"[]")
    assert (not_object.code, not_object.field) == ("schema", None)
    assert not_object.message == "an entry must be a JSON object, got array"


def test_nan_and_infinity_are_json_wherever_they_are() -> None:
    tool = json.dumps(_base(kind="tool", toolName="t", durationMs=1, success=True)).encode()
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        for raw in (
            tool.replace(b'"durationMs": 1', b'"durationMs": ' + literal),
            tool[:-1] + b', "x": {"y": [' + literal + b"]}}",  # in an unknown field
            tool[:-1] + b', "durationMs": ' + literal + b', "durationMs": 1}',  # overridden
            tool.replace(b'"u1"', literal),  # where a string belongs
            literal,
        ):
            err = _reject(raw)
            assert (err.code, err.field) == ("json", None), raw
    # ...but not inside strings
    ok = tool.replace(b'"toolName": "t"', b'"toolName": "NaN -Infinity"')
    assert parse_entry(ok, now_ms=NOW_MS).tool_name == "NaN -Infinity"  # type: ignore[union-attr]


def test_dict_path_rejects_python_only_types() -> None:
    for bad in ({"stepCount": 1.5}, {"timestamp": 1_780_000_000_000.0}, {"stepCount": True}):
        obj = _tokens(prompt=1) | bad
        with pytest.raises(EntryRejected) as info:
            validate_entry_dict(obj, now_ms=NOW_MS)
        assert info.value.code == "schema"
    for not_an_object in ([1, 2], "x", 3, None, True):
        with pytest.raises(EntryRejected) as info:
            validate_entry_dict(not_an_object, now_ms=NOW_MS)
        assert (info.value.code, info.value.field) == ("schema", None)
        assert "must be a JSON object" in info.value.message
    for non_finite in (float("nan"), float("inf"), -float("inf")):  # no JSON text yet
        with pytest.raises(EntryRejected) as info:
            validate_entry_dict(
                _base(kind="custom", type="a", name="b", value=non_finite), now_ms=NOW_MS
            )
        assert (info.value.code, info.value.field) == ("schema", "value")
    with pytest.raises(EntryRejected) as info:
        validate_entry_dict(_tokens(prompt=1) | {"run_id": "r1"}, now_ms=NOW_MS)
    assert info.value.field == "run_id"


def test_dict_path_size_and_encoding() -> None:
    big = _base(kind="tool", toolName="t", durationMs=1, success=False, error="x" * 70_000)
    with pytest.raises(EntryRejected) as info:
        validate_entry_dict(big, now_ms=NOW_MS)
    assert info.value.code == "too_large"
    # A lone surrogate is not Unicode text, wherever it is: 'json', as on the Kafka path.
    tool = _base(kind="tool", toolName="t", durationMs=1, success=False)
    for bad in (
        _tokens(prompt=1) | {"userId": "\ud800"},
        _tokens(prompt=1) | {"\udc00": 1},
        _tokens(prompt=1) | {"note": ["ok", {"x": "\ud83d"}]},
        _tokens(prompt="x") | {"model": "a\udfffb"},  # outranks the schema error
        tool | {"error": "\ud800"},  # an unconstrained string: caught when encoding
    ):
        with pytest.raises(EntryRejected) as info:
            validate_entry_dict(bad, now_ms=NOW_MS)
        assert (info.value.code, info.value.field) == ("json", None), bad
        assert "lone surrogate" in info.value.message


def test_effective_total_and_cost() -> None:
    assert effective_total(Tokens(prompt=3, completion=4)) == 7
    assert effective_total(Tokens(total=9)) == 9
    assert effective_total(Tokens(completion=2)) == 2
    entry = parse_entry(
        json.dumps(_tokens(prompt=1) | {"costUsd": "0.000000000001"}).encode(), now_ms=NOW_MS
    )
    assert isinstance(entry, TokensEntry)
    assert entry.cost_usd_decimal == Decimal("1E-12")


def test_python_construction_and_wire() -> None:
    entry = TokensEntry(
        id="e",
        kind="tokens",
        run_id="r",
        user_id="u",
        timestamp=1_780_000_000_000,
        model="m",
        tokens=Tokens(prompt=1, cache_write=1),
    )
    wire = entry_to_wire(entry)
    assert wire["runId"] == "r"
    assert wire["tokens"] == {"prompt": 1, "cacheWrite": 1}
    assert parse_entry(entry_to_json(entry), now_ms=NOW_MS) == entry
    with pytest.raises(ValueError, match="reasoning"):
        TokensEntry(
            id="e",
            kind="tokens",
            run_id="r",
            user_id="u",
            timestamp=1_780_000_000_000,
            model="m",
            tokens=Tokens(prompt=1, reasoning=1),
        )


def test_entries_are_frozen() -> None:
    entry = parse_entry(json.dumps(_tokens(prompt=1)).encode(), now_ms=NOW_MS)
    with pytest.raises(ValueError, match="frozen"):
        entry.user_id = "other"  # type: ignore[misc]
