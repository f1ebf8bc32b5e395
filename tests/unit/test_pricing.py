from __future__ import annotations

import datetime as dt
import importlib.util
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.domain.pricing import (
    ModelEntry,
    ModelPrice,
    PriceCatalog,
    PriceCatalogError,
    Priced,
    load_catalog,
    parse_prices_document,
)

D = Decimal
ROOT = Path(__file__).resolve().parents[2]


def ms(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> int:
    return int(dt.datetime(y, m, d, hh, mm, ss, tzinfo=dt.UTC).timestamp() * 1000)


T = ms(2025, 6, 1, 12)


def catalog(*entries: ModelEntry) -> PriceCatalog:
    return PriceCatalog(entries)


def cost(cat: PriceCatalog, model: str, t: int, c: dict[str, int]) -> int:
    return cat.price_tokens(
        model,
        timestamp_ms=t,
        prompt=c.get("prompt", 0),
        completion=c.get("completion", 0),
        reasoning=c.get("reasoning", 0),
        cached=c.get("cached", 0),
        cache_write=c.get("cache_write", 0),
    ).cost_pico


# A model whose five rates all differ, so every split rule shows in the figures.
SPLIT = ModelEntry(
    "split-model",
    "acme",
    (
        ModelPrice.of(
            dt.date(2024, 1, 1),
            D("1"),
            D("4"),
            cached_input=D("0.1"),
            cache_write=D("1.25"),
            reasoning=D("8"),
        ),
    ),
)
DATED = ModelEntry(
    "dated-model",
    "acme",
    (
        ModelPrice.of(dt.date(2024, 1, 1), D("1"), D("2")),
        ModelPrice.of(dt.date(2024, 6, 1), D("3"), D("6")),
        ModelPrice.of(dt.date(2025, 1, 1), D("0.5"), D("1")),
    ),
)


# -- §7 pricing rules ------------------------------------------------------------------


def test_contract_example_gpt_4o_mini() -> None:
    cat = PriceCatalog.builtin()
    entry = cat.lookup("gpt-4o-mini")
    assert entry is not None and entry.provider == "openai"
    first = entry.prices[0]
    assert first.effective_from == dt.date(2024, 7, 18)
    assert (first.input, first.cached_input, first.output) == (D("0.15"), D("0.075"), D("0.6"))
    assert (first.cache_write, first.reasoning) == (D("0.15"), D("0.6"))  # defaults
    # 800 uncached * 0.15 + 200 cached * 0.075 + 500 output * 0.60 = 435 micro-USD
    p = cat.price_tokens(
        "gpt-4o-mini", timestamp_ms=ms(2024, 7, 18), prompt=1000, cached=200, completion=500
    )
    assert p == Priced(435_000_000, True, "openai", "gpt-4o-mini")


def test_every_split_rule() -> None:
    cat = catalog(SPLIT)
    # 1000 prompt tokens at input 1 USD/M = 1e6 pico per token
    assert cat.price_tokens("split-model", prompt=1000, timestamp_ms=T).cost_pico == 1_000_000_000
    # cached: 300 at 0.1, the other 700 at 1
    assert cat.price_tokens("split-model", prompt=1000, cached=300, timestamp_ms=T).cost_pico == (
        300 * 100_000 + 700 * 1_000_000
    )
    # cache write: 200 at 1.25, 800 at 1
    assert cat.price_tokens(
        "split-model", prompt=1000, cache_write=200, timestamp_ms=T
    ).cost_pico == (200 * 1_250_000 + 800 * 1_000_000)
    # reasoning: 250 at 8, the other 350 completion tokens at 4
    assert cat.price_tokens(
        "split-model", completion=600, reasoning=250, timestamp_ms=T
    ).cost_pico == (250 * 8_000_000 + 350 * 4_000_000)
    everything = cat.price_tokens(
        "split-model",
        prompt=1000,
        cached=300,
        cache_write=200,
        completion=600,
        reasoning=250,
        timestamp_ms=T,
    )
    # 0.0005 + 0.00003 + 0.00025 + 0.0014 + 0.002 USD
    assert everything.cost_pico == 4_180_000_000


def test_total_only_is_priced_at_input() -> None:
    cat = catalog(SPLIT)
    assert cat.price_tokens("split-model", timestamp_ms=T, total_only=1234).cost_pico == (
        1234 * 1_000_000
    )
    builtin = PriceCatalog.builtin()
    assert (
        builtin.price_tokens("gpt-4o-mini", timestamp_ms=T, total_only=1_000_000).cost_pico
        == 150_000 * 1_000_000
    )  # 0.15 USD
    with pytest.raises(ValueError):
        cat.price_tokens("split-model", timestamp_ms=T, total_only=10, prompt=10)
    with pytest.raises(ValueError):
        cat.price_tokens("split-model", timestamp_ms=T, total_only=-1)


def test_effective_date_switches_at_utc_midnight() -> None:
    cat = catalog(DATED)

    def at(t: int) -> int:
        return cat.price_tokens("dated-model", timestamp_ms=t, prompt=1).cost_pico

    assert at(ms(2024, 5, 31, 23, 59, 59) + 999) == 1_000_000
    assert at(ms(2024, 6, 1)) == 3_000_000
    assert at(ms(2024, 12, 31, 23, 59, 59) + 999) == 3_000_000
    assert at(ms(2025, 1, 1)) == 500_000
    assert at(ms(2030, 1, 1)) == 500_000
    # before the first effectiveFrom: the earliest known price
    assert at(ms(2020, 1, 1)) == 1_000_000
    assert cat.price_at("dated-model", ms(2024, 6, 1)) == DATED.prices[1]
    # an effective date is a UTC date: 2024-06-01T01:00+02:00 is still May 31 in UTC
    local = dt.datetime(2024, 6, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert at(int(local.timestamp() * 1000)) == 1_000_000


def test_unknown_model_is_unpriced() -> None:
    cat = PriceCatalog.builtin()
    assert cat.price_tokens("no-such-model", timestamp_ms=T, prompt=10) == Priced(0, False, None)
    assert cat.price_tokens("no-such-model", timestamp_ms=T, provider="acme", prompt=10) == Priced(
        0, False, "acme"
    )
    assert "no-such-model" not in cat


def test_provider_inferred_unless_given() -> None:
    cat = PriceCatalog.builtin()
    assert cat.price_tokens("claude-3-5-haiku", timestamp_ms=T, prompt=1).provider == "anthropic"
    azure = cat.price_tokens("gpt-4o", timestamp_ms=T, provider="azure", prompt=1)
    assert azure.provider == "azure" and azure.priced
    assert cat.provider_for("gemini-2.5-pro") == "google"
    assert cat.provider_for("nope") is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": 10, "cached": 6, "cache_write": 5},
        {"completion": 5, "reasoning": 6},
        {"prompt": 1, "cached": -1},
        {"prompt": 1, "cache_write": -1},
        {"completion": 1, "reasoning": -1},
    ],
)
def test_invariant_violations_raise(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        cost(catalog(SPLIT), "split-model", T, kwargs)


token_counts = st.tuples(
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
).map(
    # (uncached, cached, cache_write, plain output, reasoning) -> a valid entry
    lambda t: {
        "prompt": t[0] + t[1] + t[2],
        "cached": t[1],
        "cache_write": t[2],
        "completion": t[3] + t[4],
        "reasoning": t[4],
    }
)


@given(
    token_counts,
    token_counts,
    st.sampled_from(["split-model", "dated-model"]),
    st.integers(ms(2020, 1, 1), ms(2030, 1, 1)),
)
def test_cost_is_additive_and_never_negative(
    a: dict[str, int], b: dict[str, int], model: str, t: int
) -> None:
    cat = catalog(SPLIT, DATED)
    both = {k: a[k] + b[k] for k in a}
    pa, pb = cost(cat, model, t, a), cost(cat, model, t, b)
    assert pa >= 0 and pb >= 0
    assert cost(cat, model, t, both) == pa + pb


@given(token_counts)
def test_cost_matches_decimal_reference(c: dict[str, int]) -> None:
    p = SPLIT.prices[0]
    usd = (
        (c["prompt"] - c["cached"] - c["cache_write"]) * p.input
        + c["cached"] * p.cached_input
        + c["cache_write"] * p.cache_write
        + (c["completion"] - c["reasoning"]) * p.output
        + c["reasoning"] * p.reasoning
    ) / 10**6
    got = cost(catalog(SPLIT), "split-model", T, c)
    assert D(got) == usd * 10**12


# -- lookup -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # alias
        ("GPT-4o-Mini", "gpt-4o-mini"),  # case-insensitive
        (" gpt-4o-mini ", "gpt-4o-mini"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),  # provider prefix
        ("openrouter/openai/gpt-4o", "gpt-4o"),
        ("models/gemini-2.0-flash", "gemini-2.0-flash"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # own entry beats date stripping
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4.1-mini-2030-01-01", "gpt-4.1-mini"),  # -YYYY-MM-DD stripped
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),  # -YYYYMMDD stripped
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-3-7-sonnet@20250219", "claude-3-7-sonnet"),  # @YYYYMMDD stripped
        ("anthropic/claude-opus-4-1-20250805", "claude-opus-4-1"),
    ],
)
def test_lookup_rules(raw: str, name: str) -> None:
    entry = PriceCatalog.builtin().lookup(raw)
    assert entry is not None and entry.name == name


