"""Wire schemas of usage-stream: usage entries (§2), dead letters (§5), alerts (§4),
invoices (§3.5) and API responses (§3), with their exported JSON Schema documents."""

from schemas.entry import (
    CustomEntry,
    SubagentEntry,
    Tokens,
    TokensEntry,
    ToolEntry,
    UsageEntry,
    effective_total,
    entry_to_json,
    entry_to_wire,
    parse_entry,
    validate_entry_dict,
)
from schemas.errors import EntryRejected

__all__ = [
    "CustomEntry",
    "EntryRejected",
    "SubagentEntry",
    "Tokens",
    "TokensEntry",
    "ToolEntry",
    "UsageEntry",
    "effective_total",
    "entry_to_json",
    "entry_to_wire",
    "parse_entry",
    "validate_entry_dict",
]
