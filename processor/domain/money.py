"""Exact money: integer pico-dollars (1 pico-dollar = 1e-12 USD) everywhere internally.

Why integers: Redis ``HINCRBY`` is exact on integers, sums of integers are exact and
associative, and every price in the catalog (at most 6 decimal places per million tokens)
yields a whole number of pico-dollars per token. Decimal strings are used only at the edges
(the wire, the API, YAML files).

Overflow limit: Redis counters are signed 64-bit integers, so one counter holds at most
``INT64_MAX`` pico-dollars = 9,223,372.036854775807 USD (about 9.2 million USD). That is far
above any per-user, per-run or per-day figure this service tracks; callers that add to a
Redis counter can check :func:`fits_int64` on the result they expect.
"""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_COUNTER_USD",
    "PICO_DECIMALS",
    "PICO_PER_USD",
    "fits_int64",
    "format_usd",
    "parse_usd",
    "pico_to_decimal",
    "round_half_even_pico",
    "usd_to_pico",
]

PICO_DECIMALS = 12
PICO_PER_USD = 10**PICO_DECIMALS
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
#: The largest amount one int64 Redis counter can hold, in USD (exact).
MAX_COUNTER_USD = Decimal(INT64_MAX).scaleb(-PICO_DECIMALS)

# ASCII digits only: ``\d`` would also accept e.g. Arabic-Indic digits.
_DECIMAL_RE = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?", re.ASCII)
_MAX_TEXT_LEN = 40  # 28 integer digits + 12 decimals: far past int64 already
_MAX_EXPONENT = 40  # bound for Decimal inputs, so 10**exp never gets huge


def parse_usd(text: str, *, allow_negative: bool = False) -> int:
    """Parse a plain decimal USD string into pico-dollars, exactly.

    Accepted: ``"0"``, ``"12"``, ``"0.001234"``, ``"1.500000000000"`` (at most 12 decimal
    places); with ``allow_negative=True`` also ``"-0.5"`` (adjustments). Rejected with a
    ``ValueError`` naming the problem: empty text, signs ``+``, exponents (``1e-3``),
    whitespace, a bare ``.``/``5.``/``.5``, non-ASCII digits, more than 12 decimal places.

    >>> parse_usd("0.001234"), parse_usd("-0.5", allow_negative=True)
    (1234000000, -500000000000)
    """
    if not isinstance(text, str):
        raise TypeError(f"USD amount must be a string, got {type(text).__name__}")
    if len(text) > _MAX_TEXT_LEN:
        raise ValueError(f"USD amount is too long ({len(text)} characters): {text[:20]!r}...")
    m = _DECIMAL_RE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"USD amount {text!r} is not a plain decimal string "
            "(digits with an optional '.' fraction; no exponent, sign '+' or spaces)"
        )
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    if sign and not allow_negative:
        raise ValueError(f"USD amount {text!r} is negative; only amounts >= 0 are allowed here")
    if len(frac) > PICO_DECIMALS:
        raise ValueError(
            f"USD amount {text!r} has {len(frac)} decimal places; at most {PICO_DECIMALS} allowed"
        )
    pico: int = int(whole) * PICO_PER_USD + int(frac.ljust(PICO_DECIMALS, "0"))
    return -pico if sign else pico


def format_usd(pico: int) -> str:
    """Format pico-dollars as a plain decimal USD string without trailing zeros.

    ``0 -> "0"``, ``12_000_000_000_000 -> "12"``, ``1_234_000_000 -> "0.001234"``,
    ``-500_000_000_000 -> "-0.5"``. Never uses an exponent; ``parse_usd`` reverses it.

    >>> format_usd(12_000_000_000_000), format_usd(1_234_000_000), format_usd(-500_000_000_000)
    ('12', '0.001234', '-0.5')
    """
    if isinstance(pico, bool) or not isinstance(pico, int):
        raise TypeError(f"pico-dollars must be an int, got {type(pico).__name__}")
    sign = "-" if pico < 0 else ""
    whole, frac = divmod(abs(pico), PICO_PER_USD)
    if frac == 0:
        return f"{sign}{whole}"
    frac_text = f"{frac:0{PICO_DECIMALS}d}".rstrip("0")
    return f"{sign}{whole}.{frac_text}"


def usd_to_pico(d: Decimal) -> int:
    """Convert a Decimal USD amount to pico-dollars; raise ``ValueError`` unless exact.

    Trailing zeros past 12 places are fine (``Decimal("1.50000000000000")``); a non-zero
    digit past 12 places, NaN and infinities are not. Independent of the decimal context.
    """
    if not isinstance(d, Decimal):
        raise TypeError(f"expected Decimal, got {type(d).__name__}")
    if not d.is_finite():
        raise ValueError(f"USD amount {d} is not finite")
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)  # finite
    if exponent > _MAX_EXPONENT:
        raise ValueError(f"USD amount {d} is too large")
    n: int = int("".join(map(str, digits)) or "0")
    shift = exponent + PICO_DECIMALS
    pico: int
    if shift >= 0:
        pico = n * 10**shift
    else:
        q, r = divmod(n, 10**-shift)
        if r:
            raise ValueError(
                f"USD amount {d} has more than {PICO_DECIMALS} decimal places "
                "and cannot be represented exactly in pico-dollars"
            )
        pico = q
    return -pico if sign else pico


def pico_to_decimal(pico: int) -> Decimal:
    """Exact Decimal USD value of ``pico`` pico-dollars (exponent -12, e.g. ``12.000000000000``).

    Exact whatever the decimal context precision, since no arithmetic is performed.
    """
    if isinstance(pico, bool) or not isinstance(pico, int):
        raise TypeError(f"pico-dollars must be an int, got {type(pico).__name__}")
    digits = tuple(int(c) for c in str(abs(pico)))
    return Decimal((1 if pico < 0 else 0, digits, -PICO_DECIMALS))


def round_half_even_pico(numer: int, denom: int) -> int:
    """``numer / denom`` rounded to a whole pico-dollar, ties to even (banker's rounding).

    Used for averages such as ``averageDailyCostUsd`` ("rounded half-even to 12 decimal
    places"): pass the total in pico-dollars and the number of days. Exact integer maths.

    >>> round_half_even_pico(5, 2), round_half_even_pico(7, 2), round_half_even_pico(-5, 2)
    (2, 4, -2)
    """
    if denom == 0:
        raise ZeroDivisionError("round_half_even_pico: denominator is zero")
    if denom < 0:
        numer, denom = -numer, -denom
    q, r = divmod(numer, denom)  # floor division: 0 <= r < denom
    twice = 2 * r
    if twice > denom or (twice == denom and q % 2 == 1):
        q += 1
    return q


def fits_int64(pico: int) -> bool:
    """True when ``pico`` fits a signed 64-bit Redis integer."""
    return INT64_MIN <= pico <= INT64_MAX