@pytest.mark.parametrize("raw", ["gpt-4o-mini-foo", "gpt", "claude-3-5", "", "gpt-4o-mini-2024"])
def test_lookup_does_not_guess(raw: str) -> None:
    assert PriceCatalog.builtin().lookup(raw) is None


def test_lookup_cache_is_bounded() -> None:
    cat = catalog(SPLIT)
    for i in range(10_000):
        cat.lookup(f"m{i}")
    assert len(cat._cache) <= 4096
    assert cat.lookup("split-model") is SPLIT


# -- built-in catalog ---------------------------------------------------------------------


def test_builtin_catalog_contents() -> None:
    cat = PriceCatalog.builtin()
    expected = [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "claude-3-5-sonnet-20241022",
        "claude-3-5-haiku",
        "claude-3-7-sonnet",
        "claude-sonnet-4",
        "claude-opus-4",
        "claude-3-opus",
        "claude-3-haiku",
        "gemini-1.5-pro",
        "gemini-1.5-flash",
        "gemini-2.0-flash",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "mistral-large",
        "mistral-small",
        "codestral",
    ]
    missing = [m for m in expected if m not in cat]
    assert not missing
    assert len(cat) >= 40
    for entry in cat:
        assert entry.provider in {"openai", "anthropic", "google", "mistral"}
    sonnet = cat.lookup("claude-3-5-sonnet-20241022")
    assert sonnet is not None
    assert sonnet.prices[-1].cache_write == D("3.75") and sonnet.prices[-1].cached_input == D("0.3")
    o3 = cat.lookup("o3")
    assert o3 is not None and [p.input for p in o3.prices] == [D("10"), D("2")]
    assert o3.prices[1].effective_from == dt.date(2025, 6, 10)


