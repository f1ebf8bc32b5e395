"""JSON Schema documents of every message and response, committed under ``schemas/json/``.

Inputs (the usage entry, request bodies) are exported in ``mode="validation"``, outputs in
``mode="serialization"``; always by alias (camelCase). Formatting is stable: sorted keys,
indent 2, trailing newline. The OpenAPI-only ``discriminator`` keyword is left out so that
plain JSON Schema validators (e.g. Ajv in strict mode) accept the documents; the
``oneOf`` branches are told apart by their ``kind`` constant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import TypeAdapter

from schemas import api
from schemas.alert import Alert
from schemas.deadletter import DeadLetter
from schemas.entry import UsageEntry
from schemas.invoice import Invoice, InvoiceStatusUpdate

__all__ = ["DEFAULT_DIR", "SCHEMAS", "check_json_schemas", "export_json_schemas", "render"]

DEFAULT_DIR: Final = Path(__file__).resolve().parent / "json"
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

Mode = Literal["validation", "serialization"]

_ENTRY_DESCRIPTION: Final = (
    "One usage entry of an LLM agent (schema version 1), the value of a message on "
    "usage.entries. camelCase; unknown fields are rejected. Rules JSON Schema cannot "
    "express, checked by the processor: timestamp <= receiver's clock + 24 h (code "
    "'timestamp'); for kind 'tokens' (code 'invariant', a missing count counts as 0): at "
    "least one of tokens.prompt, tokens.completion, tokens.total is present; "
    "tokens.reasoning <= tokens.completion; tokens.cached + tokens.cacheWrite <= "
    "tokens.prompt; tokens.total, when present with prompt or completion, equals prompt + "
    "completion. A value larger than 65536 bytes is rejected (code 'too_large'). The value "
    "must be exactly one RFC 8259 JSON text in UTF-8 (code 'json'): no byte order mark, no "
    "NaN/Infinity literals, no trailing data, no lone surrogate escapes such as \\ud800."
)

#: file name -> (type, mode, title, description override)
SCHEMAS: Final[dict[str, tuple[Any, Mode, str, str | None]]] = {
    "usage-entry.schema.json": (UsageEntry, "validation", "UsageEntry", _ENTRY_DESCRIPTION),
    "dead-letter.schema.json": (DeadLetter, "serialization", "DeadLetter", None),
    "alert.schema.json": (Alert, "serialization", "Alert", None),
    "invoice.schema.json": (Invoice, "serialization", "Invoice", None),
    "api-token-counts.schema.json": (api.TokenCounts, "serialization", "TokenCounts", None),
    "api-run-rollup.schema.json": (api.RunRollup, "serialization", "RunRollup", None),
    "api-entries-page.schema.json": (api.EntriesPage, "serialization", "EntriesPage", None),
    "api-run-list.schema.json": (api.RunList, "serialization", "RunList", None),
    "api-user-usage.schema.json": (api.UserUsage, "serialization", "UserUsage", None),
    "api-daily-usage.schema.json": (api.DailyUsage, "serialization", "DailyUsage", None),
    "api-monthly-usage.schema.json": (api.MonthlyUsage, "serialization", "MonthlyUsage", None),
    "api-dashboard.schema.json": (api.Dashboard, "serialization", "Dashboard", None),
    "api-billing-users.schema.json": (api.BillingUsers, "serialization", "BillingUsers", None),
    "api-alert-list.schema.json": (api.AlertList, "serialization", "AlertList", None),
    "api-budgets.schema.json": (api.Budgets, "serialization", "Budgets", None),
    "api-invoice-list.schema.json": (api.InvoiceList, "serialization", "InvoiceList", None),
    "api-ingest-request.schema.json": (api.IngestRequest, "validation", "IngestRequest", None),
    "api-ingest-response.schema.json": (
        api.IngestResponse,
        "serialization",
        "IngestResponse",
        None,
    ),
    "api-invoice-status-update.schema.json": (
        InvoiceStatusUpdate,
        "validation",
        "InvoiceStatusUpdate",
        None,
    ),
    "api-error-response.schema.json": (api.ErrorResponse, "serialization", "ErrorResponse", None),
}


def _strip_discriminator(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _strip_discriminator(v)
            for k, v in node.items()
            if not (k == "discriminator" and isinstance(v, dict) and "propertyName" in v)
        }
    if isinstance(node, list):
        return [_strip_discriminator(v) for v in node]
    return node


def render(name: str) -> str:
    """The exact text of one schema file."""
    tp, mode, title, description = SCHEMAS[name]
    schema: dict[str, Any] = TypeAdapter(tp).json_schema(by_alias=True, mode=mode)
    schema = _strip_discriminator(schema)
    schema["$schema"] = _DIALECT
    schema["title"] = title
    if description is not None:
        schema["description"] = description
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_json_schemas(out_dir: Path = DEFAULT_DIR) -> list[Path]:
    """Write every schema file into ``out_dir`` (created if needed); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in SCHEMAS:
        path = out_dir / name
        text = render(name)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check_json_schemas(directory: Path = DEFAULT_DIR) -> list[str]:
    """Names of schema files that are missing from ``directory`` or differ from the code."""
    stale: list[str] = []
    for name in SCHEMAS:
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(name):
            stale.append(name)
    return stale
