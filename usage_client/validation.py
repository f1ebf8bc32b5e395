"""Local validation of an entry before it is sent: the processor's own rules (§2)."""

from __future__ import annotations

import time
from typing import Any

from schemas.entry import DEFAULT_MAX_BYTES, entry_to_json, validate_entry_dict
from schemas.errors import EntryRejected
from usage_client.errors import EntryValidationError

__all__ = ["encode_entry", "now_ms"]


def now_ms() -> int:
    """The wall clock in integer epoch milliseconds."""
    return time.time_ns() // 1_000_000


def encode_entry(entry: dict[str, Any], *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Validate ``entry`` (a camelCase dict) exactly as the processor will and return the
    compact UTF-8 JSON to publish. Raises :class:`EntryValidationError` (a ``ValueError``)
    naming the field. As in the TypeScript client: a non-dict is ``schema`` (field
    ``None``), a non-finite float is ``schema`` on its field, a string holding a lone
    surrogate is ``json`` (it cannot be encoded as UTF-8)."""
    try:
        parsed = validate_entry_dict(entry, now_ms=now_ms(), max_bytes=max_bytes)
    except EntryRejected as exc:
        raise EntryValidationError(exc.code, exc.message, exc.field) from None
    return entry_to_json(parsed)
