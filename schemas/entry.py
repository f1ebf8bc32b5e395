"""Usage entry, schema version 1 (CONTRACT §2): models, parsing and wire helpers.

Parsing is on the hot path: one module-level :class:`~pydantic.TypeAdapter` validates raw
bytes in a single pass (``validate_json``); rejections are mapped to a contract code
afterwards (see :mod:`schemas.errors`). Checks run in this order and the first failing
class wins: ``too_large`` (size), ``json``, ``schema``, ``timestamp``, ``invariant``.

Decisions where the contract is silent:

* Types are strict: ``"5"`` is not an integer, ``1.0`` is not an integer (timestamps,
  token counts and ``stepCount`` must be JSON integers), ``true`` is not a number.
* ``null`` for an optional field without a default (``provider``, ``threadId``, ``source``,
  ``tokens.prompt``, ...) means absent; fields with a default (``tenantId``,
  ``stepCount``, ``schemaVersion``, ``tokens``) and required fields reject ``null``.
* ``schemaVersion`` other than 1 is a ``schema`` rejection.
* Optional identifiers (``threadId``, ``agentName``, ``parentRunId``, ...) must be non-empty.
* A missing token count counts as 0 in every invariant (so ``reasoning`` without
  ``completion`` is only valid when it is 0).
* Bounds, so that nothing downstream can overflow (out of range is ``schema`` on the
  field): token counts and ``stepCount`` 0..2**53 - 1; ``durationMs`` finite,
  0..10_000_000_000 (1e10 ms, about 115 days); custom ``value`` finite, -1e15..1e15 (the
  same for integer and fractional literals); ``costUsd`` below 1,000,000 (at most 6
  integer digits) with at most 12 decimals. Negative zero (``-0.0``) is accepted and read
  as ``0.0``. ``timestamp`` must be a JSON integer that fits in 64 bits (-2**63..2**63-1):
  a larger one (``2**70``) is ``schema`` on ``timestamp``, like any other type error (it is
  not a point in time; JavaScript's ``JSON.stringify`` cannot even write a number >= 1e21
  as an integer, so both clients agree on ``schema``); a 64-bit integer outside the
  allowed range (before 2020, after now + 24 h) is ``timestamp``.

JSON (code ``json``) means RFC 8259: the value must be exactly one JSON text, UTF-8
encoded. So invalid UTF-8, a byte order mark (RFC 8259 §8.1 forbids sending one; it is not
JSON whitespace), an empty or whitespace-only value, trailing data after the value, and the
literals ``NaN``, ``Infinity`` and ``-Infinity`` anywhere in the document (also inside an
unknown field, or under a key that a later duplicate overrides) are all ``json`` with field
``null``. pydantic-core's parser reads those literals as floats, so :func:`parse_entry`
re-checks with them disallowed whenever the bytes contain ``NaN`` or ``Infinity``; a number
literal that overflows a double (``1e400``) is valid JSON and is rejected by the field's
range (``schema``). A JSON text that is not an object (string, number, array,
``true``/``false``, ``null``) is ``schema`` with field ``null``.

* Duplicate keys (RFC 8259 leaves their meaning open): the last occurrence wins, as in
  most JSON parsers and in both clients.
* Lone surrogates (``"\\ud800"``, an unpaired ``"\\udc00"``, a reversed pair): RFC 8259
  §8.2 admits the escape in its grammar but says software behaviour is unpredictable, and
  I-JSON (RFC 7493 §2.1) forbids it. Such a string is not Unicode text and cannot be
  encoded as UTF-8, so the entry could not be stored or forwarded as the UTF-8 JSON text
  the contract requires: code ``json``, field ``null``, wherever it occurs (a known field,
  an unknown field, a key). The same holds on the dict path (:func:`validate_entry_dict`,
  used by HTTP ingest and the Python client) for a Python ``str`` holding a surrogate; the
  TypeScript client escapes one when it encodes the entry and rejects it the same way.
* On the dict path a non-finite ``float`` is ``schema`` on its field (there is no JSON
  text yet: the finite-number rule names the field); the TypeScript client does the same.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticSerializationError, from_json

from schemas.common import ENTRY_COST_PATTERN, MAX_SAFE_INT, WireModel
from schemas.errors import EntryRejected, rejection_from_validation_error

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_CUSTOM_VALUE",
    "MAX_DURATION_MS",
    "MAX_FUTURE_MS",
    "MIN_TIMESTAMP_MS",
    "SCHEMA_VERSION",
    "CustomEntry",
    "EntryRejected",
    "Source",
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

SCHEMA_VERSION: Final = 1
#: 2020-01-01T00:00:00Z in epoch milliseconds: the earliest accepted ``timestamp``.
MIN_TIMESTAMP_MS: Final = 1_577_836_800_000
#: How far in the future (relative to the receiver's clock) a ``timestamp`` may lie.
MAX_FUTURE_MS: Final = 24 * 3600 * 1000
#: A message on ``usage.entries`` larger than 64 KiB is a dead letter.
DEFAULT_MAX_BYTES: Final = 64 * 1024
#: Largest ``durationMs`` of a tool or sub-agent call: 1e10 ms (about 115 days), so that
#: integer microseconds and their sums stay far inside 64 bits.
MAX_DURATION_MS: Final = 10_000_000_000
#: Largest magnitude of a custom ``value`` (integer or not): 1e15.
MAX_CUSTOM_VALUE: Final = 10**15
#: ``timestamp`` must be a 64-bit integer (else ``schema``); inside, the range is checked.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

Str128 = Annotated[str, Field(min_length=1, max_length=128)]
Str200 = Annotated[str, Field(min_length=1, max_length=200)]
Str256 = Annotated[str, Field(min_length=1, max_length=256)]
Count = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]


def _no_negative_zero(value: int | float) -> int | float:
    return 0.0 if value == 0 and isinstance(value, float) else value  # -0.0 is read as 0.0


# JSON numbers keep their form so that entries read back "as received": integer literals
# stay ``int``, others are ``float``; both branches have the same bounds, so the int branch
# only decides the type. NaN and +-Infinity never get here from bytes (they are not JSON:
# code 'json', see parse_entry); from Python objects they fail the range or the
# ``allow_inf_nan=False`` config.
DurationMs = Annotated[
    Annotated[int, Field(ge=0, le=MAX_DURATION_MS)]
    | Annotated[float, Field(ge=0, le=MAX_DURATION_MS)],
    AfterValidator(_no_negative_zero),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": MAX_DURATION_MS}),
    Field(
        description=(
            "Duration in milliseconds: a finite number, 0 <= durationMs <= 10000000000 "
            "(1e10 ms, about 115 days)."
        )
    ),
]
Number = Annotated[
    Annotated[int, Field(ge=-MAX_CUSTOM_VALUE, le=MAX_CUSTOM_VALUE)]
    | Annotated[float, Field(ge=-MAX_CUSTOM_VALUE, le=MAX_CUSTOM_VALUE)],
    AfterValidator(_no_negative_zero),
    WithJsonSchema({"type": "number", "minimum": -MAX_CUSTOM_VALUE, "maximum": MAX_CUSTOM_VALUE}),
]


class Source(WireModel):
    """What generated the entry."""

    model_config = ConfigDict(strict=True, frozen=True)

    type: Literal["agent", "tool", "subagent"]
    name: Str256


class _EntryBase(WireModel):
    model_config = ConfigDict(strict=True, frozen=True)

    id: Str128 = Field(description="Unique per entry; the idempotency key.")
    run_id: Str256 = Field(description="The agent run the entry belongs to.")
    user_id: Str256 = Field(description="The billed subject.")
    tenant_id: Str128 = "default"
    timestamp: int = Field(
        description=(
            "Event time, integer epoch milliseconds. Must be >= 1577836800000 "
            "(2020-01-01T00:00:00Z) and <= the receiver's clock + 24 h (checked at ingest; "
            "rejected with code 'timestamp'). A JSON integer literal: 1.0 or 1e12 are rejected; "
            "so is one outside the 64-bit range -2**63..2**63-1 (code 'schema')."
        ),
        json_schema_extra={"minimum": MIN_TIMESTAMP_MS},
    )
    step_count: Count = 0
    source: Source | None = None
    thread_id: Str256 | None = None
    agent_name: Str200 | None = Field(
        default=None, description='Agent type; rollups by agent use "unknown" when absent.'
    )
    parent_run_id: Str256 | None = Field(
        default=None, description="Set on entries of a sub-agent's run."
    )
    schema_version: int = Field(
        default=SCHEMA_VERSION,
        ge=SCHEMA_VERSION,
        le=SCHEMA_VERSION,
        description="Schema version; only 1 is accepted.",
        json_schema_extra={"const": SCHEMA_VERSION},
    )

    @field_validator("timestamp", mode="after")
    @classmethod
    def _timestamp_in_range(cls, value: int, info: ValidationInfo) -> int:
        if not INT64_MIN <= value <= INT64_MAX:  # a type error ('schema'), not a range one
            raise PydanticCustomError(
                "int64", "Input should be a 64-bit integer (-2**63 <= timestamp < 2**63)"
            )
        if value < MIN_TIMESTAMP_MS:
            raise PydanticCustomError(
                "timestamp",
                "timestamp {timestamp} is before 2020-01-01T00:00:00Z ({minimum})",
                {"timestamp": value, "minimum": MIN_TIMESTAMP_MS},
            )
        ctx = info.context
        now_ms: int | None = ctx.get("now_ms") if ctx else None
        if now_ms is None:  # validated outside parse_entry: use the wall clock
            now_ms = time.time_ns() // 1_000_000
        if value > now_ms + MAX_FUTURE_MS:
            raise PydanticCustomError(
                "timestamp",
                "timestamp {timestamp} is more than 24 h after the receiver's clock ({now_ms})",
                {"timestamp": value, "now_ms": now_ms},
            )
        return value


class Tokens(WireModel):
    """Token counts of one LLM call (all integers >= 0, all optional).

    Invariants (rejected with code 'invariant'; a missing count counts as 0): at least one
    of prompt, completion, total is present; reasoning <= completion; cached + cacheWrite <=
    prompt; when total is present together with prompt or completion, total == prompt +
    completion. Counts are JSON integer literals (1.0 or 1e3 are rejected).
    """

    model_config = ConfigDict(
        strict=True,
        frozen=True,
        json_schema_extra={
            "anyOf": [{"required": [name]} for name in ("prompt", "completion", "total")]
        },
    )

    prompt: Count | None = Field(
        default=None, description="ALL input tokens, cached reads and cache writes included."
    )
    completion: Count | None = Field(
        default=None, description="ALL output tokens, reasoning included."
    )
    reasoning: Count | None = Field(
        default=None, description="Part of completion; must be <= completion."
    )
    cached: Count | None = Field(
        default=None,
        description="Part of prompt read from cache; cached + cacheWrite must be <= prompt.",
    )
    cache_write: Count | None = Field(default=None, description="Part of prompt written to cache.")
    total: Count | None = Field(
        default=None,
        description=(
            "If absent: prompt + completion. If present together with prompt or completion "
            "it must equal prompt + completion (a missing one counts as 0)."
        ),
    )


def effective_total(tokens: Tokens) -> int:
    """``total`` when present, else ``prompt + completion`` (a missing count is 0)."""
    if tokens.total is not None:
        return tokens.total
    return (tokens.prompt or 0) + (tokens.completion or 0)


def _invariant(field: str, message: str, **values: int) -> PydanticCustomError:
    return PydanticCustomError("invariant", message, {"field": field, **values})


def _require_tokens(schema: dict[str, Any]) -> None:
    # ``tokens`` has a default so that its absence is an 'invariant' rejection, but for
    # producers validating against the JSON Schema it is simply required.
    required = schema.setdefault("required", [])
    if "tokens" not in required:
        required.append("tokens")


class TokensEntry(_EntryBase):
    """One LLM call (kind "tokens").

    Invariants on tokens (rejected with code 'invariant', a missing count counts as 0):
    at least one of tokens.prompt, tokens.completion, tokens.total must be present;
    tokens.reasoning <= tokens.completion; tokens.cached + tokens.cacheWrite <=
    tokens.prompt; tokens.total, when present together with prompt or completion, must
    equal prompt + completion.
    """

    model_config = ConfigDict(json_schema_extra=_require_tokens)

    kind: Literal["tokens"]
    model: Str200 = Field(description="e.g. gpt-4o-mini, claude-3-5-sonnet-20241022")
    provider: Str200 | None = Field(
        default=None, description="e.g. openai; default inferred from the price catalog."
    )
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: str | None = Field(
        default=None,
        pattern=ENTRY_COST_PATTERN,
        description=(
            "Cost reported by the producer, US dollars as a plain decimal string >= 0 with "
            "at most 12 decimals (no exponent, no sign); when present it is used instead "
            "of the price catalog."
        ),
        examples=["0.000123", "1.5", "0"],
    )

    @property
    def cost_usd_decimal(self) -> Decimal | None:
        """``costUsd`` as an exact :class:`~decimal.Decimal` (``None`` when absent)."""
        return None if self.cost_usd is None else Decimal(self.cost_usd)

    @model_validator(mode="after")
    def _token_invariants(self) -> TokensEntry:
        t = self.tokens
        prompt, completion = t.prompt, t.completion
        if prompt is None and completion is None and t.total is None:
            raise _invariant(
                "tokens", "tokens: at least one of prompt, completion, total must be present"
            )
        prompt_n, completion_n = prompt or 0, completion or 0
        if t.reasoning is not None and t.reasoning > completion_n:
            raise _invariant(
                "tokens.reasoning",
                "tokens.reasoning ({reasoning}) must be <= tokens.completion ({completion})",
                reasoning=t.reasoning,
                completion=completion_n,
            )
        cached, cache_write = t.cached or 0, t.cache_write or 0
        if cached + cache_write > prompt_n:
            field = "tokens.cached" if cached > prompt_n else "tokens.cacheWrite"
            raise _invariant(
                field,
                f"{field}: tokens.cached ({{cached}}) + tokens.cacheWrite ({{cache_write}}) "
                "must be <= tokens.prompt ({prompt})",
                cached=cached,
                cache_write=cache_write,
                prompt=prompt_n,
            )
        if (
            t.total is not None
            and (prompt is not None or completion is not None)
            and t.total != prompt_n + completion_n
        ):
            raise _invariant(
                "tokens.total",
                "tokens.total ({total}) must equal tokens.prompt + tokens.completion ({expected})",
                total=t.total,
                expected=prompt_n + completion_n,
            )
        return self


class ToolEntry(_EntryBase):
    """One tool call (kind "tool")."""

    kind: Literal["tool"]
    tool_name: Str256
    duration_ms: DurationMs
    success: bool
    error: str | None = None


class SubagentEntry(_EntryBase):
    """One sub-agent invocation (kind "subagent"); links this run to subAgentRunId."""

    kind: Literal["subagent"]
    sub_agent_type: Str200
    sub_agent_run_id: Str256 = Field(description="The runId of the sub-agent's run.")
    duration_ms: DurationMs
    success: bool
    error: str | None = None


class CustomEntry(_EntryBase):
    """A custom metric (kind "custom"), e.g. type "api_calls", name "tavily"."""

    kind: Literal["custom"]
    type: Str200 = Field(description="e.g. api_calls, llm.embeddings")
    name: Str200 = Field(description="e.g. tavily")
    value: Number = Field(description="A finite number, -1e15 <= value <= 1e15 (negative allowed).")


UsageEntry = Annotated[
    TokensEntry | ToolEntry | SubagentEntry | CustomEntry, Field(discriminator="kind")
]

ENTRY_ADAPTER: Final[TypeAdapter[UsageEntry]] = TypeAdapter(UsageEntry)
_validate_json = ENTRY_ADAPTER.validate_json
_validate_python = ENTRY_ADAPTER.validate_python


def _reject_non_json_numbers(raw: bytes) -> None:
    """Raise ``json`` when ``raw`` holds a bare ``NaN``, ``Infinity`` or ``-Infinity``.

    pydantic-core's JSON parser reads these literals as floats (wherever they are: in an
    unknown field, under a key a later duplicate overrides), but RFC 8259 has no such
    numbers. The substring test keeps the common case to one ``memchr``-speed scan; only
    values that contain one of the words (perhaps inside a string) are parsed again, with
    the literals disallowed.
    """
    if b"NaN" not in raw and b"Infinity" not in raw:
        return
    try:
        from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise EntryRejected(
            "json",
            f"Invalid JSON: {exc}: NaN, Infinity and -Infinity are not JSON numbers (RFC 8259)",
            None,
        ) from None


def parse_entry(raw: bytes, *, now_ms: int, max_bytes: int = DEFAULT_MAX_BYTES) -> UsageEntry:
    """Parse and validate one message value from ``usage.entries``.

    Raises :class:`EntryRejected` with ``code`` in json/schema/invariant/too_large/timestamp.
    """
    if len(raw) > max_bytes:
        raise EntryRejected(
            "too_large", f"entry is {len(raw)} bytes; the limit is {max_bytes} bytes", None
        )
    try:
        entry = _validate_json(raw, strict=True, context={"now_ms": now_ms}, by_name=False)
    except ValidationError as exc:
        rejected = rejection_from_validation_error(exc, raw)
        if rejected.code != "json":
            _reject_non_json_numbers(raw)
        raise rejected from None
    _reject_non_json_numbers(raw)  # e.g. {"value": NaN, "value": 1}: valid once parsed
    return entry


def _has_lone_surrogate(obj: Any) -> bool:
    """True when a ``str`` anywhere in ``obj`` (a key or a value) holds a surrogate code
    point, i.e. cannot be encoded as UTF-8. Iterative: nesting depth does not matter."""
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


_LONE_SURROGATE: Final = (
    "entry is not encodable as UTF-8 JSON: a string holds a lone surrogate "
    "(U+D800..U+DFFF outside a surrogate pair)"
)


def validate_entry_dict(obj: Any, *, now_ms: int, max_bytes: int = DEFAULT_MAX_BYTES) -> UsageEntry:
    """Validate one already-decoded entry (HTTP ingest, the Python client): same rules and
    codes as :func:`parse_entry`. ``too_large`` is checked last, on the compact wire encoding
    (:func:`entry_to_json`), which is what gets published to ``usage.entries``. A string
    holding a lone surrogate is ``json`` (see the module docstring); a non-finite float is
    ``schema`` on its field.
    """
    try:
        entry = _validate_python(obj, strict=True, context={"now_ms": now_ms}, by_name=False)
    except ValidationError as exc:
        if _has_lone_surrogate(obj):  # 'json' outranks whatever else is wrong
            raise EntryRejected("json", _LONE_SURROGATE, None) from None
        raise rejection_from_validation_error(exc, None) from None
    try:
        size = len(entry_to_json(entry))
    except (PydanticSerializationError, UnicodeEncodeError) as exc:  # a surrogate in ``error``
        message = (
            _LONE_SURROGATE
            if _has_lone_surrogate(obj)
            else f"entry is not encodable as UTF-8 JSON: {exc}"
        )
        raise EntryRejected("json", message, None) from None
    if size > max_bytes:
        raise EntryRejected(
            "too_large", f"entry is {size} bytes; the limit is {max_bytes} bytes", None
        )
    return entry


def entry_to_wire(entry: UsageEntry) -> dict[str, Any]:
    """The entry as a camelCase JSON-compatible dict, "as received": fields that were absent
    on input (defaults) are left out; ``kind`` is always present."""
    wire: dict[str, Any] = entry.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if "kind" not in wire:
        wire = {"kind": entry.kind, **wire}
    return wire


def entry_to_json(entry: UsageEntry) -> bytes:
    """Compact UTF-8 JSON of :func:`entry_to_wire` (what a producer would send)."""
    if "kind" in entry.model_fields_set:
        return ENTRY_ADAPTER.dump_json(entry, by_alias=True, exclude_unset=True)
    return json.dumps(entry_to_wire(entry), separators=(",", ":"), ensure_ascii=False).encode()
