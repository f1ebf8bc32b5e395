"""The pricing engine on a small catalog in the built-in format, and prices files.

The built-in catalog itself (all of genai-prices) is checked in test_gen_prices.py and
against ``genai_prices.calc_price`` in test_pricing_agreement.py.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.domain.pricing import (
    PriceCatalog,
    PriceCatalogError,
    load_catalog,
    parse_catalog_document,
)
from processor.domain.pricing.load import merge_file, read_prices_file

D = Decimal


def ms(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> int:
    return int(dt.datetime(y, m, d, hh, mm, tzinfo=dt.UTC).timestamp() * 1000)


T = ms(2025, 6, 1, 12)

DOC: dict[str, Any] = {
    "providers": [
        {
            "id": "maker",
            "name": "Maker",
            "aliases": ["maker.chat", "makerai"],
            "providerMatch": {"startsWith": "maker-"},
            "modelMatch": {"or": [{"startsWith": "mk-"}, {"equals": "open-7b"}]},
            "models": [
                {
                    "id": "mk-pro",
                    "match": {"or": [{"equals": "mk-pro"}, {"startsWith": "mk-pro-2"}]},
                    "prices": [
                        {
                            "input": {"base": "1.25", "tiers": [{"above": 200000, "price": "2.5"}]},
                            "cachedInput": {
                                "base": "0.125",
                                "tiers": [{"above": 200000, "price": "0.25"}],
                            },
                            "cacheWrite": "1.5",
                            "output": {"base": "10", "tiers": [{"above": 200000, "price": "15"}]},
                        },
                        {"effectiveFrom": "2025-07-01", "input": "1", "output": "8"},
                    ],
                },
                {"id": "open-7b", "match": {"equals": "open-7b"}, "prices": [
                    {"input": "0.2", "output": "0.4"}]},
                {"id": "mk-audio", "match": {"equals": "mk-audio"}, "unpriced": "audio only"},
            ],
        },
        {
            "id": "host",
            "name": "Host",
            "fallback": ["maker"],
            "models": [
                {"id": "open-7b", "match": {"contains": "open-7b"}, "prices": [
                    {"input": "0.1", "output": "0.3", "reasoning": "0.5"}]},
            ],
        },
        {
            "id": "other",
            "name": "Other host",
            "models": [
                {"id": "open-7b", "match": {"regex": "^open-7b(-instruct)?$"}, "prices": [
                    {"input": "0.15", "output": "0.15"}]},
            ],
        },
    ]
}  # fmt: skip


def cat(doc: dict[str, Any] = DOC) -> PriceCatalog:
    return PriceCatalog(parse_catalog_document(doc))


def price(
    c: PriceCatalog, model: str, provider: str | None = None, t: int = T, **tokens: int
) -> tuple[int, bool, str | None]:
    counts = {"prompt": 0, "completion": 0, "reasoning": 0, "cached": 0, "cache_write": 0}
    counts.update(tokens)
    p = c.price_tokens(model, timestamp_ms=t, provider=provider, **counts)
    return p.cost_pico, p.priced, p.provider


def test_the_same_model_at_two_providers_has_two_prices() -> None:
    c = cat()
    assert price(c, "open-7b", "host", prompt=10, completion=10) == (
        10 * 100_000 + 10 * 300_000,
        True,
        "host",
    )
    assert price(c, "open-7b", "other", prompt=10, completion=10) == (20 * 150_000, True, "other")
    # without a provider: the model's maker
    by_maker = price(c, "open-7b", None, prompt=10, completion=10)
    assert by_maker == (10 * 200_000 + 10 * 400_000, True, "maker")


def test_a_named_provider_never_falls_back_to_the_maker_unless_the_catalog_says_so() -> None:
    c = cat()
    # "other" has no fallback: a model it does not list is unpriced, not the maker's price
    assert price(c, "mk-pro", "other", prompt=10) == (0, False, "other")
    # "host" lists maker as its fallback (one offers the other's models): maker's price
    assert price(c, "mk-pro", "host", prompt=10) == (10 * 1_250_000, True, "host")


def test_unknown_provider_and_unknown_model_are_unpriced() -> None:
    c = cat()
    assert price(c, "open-7b", "nobody", prompt=10) == (0, False, "nobody")
    assert price(c, "gpt-unknown", None, prompt=10) == (0, False, None)
    assert price(c, "mk-audio", None, prompt=10) == (0, False, "maker")


def test_provider_spellings_and_rules() -> None:
    c = cat()
    for spelling in ("maker", " MAKER ", "maker.chat", "makerai", "maker-eu"):
        assert price(c, "open-7b", spelling, prompt=1) == (200_000, True, "maker"), spelling
    assert price(c, "maker/open-7b", "litellm", prompt=1) == (200_000, True, "maker")


def test_model_rules_case_and_compact_dates() -> None:
    c = cat()
    assert price(c, "MK-Pro", None, prompt=1) == (1_250_000, True, "maker")
    assert price(c, "mk-pro-2025-05-06", None, prompt=1) == (1_250_000, True, "maker")
    assert price(c, "mk-pro-20250506", None, prompt=1) == (1_250_000, True, "maker")
    assert price(c, "open-7b-instruct", "other", prompt=1) == (150_000, True, "other")
    assert price(c, "open-7b-chat", "other", prompt=1)[1] is False


def test_tier_edges() -> None:
    c = cat()
    at = price(c, "mk-pro", None, prompt=200_000)
    assert at == (200_000 * 1_250_000, True, "maker")  # exactly at the threshold: base
    above = price(c, "mk-pro", None, prompt=200_001)
    assert above == (200_001 * 2_500_000, True, "maker")  # one above: every token at the tier
    mixed = price(c, "mk-pro", None, prompt=300_000, cached=100_000, cache_write=50_000,
                  completion=1_000, reasoning=400)  # fmt: skip
    # cache writes are not tiered here; output and reasoning are (reasoning defaults to output)
    expected = 150_000 * 2_500_000 + 100_000 * 250_000 + 50_000 * 1_500_000 + 1_000 * 15_000_000
    assert mixed == (expected, True, "maker")
    below = price(c, "mk-pro", None, prompt=199_999, cached=100_000, completion=10)
    assert below[0] == 99_999 * 1_250_000 + 100_000 * 125_000 + 10 * 10_000_000


def test_an_effective_date_change_takes_effect_at_utc_midnight() -> None:
    c = cat()
    before = price(c, "mk-pro", None, t=ms(2025, 6, 30, 23, 59), prompt=300_000)
    after = price(c, "mk-pro", None, t=ms(2025, 7, 1, 0, 0), prompt=300_000)
    assert before[0] == 300_000 * 2_500_000  # tiered period
    assert after[0] == 300_000 * 1_000_000  # the new price, flat, from that day on


def test_total_only_is_priced_at_the_base_input() -> None:
    c = cat()
    assert c.price_tokens("mk-pro", timestamp_ms=T, total_only=300_000).cost_pico == (
        300_000 * 1_250_000
    )


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9), st.data())
def test_cost_matches_a_decimal_reference(
    prompt: int, completion: int, extra: int, data: Any
) -> None:
    cached = data.draw(st.integers(0, prompt))
    cache_write = data.draw(st.integers(0, prompt - cached))
    reasoning = data.draw(st.integers(0, completion))
    c = cat()
    period = c.price_at("mk-pro", T)
    assert period is not None
    ref = (
        (prompt - cached - cache_write) * period.input.usd_at(prompt)
        + cached * period.cached_input.usd_at(prompt)
        + cache_write * period.cache_write.usd_at(prompt)
        + (completion - reasoning) * period.output.usd_at(prompt)
        + reasoning * period.reasoning.usd_at(prompt)
    ) * 10**6
    got = price(c, "mk-pro", None, prompt=prompt, completion=completion, reasoning=reasoning,
                cached=cached, cache_write=cache_write)  # fmt: skip
    assert D(got[0]) == ref


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def with_file(tmp_path: Path, body: str) -> PriceCatalog:
    path = write(tmp_path, body)
    return PriceCatalog(merge_file(parse_catalog_document(DOC), read_prices_file(path), str(path)))


def test_a_prices_file_overrides_one_providers_model_and_adds_tiers(tmp_path: Path) -> None:
    c = with_file(
        tmp_path,
        """
        models:
          open-7b:                       # negotiated at host only
            provider: host
            prices:
              - effectiveFrom: "2025-01-01"
                input: {base: "0.05", tiers: [{above: 1000, price: "0.5"}]}
                output: "0.06"
          in-house:
            providers:
              host: {prices: [{effectiveFrom: "2024-01-01", input: "1", output: "2"}]}
              selfhosted: {prices: [{effectiveFrom: "2024-01-01", input: "3", output: "4"}]}
          mk-pro:                        # no provider: its maker
            aliases: [mk-pro-custom]
            prices: [{effectiveFrom: "2020-01-01", input: "9", output: "9"}]
        """,
    )
    assert price(c, "open-7b", "host", prompt=1000) == (1000 * 50_000, True, "host")
    assert price(c, "open-7b", "host", prompt=1001) == (1001 * 500_000, True, "host")
    assert price(c, "open-7b", "other", prompt=10) == (10 * 150_000, True, "other")  # untouched
    assert price(c, "open-7b", None, prompt=10) == (10 * 200_000, True, "maker")  # untouched
    assert price(c, "in-house", "host", prompt=1)[0] == 1_000_000
    assert price(c, "in-house", "selfhosted", prompt=1) == (3_000_000, True, "selfhosted")
    # the file's price replaces the built-in list, snapshots included
    assert price(c, "mk-pro-2025-01-01", None, prompt=300_000)[0] == 300_000 * 9_000_000
    assert price(c, "mk-pro-custom", "maker", prompt=1)[0] == 9_000_000
    found = c.resolve("mk-pro", None)
    assert found is not None and found.model.source == str(tmp_path / "prices.yaml")


TIER = "{{base: '1', tiers: [{0}]}}"
BAD_FILES = [
    ("[]", "top level"),
    ("models: {}\nextra: 1", "top level"),
    ("models:\n  m: 1", "model 'm': must be a mapping"),
    ("models:\n  m: {provider: p, prices: []}", "model 'm', prices: must be a non-empty list"),
    ("models:\n  m: {provider: p, pricez: []}", "unknown field"),
    (
        "models:\n  m: {provider: p, prices: [{effectiveFrom: '2024-01-01', output: '1'}]}",
        "model 'm', prices[0].input: required",
    ),
    (
        "models:\n  m: {provider: p, prices: [{effectiveFrom: '2024-01-01', input: '0.1234567',"
        " output: '1'}]}",
        "model 'm', prices[0].input: 0.1234567 has more than 6 decimal places",
    ),
    (
        "models:\n  m: {provider: p, prices: [{effectiveFrom: '2024-01-01', input: '1',"
        " output: 'x'}]}",
        "prices[0].output: 'x' is not a decimal",
    ),
    (
        "models:\n  m: {providers: {p: {prices: [{effectiveFrom: '2024-01-01', input: '1',"
        f" output: {TIER.format('{above: 10, price: 2}, {above: 10, price: 3}')}}}]}}}}}}",
        "model 'm', provider 'p', prices[0].output.tiers[1].above: 10 must be greater",
    ),
    (
        "models:\n  m: {provider: p, prices: [{effectiveFrom: '2024-01-01', input: '1',"
        f" output: {TIER.format('{above: -5, price: 2}')}}}]}}",
        "prices[0].output.tiers[0].above: -5 must be >= 0",
    ),
    (
        "models:\n  m: {provider: p, prices: [{effectiveFrom: '2024-01-01', input: '1',"
        f" output: {TIER.format('{above: 1.5, price: 2}')}}}]}}",
        "prices[0].output.tiers[0].above: 1.5 must be an integer",
    ),
    (
        "models:\n  m: {provider: p, prices: [{effectiveFrom: '2024-01-01', input: '1',"
        f" output: {TIER.format('{above: 5, price: 0.0000001}')}}}]}}",
        "prices[0].output.tiers[0].price: 1E-7 has more than 6 decimal places",
    ),
    (
        "models:\n  m: {provider: p, prices: [{effectiveFrom: '2024-02-01', input: '1',"
        " output: '1'}, {effectiveFrom: '2024-01-01', input: '1', output: '1'}]}",
        "prices[1].effectiveFrom: 2024-01-01 must be after 2024-02-01",
    ),
    (
        "models:\n  nobody-makes-this: {prices: [{effectiveFrom: '2024-01-01', input: 1,"
        " output: 1}]}",
        "model 'nobody-makes-this', provider: required",
    ),
    ("models: [", "invalid YAML"),
]


@pytest.mark.parametrize(("body", "message"), BAD_FILES)
def test_bad_price_files_stop_start_up_naming_model_and_field(
    tmp_path: Path, body: str, message: str
) -> None:
    path = write(tmp_path, body)
    with pytest.raises(PriceCatalogError) as exc:
        PriceCatalog(merge_file(parse_catalog_document(DOC), read_prices_file(path), str(path)))
    assert message in str(exc.value)
    assert str(path) in str(exc.value)


def test_a_file_with_one_bad_model_applies_nothing(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        models:
          good: {provider: host, prices: [{effectiveFrom: "2024-01-01", input: "1", output: "1"}]}
          bad: {provider: host, prices: [{effectiveFrom: "2024-01-01", input: "1", output: "-1"}]}
        """,
    )
    with pytest.raises(PriceCatalogError, match="model 'bad'"):
        load_catalog(path)


def test_invariant_violations_raise() -> None:
    c = cat()
    with pytest.raises(ValueError):
        c.price_tokens("mk-pro", timestamp_ms=T, prompt=1, cached=2)
    with pytest.raises(ValueError):
        c.price_tokens("mk-pro", timestamp_ms=T, completion=1, reasoning=2)
    with pytest.raises(ValueError):
        c.price_tokens("mk-pro", timestamp_ms=T, prompt=1, total_only=5)


def test_lookup_caches_are_bounded() -> None:
    c = cat()
    for i in range(20_000):
        c.resolve(f"nope-{i}", "host")
    assert len(c._cache) <= 8192
