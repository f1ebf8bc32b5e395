"""Dead letters, alerts, invoices, API models and the committed JSON Schema files."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import api
from schemas.alert import Alert
from schemas.common import format_usd, is_plain_decimal
from schemas.deadletter import DeadLetter, build_dead_letter
from schemas.entry import parse_entry
from schemas.errors import EntryRejected
from schemas.export import DEFAULT_DIR, SCHEMAS, check_json_schemas, export_json_schemas
from schemas.invoice import Invoice, InvoiceStatus, is_allowed_transition

NOW_MS = 1_795_392_000_000


def _rejection(raw: bytes) -> EntryRejected:
    with pytest.raises(EntryRejected) as info:
        parse_entry(raw, now_ms=NOW_MS)
    return info.value


def test_dead_letter_utf8() -> None:
    raw = '{"id": "é", "kind": "tokens"'.encode()
    err = _rejection(raw)
    out = build_dead_letter(raw, b"run-1", "usage.entries", 3, 42, err, 1_795_000_000_000)
    doc = json.loads(out)
    assert doc == {
        "error": {"code": "json", "message": err.message, "field": None},
        "receivedAt": 1_795_000_000_000,
        "topic": "usage.entries",
        "partition": 3,
        "offset": 42,
        "key": "run-1",
        "value": raw.decode(),
    }
    assert DeadLetter.model_validate_json(out).value == raw.decode()


def test_dead_letter_not_utf8() -> None:
    raw = b'{"id": "\xff\xfe"}'
    err = _rejection(raw)
    out = build_dead_letter(raw, None, "usage.entries", 0, 7, err, 1)
    doc = json.loads(out)
    assert doc["valueEncoding"] == "base64"
    assert base64.b64decode(doc["value"]) == raw
    assert doc["key"] is None
    assert "keyEncoding" not in doc
    assert doc["error"]["code"] == "json"


def test_dead_letter_binary_key_and_field() -> None:
    raw = b'{"id": "e", "kind": "tokens", "runId": "r", "userId": "u", "timestamp": 1}'
    err = _rejection(raw)
    out = build_dead_letter(raw, b"\x80key", "t", 1, 2, err, 3)
    doc = DeadLetter.model_validate_json(out)
    assert doc.key_encoding == "base64"
    assert doc.key is not None
    assert base64.b64decode(doc.key) == b"\x80key"
    assert doc.value_encoding is None
    assert doc.error.code == "schema"
    assert doc.error.field == "model"


def test_format_usd_is_plain() -> None:
    assert format_usd(Decimal("0E-12")) == "0"
    assert format_usd(Decimal("1.2300")) == "1.23"
    assert format_usd(Decimal("1E+2")) == "100"
    assert format_usd(Decimal("0.000000000001")) == "0.000000000001"
    assert format_usd(Decimal("-0")) == "0"
    for text in ("0", "12", "0.001234", "-1.5"):
        assert is_plain_decimal(text)
    for text in ("1E-3", "0E-12", "NaN", ".5", "1.", "", "+1"):
        assert not is_plain_decimal(text)


def test_api_models_serialize_camel_case_and_reject_exponents() -> None:
    counts = api.TokenCounts(prompt=1, completion=2, cache_write=1, total=3)
    assert counts.model_dump() == {
        "prompt": 1,
        "completion": 2,
        "reasoning": 0,
        "cached": 0,
        "cacheWrite": 1,
        "total": 3,
    }
    dash = api.Dashboard(
        monthly=api.CostTotals(total_tokens=3, cost_usd="0.5"),
        all_time=api.CostTotals(total_tokens=9, cost_usd="1"),
        average_daily_cost_usd="0.022727272727",
    )
    assert set(dash.model_dump()) == {"monthly", "allTime", "averageDailyCostUsd"}
    assert dash.model_dump()["monthly"] == {"totalTokens": 3, "costUsd": "0.5"}
    with pytest.raises(ValidationError):
        api.CostTotals(total_tokens=1, cost_usd="1E-3")
    err = api.ErrorResponse.model_validate({"error": {"code": "not_found", "message": "x"}})
    assert err.model_dump() == {"error": {"code": "not_found", "message": "x"}}
    ingest = api.IngestResponse(
        accepted=1,
        rejected=[
            api.IngestRejection(
                index=2, error=api.IngestError(code="schema", message="m", field="model")
            ),
        ],
    )
    assert ingest.model_dump() == {
        "accepted": 1,
        "rejected": [{"index": 2, "error": {"code": "schema", "message": "m", "field": "model"}}],
    }


def test_run_rollup_keys() -> None:
    zero = api.TokenCounts()
    rollup = api.RunRollup(
        run_id="r",
        user_id="u",
        tenant_id="default",
        agent_name=None,
        tokens=zero,
        tokens_by_model={},
        cost_usd="0",
        cost_by_model={},
        tokens_including_sub_agents=zero,
        cost_including_sub_agents_usd="0",
        custom_including_sub_agents={"a": {"b": 1}},
        tool_stats=api.ToolStats(by_tool={"t": api.CallStats(calls=1)}),
        sub_agent_stats=api.SubAgentStats(),
        custom={"a": {"b": 1.5}},
        sub_agent_run_ids=[],
        started_at=1,
        last_updated_at=2,
        entry_count=0,
    )
    dumped: dict[str, Any] = rollup.model_dump()
    assert set(dumped) == {
        "runId",
        "userId",
        "tenantId",
        "agentName",
        "tokens",
        "tokensByModel",
        "costUsd",
        "costByModel",
        "tokensIncludingSubAgents",
        "costIncludingSubAgentsUsd",
        "customIncludingSubAgents",
        "toolStats",
        "subAgentStats",
        "custom",
        "subAgentRunIds",
        "startedAt",
        "lastUpdatedAt",
        "entryCount",
    }
    assert dumped["toolStats"]["byTool"]["t"] == {
        "calls": 1,
        "successfulCalls": 0,
        "failedCalls": 0,
        "totalDurationMs": 0,
    }
    assert dumped["customIncludingSubAgents"] == {"a": {"b": 1}}
    assert set(dumped["subAgentStats"]) == {
        "totalCalls",
        "successfulCalls",
        "failedCalls",
        "totalDurationMs",
        "byType",
    }


def test_invoice_and_alert() -> None:
    inv = Invoice(
        invoice_id="inv-1",
        tenant_id="default",
        user_id="u",
        period="2026-10",
        amount_usd="1.5",
        lines=[{"model": "m", "tokens": 10, "amountUsd": "1.5"}],
        generated_at=5,
    )
    dumped = inv.model_dump(mode="json")
    assert dumped["status"] == "pending"
    assert dumped["adjustmentUsd"] == "0"
    assert dumped["lines"] == [{"model": "m", "tokens": 10, "amountUsd": "1.5"}]
    with pytest.raises(ValidationError):
        Invoice.model_validate(dumped | {"period": "2026-13"})
    assert is_allowed_transition("pending", "paid")
    assert is_allowed_transition(InvoiceStatus.FAILED, "paid")
    assert not is_allowed_transition("paid", "failed")
    assert not is_allowed_transition("failed", "pending")
    alert = Alert.model_validate(
        {
            "alertId": "a",
            "rule": "user-daily-spend",
            "level": "warning",
            "tenantId": "default",
            "subject": {"type": "user", "id": "u"},
            "window": {"kind": "day", "start": 0, "end": None},
            "metric": "costUsd",
            "observed": "80.5",
            "threshold": "80",
            "triggeredAt": 1,
            "entryId": "e",
            "message": "m",
        }
    )
    assert alert.model_dump()["window"] == {"kind": "day", "start": 0, "end": None}


def test_json_schema_files_are_up_to_date() -> None:
    assert check_json_schemas(DEFAULT_DIR) == []


def test_json_schema_export_roundtrip(tmp_path: Path) -> None:
    written = export_json_schemas(tmp_path)
    assert sorted(p.name for p in written) == sorted(SCHEMAS)
    assert check_json_schemas(tmp_path) == []
    (tmp_path / "alert.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "invoice.schema.json").unlink()
    assert check_json_schemas(tmp_path) == ["alert.schema.json", "invoice.schema.json"]
    for path in written:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        assert text.endswith("}\n")
        canonical = json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
        assert canonical + "\n" == text


def test_entry_schema_document() -> None:
    doc = json.loads((DEFAULT_DIR / "usage-entry.schema.json").read_text(encoding="utf-8"))
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "discriminator" not in json.dumps(doc)
    assert len(doc["oneOf"]) == 4
    defs = doc["$defs"]
    for name in ("TokensEntry", "ToolEntry", "SubagentEntry", "CustomEntry", "Tokens", "Source"):
        assert defs[name]["additionalProperties"] is False, name
    tokens_entry = defs["TokensEntry"]
    assert "costUsd" in tokens_entry["properties"]
    assert "runId" in tokens_entry["required"]
    assert "tokens" in tokens_entry["required"]
    assert tokens_entry["properties"]["kind"]["const"] == "tokens"
    entry_doc = " ".join(tokens_entry["description"].split())
    for rule in ("reasoning <= tokens.completion", "cacheWrite <= tokens.prompt", "invariant"):
        assert rule in doc["description"]
        assert rule in entry_doc
    assert defs["TokensEntry"]["properties"]["timestamp"]["minimum"] == 1_577_836_800_000


def test_entry_schema_accepts_valid_vectors_and_rejects_schema_vectors() -> None:
    import jsonschema

    doc = json.loads((DEFAULT_DIR / "usage-entry.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(doc)
    examples = DEFAULT_DIR.parent / "examples"
    for path in (examples / "valid").glob("*.json"):
        assert validator.is_valid(json.loads(path.read_bytes())), path.name
    expected = json.loads((examples / "expected.json").read_text(encoding="utf-8"))
    for name, exp in expected.items():
        if exp["code"] != "schema":
            continue
        obj = json.loads((examples / "invalid" / name).read_bytes())
        # JSON Schema cannot tell 1.0 from 1, and has no int64 maximum for the timestamp
        # (a JavaScript validator would read 2**63 - 1 as 2**63; the processor rejects it).
        lenient = ("integral-float", "completion-float", "timestamp-2-pow")
        if not any(word in name for word in lenient):
            assert not validator.is_valid(obj), name
