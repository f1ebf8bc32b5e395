"""Shared building blocks of the wire models: camelCase config and decimal strings.

Money never travels as a binary float. On the wire it is a *plain* decimal string
(``"0.001234"``, ``"12"``), never an exponent form such as ``"1E-3"`` or ``"0E-12"``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: Largest integer every JSON implementation represents exactly (2**53 - 1, JavaScript's
#: ``Number.MAX_SAFE_INTEGER``). Token counts and step counts are capped at it.
MAX_SAFE_INT: Final = 9_007_199_254_740_991

#: Entry costs (``costUsd``): non-negative, below 1,000,000 USD (at most 6 integer digits)
#: and at most 12 decimals: money is stored as integer pico-dollars in 64-bit counters, and
#: one LLM call never costs a million dollars. Compatible with ECMA-262 and Rust regexes.
ENTRY_COST_PATTERN: Final = r"^(0|[1-9][0-9]{0,5})(\.[0-9]{1,12})?$"

#: Costs the service emits: plain decimal notation, optionally negative, no exponent.
PLAIN_DECIMAL_PATTERN: Final = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$"

_PLAIN_DECIMAL_RE: Final = re.compile(PLAIN_DECIMAL_PATTERN)

#: A cost (USD) as emitted by the service, e.g. ``"0.001234"`` or ``"12"``.
UsdStr = Annotated[
    str,
    Field(
        pattern=PLAIN_DECIMAL_PATTERN,
        description='US dollars as a plain decimal string (no exponent), e.g. "0.001234".',
        examples=["0.001234", "12"],
    ),
]


class WireModel(BaseModel):
    """Base of every message and response: camelCase on the wire, unknown fields rejected.

    Python code may construct models by field name (``run_id=...``) or alias (``runId=...``);
    ``model_dump()``/``model_dump_json()`` produce the camelCase aliases.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        allow_inf_nan=False,
        field_title_generator=lambda name, _info: to_camel(name),
    )


def format_usd(value: Decimal) -> str:
    """Format a decimal amount in plain notation without trailing zeros.

    ``Decimal("0E-12") -> "0"``, ``Decimal("1.2300") -> "1.23"``, ``Decimal("1E+2") -> "100"``.

    The one formatter of ``Decimal`` amounts (USD, prices per million tokens, budget and
    alert figures); integer pico-dollars have theirs, ``processor.domain.money.format_usd``,
    which formats without going through ``Decimal`` on the ingest path.
    """
    if not value.is_finite():
        raise ValueError(f"cannot format non-finite amount {value!r}")
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def is_plain_decimal(text: str) -> bool:
    """True when ``text`` is a decimal string in plain notation (what the service emits)."""
    return _PLAIN_DECIMAL_RE.fullmatch(text) is not None
