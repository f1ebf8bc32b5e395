from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.domain.money import (
    INT64_MAX,
    MAX_COUNTER_USD,
    PICO_PER_USD,
    fits_int64,
    format_usd,
    parse_usd,
    pico_to_decimal,
    round_half_even_pico,
    usd_to_pico,
)

picos = st.integers(min_value=-(10**30), max_value=10**30)


@pytest.mark.parametrize(
    ("text", "pico"),
    [
        ("0", 0),
        ("12", 12 * PICO_PER_USD),
        ("0.001234", 1_234_000_000),
        ("0.000000000001", 1),
        ("1.500000000000", 1_500_000_000_000),
        ("007.5", 7_500_000_000_000),
        ("9223372.036854775807", INT64_MAX),
    ],
)
def test_parse_usd(text: str, pico: int) -> None:
    assert parse_usd(text) == pico


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",
        "1 ",
        "+1",
        "1e-3",
        "1E3",
        ".5",
        "5.",
        "1.2.3",
        "0x10",
        "NaN",
        "inf",
        "1,5",
        "٣",
        "0.0000000000001",
        "1" * 41,
    ],
)
def test_parse_usd_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_usd(text)


def test_parse_usd_negative_only_when_allowed() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_usd("-0.5")
    assert parse_usd("-0.5", allow_negative=True) == -500_000_000_000
    assert parse_usd("-0", allow_negative=True) == 0


def test_parse_usd_error_names_decimal_places() -> None:
    with pytest.raises(ValueError, match="13 decimal places"):
        parse_usd("0.1234567890123")


def test_parse_usd_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        parse_usd(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pico", "text"),
    [
        (0, "0"),
        (12_000_000_000_000, "12"),
        (1_234_000_000, "0.001234"),
        (1, "0.000000000001"),
        (-500_000_000_000, "-0.5"),
        (-1, "-0.000000000001"),
        (10**30, "1" + "0" * 18),
    ],
)
def test_format_usd(pico: int, text: str) -> None:
    assert format_usd(pico) == text


@given(picos)
def test_round_trip_and_no_exponent(pico: int) -> None:
    text = format_usd(pico)
    assert "e" not in text.lower()
    assert re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?", text), text
    if len(text) <= 40:
        assert parse_usd(text, allow_negative=True) == pico
    assert usd_to_pico(Decimal(text)) == pico
    assert usd_to_pico(pico_to_decimal(pico)) == pico


@given(st.lists(st.integers(min_value=0, max_value=10**18), max_size=50))
def test_sums_are_exact(values: list[int]) -> None:
    texts = [format_usd(v) for v in values]
    total = sum(parse_usd(t) for t in texts)
    assert total == sum(values)
    assert pico_to_decimal(total) == sum((pico_to_decimal(v) for v in values), Decimal(0))


def test_pico_to_decimal_is_exact_whatever_the_context() -> None:
    with localcontext() as ctx:
        ctx.prec = 5
        d = pico_to_decimal(123_456_789_012_345_678)
    assert str(d) == "123456.789012345678"
    assert pico_to_decimal(12 * PICO_PER_USD) == Decimal(12)
    assert pico_to_decimal(-1) == Decimal("-0.000000000001")


def test_usd_to_pico_exact_or_raise() -> None:
    assert usd_to_pico(Decimal("0.15")) == 150_000_000_000
    assert usd_to_pico(Decimal("1.50000000000000000")) == 1_500_000_000_000
    assert usd_to_pico(Decimal("1E+3")) == 1000 * PICO_PER_USD
    assert usd_to_pico(Decimal("-2.5")) == -2_500_000_000_000
    for bad in ("0.0000000000001", "NaN", "Infinity", "1E+100"):
        with pytest.raises(ValueError):
            usd_to_pico(Decimal(bad))
    with pytest.raises(TypeError):
        usd_to_pico(0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("numer", "denom", "expected"),
    [
        (10, 4, 2),  # 2.5 -> 2 (even)
        (14, 4, 4),  # 3.5 -> 4 (even)
        (11, 4, 3),  # 2.75 -> 3
        (9, 4, 2),  # 2.25 -> 2
        (-10, 4, -2),  # -2.5 -> -2
        (-14, 4, -4),  # -3.5 -> -4
        (-11, 4, -3),
        (10, -4, -2),
        (7, 7, 1),
        (0, 3, 0),
        (1, 3, 0),
        (2, 3, 1),
    ],
)
def test_round_half_even_pico(numer: int, denom: int, expected: int) -> None:
    assert round_half_even_pico(numer, denom) == expected


@given(st.integers(-(10**24), 10**24), st.integers(1, 10**6))
def test_round_half_even_matches_decimal(numer: int, denom: int) -> None:
    with localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(numer) / Decimal(denom)
        expected = int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))
    assert round_half_even_pico(numer, denom) == expected


def test_round_half_even_zero_denominator() -> None:
    with pytest.raises(ZeroDivisionError):
        round_half_even_pico(1, 0)


def test_int64_limit() -> None:
    assert fits_int64(INT64_MAX) and not fits_int64(INT64_MAX + 1)
    assert str(MAX_COUNTER_USD) == "9223372.036854775807"
