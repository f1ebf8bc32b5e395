"""Rejection of a usage entry and the mapping of pydantic errors to contract codes (§5).

Only runs on the error path, so it may take its time to produce clear messages. Every
message starts with the camelCase dotted path of the offending field when there is one.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import ValidationError
from pydantic_core import ErrorDetails

__all__ = ["REJECTION_CODES", "EntryRejected", "RejectionCode", "rejection_from_validation_error"]

#: Every dead-letter code (§5). ``internal`` is the processor's own failure on a message,
#: never a validation outcome, so it is not in ``REJECTION_CODES``.
RejectionCode = Literal["json", "schema", "invariant", "too_large", "timestamp", "internal"]
REJECTION_CODES: Final[tuple[RejectionCode, ...]] = (
    "json",
    "schema",
    "invariant",
    "too_large",
    "timestamp",
)

#: When one entry breaks several rules, the earliest class of check wins.
_RANK: Final[dict[str, int]] = {
    "too_large": 0,
    "json": 1,
    "schema": 2,
    "timestamp": 3,
    "invariant": 4,
}
_KINDS: Final = "tokens, tool, subagent, custom"
_NOT_OBJECT_TYPES: Final = frozenset({"dict_type", "model_type", "model_attributes_type"})


class EntryRejected(Exception):
    """A usage entry was rejected; it becomes a dead letter with this ``code``."""

    __slots__ = ("code", "field", "message")

    def __init__(self, code: RejectionCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code: RejectionCode = code
        self.message = message
        self.field = field

    def as_dict(self) -> dict[str, str | None]:
        """``{"code", "message", "field"}`` as used in dead letters and ingest responses."""
        return {"code": self.code, "message": self.message, "field": self.field}

    def __repr__(self) -> str:
        return f"EntryRejected(code={self.code!r}, field={self.field!r}, message={self.message!r})"


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


#: Labels pydantic appends to the location of an error inside an ``int | float`` union.
_INT_BRANCH: Final = frozenset({"int", "constrained-int"})
_NUMBER_BRANCHES: Final = _INT_BRANCH | {"float", "constrained-float"}


def _path(loc: tuple[int | str, ...]) -> str | None:
    # The first element of a location inside the discriminated union is the tag; the last
    # may be the branch label of a number union (int | float).
    parts = loc[1:]
    if parts and parts[-1] in _NUMBER_BRANCHES:
        parts = parts[:-1]
    return ".".join(str(p) for p in parts) if parts else None


def _json_message(err: ErrorDetails, raw: bytes | None) -> str:
    if raw is not None:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 1].hex()
            return f"value is not valid UTF-8 (byte 0x{bad} at offset {exc.start})"
        if not raw.strip():
            return "value is empty; expected a JSON object"
    msg = err["msg"]
    if "surrogate" in msg or "end of hex escape" in msg:
        msg += (
            " (a \\uD800-\\uDFFF escape is only allowed as half of a surrogate pair: a lone "
            "surrogate is not Unicode text)"
        )
    return msg


def _classify(err: ErrorDetails, raw: bytes | None) -> tuple[RejectionCode, str | None, str]:
    """Return ``(code, field, message)`` for one pydantic error."""
    etype = err["type"]
    loc = err["loc"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    if etype == "json_invalid":
        return "json", None, _json_message(err, raw)
    if not loc and etype in _NOT_OBJECT_TYPES:  # a JSON text, but not an object: schema
        got = _json_type_name(err.get("input"))
        return "schema", None, f"an entry must be a JSON object, got {got}"
    if etype == "union_tag_not_found":
        return "schema", "kind", f"kind: field required (one of {_KINDS})"
    if etype == "union_tag_invalid":
        tag = ctx.get("tag")
        return "schema", "kind", f"kind: unknown kind {tag!r} (expected one of {_KINDS})"
    if etype == "invariant":
        return "invariant", str(ctx.get("field", "tokens")), err["msg"]
    field = _path(loc)
    if etype == "timestamp":
        return "timestamp", field, err["msg"]
    label = field or "entry"
    if etype == "extra_forbidden":
        return "schema", field, f"{label}: unknown field (not part of schema version 1)"
    if etype == "missing":
        return "schema", field, f"{label}: field required"
    if field == "schemaVersion" and etype in ("greater_than_equal", "less_than_equal"):
        return (
            "schema",
            field,
            (
                f"schemaVersion: unsupported schema version {err.get('input')!r}; "
                "this processor accepts schemaVersion 1"
            ),
        )
    if field == "costUsd" and etype == "string_pattern_mismatch":
        return (
            "schema",
            field,
            (
                "costUsd: must be a plain decimal string >= 0 and below 1000000 with at most "
                f'12 decimals, e.g. "0.0012" (got {err.get("input")!r})'
            ),
        )
    message = f"{label}: {err['msg']}"
    if etype.endswith("_type"):
        message += f" (got {_json_type_name(err.get('input'))})"
    return "schema", field, message


def rejection_from_validation_error(exc: ValidationError, raw: bytes | None) -> EntryRejected:
    """Map a validation failure to one :class:`EntryRejected` (the highest-priority error)."""
    best: tuple[RejectionCode, str | None, str] | None = None
    best_rank = 99
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        if loc and loc[-1] in _INT_BRANCH:
            continue  # always paired with the (more telling) error of the float branch
        code, field, message = _classify(err, raw)
        rank = _RANK[code]
        if rank < best_rank:
            best, best_rank = (code, field, message), rank
    if best is None:  # pragma: no cover - pydantic never raises without errors
        return EntryRejected("schema", str(exc), None)
    code, field, message = best
    return EntryRejected(code, message, field)