def test_builtin_yaml_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("gen_prices", ROOT / "tools" / "gen_prices.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (ROOT / "processor" / "domain" / "prices.yaml").read_text(encoding="utf-8")
    assert mod.render() == text


# -- price files ------------------------------------------------------------------------


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def test_price_file_overrides_and_extends(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        models:
          gpt-4o-mini:               # negotiated: replaces the built-in list entirely
            prices:
              - effectiveFrom: "2025-01-01"
                input: "0.10"
                output: "0.40"
          my-local-llm:
            provider: self-hosted
            aliases: [local-llm]
            prices:
              - effectiveFrom: 2025-01-01   # an unquoted YAML date works too
                input: 0.01
                cachedInput: "0"
                cacheWrite: "0.02"
                output: "0.03"
                reasoning: "0.05"
        """,
    )
    cat = load_catalog(path)
    assert len(cat) == len(PriceCatalog.builtin()) + 1
    mini = cat.lookup("gpt-4o-mini-2024-07-18")  # built-in alias follows the override
    assert mini is not None and mini.provider == "openai"  # provider kept when omitted
    assert len(mini.prices) == 1 and mini.prices[0].input == D("0.10")
    # before the negotiated list's first date: its earliest price, never the list price
    p = cat.price_tokens("gpt-4o-mini", timestamp_ms=ms(2024, 8, 1), prompt=1000, cached=500)
    assert p.cost_pico == 1000 * 100_000  # cachedInput defaults to input
    local = cat.price_tokens(
        "LOCAL-LLM",
        timestamp_ms=T,
        prompt=100,
        cached=50,
        cache_write=10,
        completion=20,
        reasoning=5,
    )
    assert local == Priced(
        40 * 10_000 + 10 * 20_000 + 15 * 30_000 + 5 * 50_000, True, "self-hosted", "my-local-llm"
    )
    assert load_catalog(None).lookup("my-local-llm") is None


BAD_FILES = [
    ("[]", "top level"),
    ("models: {}\nextra: 1", "top level"),
    ("models: [1]", "'models' must be a mapping"),
    ("models:\n  m: 1", "model 'm': must be a mapping"),
    ("models:\n  m: {prices: []}", "model 'm', prices: must be a non-empty list"),
    ("models:\n  m: {pricez: []}", "unknown field"),
    (
        "models:\n  m: {prices: [{effectiveFrom: '2024-01-01', output: '1'}]}",
        "model 'm', prices[0].input: required",
    ),
    (
        "models:\n  m: {prices: [{effectiveFrom: '2024-01-01', input: '0.1234567', output: '1'}]}",
        "model 'm', prices[0].input: 0.1234567 has more than 6 decimal places",
    ),
    (
        "models:\n  m: {prices: [{effectiveFrom: '2024-01-01', input: '1', output: '-1'}]}",
        "prices[0].output",
    ),
    (
        "models:\n  m: {prices: [{effectiveFrom: '2024-01-01', input: '1', output: 'x'}]}",
        "prices[0].output: 'x' is not a decimal",
    ),
    (
        "models:\n  m: {prices: [{effectiveFrom: '2024-01-01', input: '1', output: '1',"
        " cachedInput: 'NaN'}]}",
        "prices[0].cachedInput",
    ),
    (
        "models:\n  m: {prices: [{effectiveFrom: '2024-13-01', input: '1', output: '1'}]}",
        "prices[0].effectiveFrom",
    ),
    (
        "models:\n  m: {prices: [{effectiveFrom: '2024-01-01T00:00:00', input: '1', output: '1'}]}",
        "prices[0].effectiveFrom",
    ),
    (
        "models:\n  m: {prices: [{effectiveFrom: '2024-01-01', input: 1, output: 1, ouput: 1}]}",
        "prices[0]: unknown field(s) ['ouput']",
    ),
    (
        "models:\n  m: {prices: [{effectiveFrom: '2024-02-01', input: '1', output: '1'},"
        " {effectiveFrom: '2024-01-01', input: '1', output: '1'}]}",
        "prices[1].effectiveFrom: 2024-01-01 must be after 2024-02-01",
    ),
    (
        "models:\n  m: {provider: 3, prices: [{effectiveFrom: '2024-01-01', input: 1, output: 1}]}",
        "provider",
    ),
    (
        "models:\n  m: {aliases: x, prices: [{effectiveFrom: '2024-01-01', input: 1, output: 1}]}",
        "aliases",
    ),
    (
        "models:\n  m: {prices: [{effectiveFrom: '2024-01-01', input: true, output: 1}]}",
        "prices[0].input",
    ),
    ("models: [", "invalid YAML"),
]


@pytest.mark.parametrize(("body", "message"), BAD_FILES)
def test_bad_price_files(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(PriceCatalogError) as exc:
        load_catalog(path)
    assert message in str(exc.value)
    assert str(path) in str(exc.value)


def test_missing_price_file(tmp_path: Path) -> None:
    with pytest.raises(PriceCatalogError, match="cannot read"):
        load_catalog(tmp_path / "nope.yaml")


def test_model_price_validation_direct() -> None:
    with pytest.raises(ValueError, match="reasoning"):
        ModelPrice.of(dt.date(2024, 1, 1), D("1"), D("1"), reasoning=D("0.0000001"))
    with pytest.raises(ValueError, match="effectiveFrom"):
        ModelPrice.of(dt.datetime(2024, 1, 1, tzinfo=dt.UTC), D("1"), D("1"))
    with pytest.raises(ValueError, match="at least one price"):
        ModelEntry("m", None, ())
    assert ModelPrice.of(dt.date(2024, 1, 1), D("0.000001"), D("123456.5")).rates == (
        1,
        1,
        1,
        123_456_500_000,
        123_456_500_000,
    )


def test_parse_prices_document_names_source() -> None:
    with pytest.raises(PriceCatalogError, match=r"^inline: "):
        parse_prices_document({"models": {"m": {}}}, "inline")
