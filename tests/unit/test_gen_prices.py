"""tools/gen_prices.py and the built-in catalog it writes (processor/domain/prices.yaml).

The committed file must be exactly what the generator writes from the installed
genai-prices (a stale file fails here), hold every genai-prices provider and model in
genai-prices' order, and keep the facts below. Whether the engine prices that catalog as
genai-prices does is test_pricing_agreement.py's job.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import genai_prices
import pytest
import yaml
from genai_prices.data import providers as GENAI_PROVIDERS
from genai_prices.data_snapshot import find_provider_by_id

ROOT = Path(__file__).resolve().parents[2]
PRICES = ROOT / "processor" / "domain" / "prices.yaml"

PROVIDER_KEYS = ["id", "name", "aliases", "providerMatch", "modelMatch", "fallback", "models"]
PERIOD_KEYS = [
    "effectiveFrom",
    "utcHours",
    "input",
    "cachedInput",
    "cacheWrite",
    "output",
    "reasoning",
    "perThousandCalls",
]
CLAUSE_KEYS = {"equals", "startsWith", "endsWith", "contains", "regex", "or", "and"}
DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]{0,5}[1-9])?")  # plain, <= 6 places, no exponent


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_prices", ROOT / "tools" / "gen_prices.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rendered(gen: ModuleType) -> str:
    text = gen.render()
    assert isinstance(text, str)
    return text


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    with PRICES.open(encoding="utf-8") as f:
        loaded = yaml.load(f, Loader=yaml.CSafeLoader)
    assert isinstance(loaded, dict)
    return loaded


def provider(doc: dict[str, Any], pid: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in doc["providers"] if p["id"] == pid]
    assert len(found) == 1, pid
    return found[0]


def model(doc: dict[str, Any], pid: str, mid: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [m for m in provider(doc, pid)["models"] if m["id"] == mid]
    assert len(found) == 1, (pid, mid)
    return found[0]


# -- the file is current -------------------------------------------------------------------


def test_committed_prices_yaml_is_what_the_generator_writes(rendered: str) -> None:
    assert PRICES.read_text(encoding="utf-8") == rendered, (
        "processor/domain/prices.yaml is stale: run .venv/bin/python tools/gen_prices.py"
    )
    assert f"from genai-prices {genai_prices.__version__} " in rendered.splitlines()[1]


def test_check_option_exits_1_on_a_stale_file(
    gen: ModuleType, rendered: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gen, "render", lambda: rendered)
    out = tmp_path / "prices.yaml"
    assert gen.main(["--check", "--out", str(out)]) == 1  # missing
    out.write_text(rendered.replace('"input": "2.5"', '"input": "2.4"', 1), encoding="utf-8")
    assert gen.main(["--check", "--out", str(out)]) == 1  # edited
    assert gen.main(["--out", str(out)]) == 0
    assert out.read_bytes() == rendered.encode("utf-8")
    assert gen.main(["--check", "--out", str(out)]) == 0


def test_render_is_deterministic(gen: ModuleType, rendered: str) -> None:
    assert gen.render() == rendered


# -- shape ---------------------------------------------------------------------------------


def test_every_genai_prices_provider_and_model_in_order(doc: dict[str, Any]) -> None:
    assert [p["id"] for p in doc["providers"]] == [p.id for p in GENAI_PROVIDERS]
    for ours, theirs in zip(doc["providers"], GENAI_PROVIDERS, strict=True):
        assert ours["name"] == theirs.name
        assert [m["id"] for m in ours["models"]] == [m.id for m in theirs.models], theirs.id
        assert ours.get("fallback") == theirs.fallback_model_providers
        assert ("providerMatch" in ours) == (theirs.provider_match is not None)
        assert ("modelMatch" in ours) == (theirs.model_match is not None)
    assert len(doc["providers"]) == len(GENAI_PROVIDERS)
    total = sum(len(p["models"]) for p in doc["providers"])
    assert total == sum(len(p.models) for p in GENAI_PROVIDERS)


def test_json_body_is_the_same_document(gen: ModuleType, doc: dict[str, Any]) -> None:
    body = gen.json_body(PRICES.read_text(encoding="utf-8"))
    assert json.loads(body) == doc


def _check_clause(c: Any) -> None:
    assert isinstance(c, dict) and len(c) == 1
    ((kind, arg),) = c.items()
    assert kind in CLAUSE_KEYS
    if kind in ("or", "and"):
        assert isinstance(arg, list) and arg
        for x in arg:
            _check_clause(x)
    else:
        assert isinstance(arg, str)
        if kind == "regex":
            re.compile(arg)


def _check_price(v: Any) -> None:
    if isinstance(v, str):
        assert DECIMAL.fullmatch(v), v
        return
    assert list(v) == ["base", "tiers"]
    assert DECIMAL.fullmatch(v["base"]), v
    aboves = [t["above"] for t in v["tiers"]]
    assert aboves == sorted(set(aboves)) and aboves
    for t in v["tiers"]:
        assert list(t) == ["above", "price"]
        assert type(t["above"]) is int and t["above"] >= 0
        assert DECIMAL.fullmatch(t["price"]), t


def test_keys_decimals_and_periods_follow_the_format(doc: dict[str, Any]) -> None:
    for p in doc["providers"]:
        keys = list(p)
        assert keys == [k for k in PROVIDER_KEYS if k in keys], p["id"]
        for key in ("providerMatch", "modelMatch"):
            if key in p:
                _check_clause(p[key])
        for m in p["models"]:
            assert list(m)[:2] == ["id", "match"] and len(m) == 3, m
            assert list(m)[2] in ("prices", "unpriced"), m
            _check_clause(m["match"])
            if "unpriced" in m:
                assert isinstance(m["unpriced"], str) and m["unpriced"]
                continue
            periods = m["prices"]
            assert periods and "effectiveFrom" not in periods[0], m["id"]
            # later periods start at a date, or are time-of-day (peak-hour) prices
            assert all(("effectiveFrom" in x) != ("utcHours" in x) for x in periods[1:]), m["id"]
            dates = [
                dt.date.fromisoformat(x["effectiveFrom"]) for x in periods if "effectiveFrom" in x
            ]
            assert dates == sorted(set(dates)), m["id"]
            for period in periods:
                keys = list(period)
                assert keys == [k for k in PERIOD_KEYS if k in keys], m["id"]
                assert "input" in period or "output" in period, m["id"]
                for key in keys:
                    if key == "utcHours":
                        assert set(period[key]) == {"from", "to"}, m["id"]
                    elif key != "effectiveFrom":
                        _check_price(period[key])


# -- known facts ---------------------------------------------------------------------------


def test_gemini_2_5_pro_has_a_long_context_input_tier(doc: dict[str, Any]) -> None:
    (period,) = model(doc, "google", "gemini-2.5-pro")["prices"]
    assert period["input"] == {"base": "1.25", "tiers": [{"above": 200000, "price": "2.5"}]}
    assert period["output"] == {"base": "10", "tiers": [{"above": 200000, "price": "15"}]}
    assert period["cachedInput"]["base"] == "0.125"


def test_claude_sonnet_4_5_prices(doc: dict[str, Any]) -> None:
    m = model(doc, "anthropic", "claude-sonnet-4-5")
    assert m["match"] == {
        "or": [{"startsWith": "claude-sonnet-4-5"}, {"startsWith": "claude-sonnet-4.5"}]
    }

    def tiered(base: str, above: str) -> dict[str, Any]:
        return {"base": base, "tiers": [{"above": 200000, "price": above}]}

    assert m["prices"] == [
        {
            "input": tiered("3", "6"),
            "cachedInput": tiered("0.3", "0.6"),
            "cacheWrite": tiered("3.75", "7.5"),  # the 5-minute write; the 1-hour one is dropped
            "output": tiered("15", "22.5"),
        }
    ]


def test_start_dates_become_periods(doc: dict[str, Any]) -> None:
    o3 = model(doc, "openai", "o3")["prices"]
    assert [p.get("effectiveFrom") for p in o3] == [None, "2025-06-10"]
    assert [(p["input"], p["output"]) for p in o3] == [("10", "40"), ("2", "8")]


def test_reasoning_and_input_only_models(doc: dict[str, Any]) -> None:
    (sonar,) = model(doc, "perplexity", "sonar-deep-research")["prices"]
    assert (sonar["output"], sonar["reasoning"]) == ("8", "3")
    # An embedding model has no output price; genai-prices prices its output at 0 too.
    assert model(doc, "openai", "text-embedding-3-small")["prices"] == [{"input": "0.02"}]
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1000, output_tokens=1000),
        "text-embedding-3-small",
        provider_id="openai",
    )
    assert calc.output_price == 0 and calc.input_price == Decimal("0.00002")


def test_time_of_day_prices_and_call_fees_are_kept(doc: dict[str, Any]) -> None:
    periods = model(doc, "deepseek", "deepseek-chat")["prices"]
    assert periods == [
        {"input": "0.135", "cachedInput": "0.035", "output": "0.55"},
        {"utcHours": {"from": "00:30", "to": "16:30"}, "input": "0.27", "cachedInput": "0.07",
         "output": "1.1"},
    ]  # fmt: skip
    sonar = model(doc, "perplexity", "sonar")["prices"]
    assert all("perThousandCalls" in p for p in sonar)


def test_unpriced_models_say_why(doc: dict[str, Any]) -> None:
    reasons = [m["unpriced"] for p in doc["providers"] for m in p["models"] if "unpriced" in m]
    kinds = {
        "no prices": "no prices at all in genai-prices",
        "other units": "no token prices (priced per ",
        "precision": "has more than 6 decimal places: not a whole number of pico-dollars",
    }
    for kind, words in kinds.items():
        assert any(words in r for r in reasons), kind
    assert all(any(words in r for words in kinds.values()) for r in reasons)
    assert model(doc, "openrouter", "google/gemini-2.5-flash-lite")["unpriced"] == (
        "cacheWrite 0.08333333333333334 has more than 6 decimal places: "
        "not a whole number of pico-dollars per token"
    )
    assert "per audio hour" in model(doc, "openai", "whisper-1")["unpriced"]
    assert "no prices at all" in model(doc, "openrouter", "openai/gpt-oss-20b:free")["unpriced"]


# -- aliases -------------------------------------------------------------------------------


def test_aliases_resolve_to_existing_providers(doc: dict[str, Any], gen: ModuleType) -> None:
    ids = [p["id"] for p in doc["providers"]]
    owner: dict[str, str] = {}
    for p in doc["providers"]:
        for alias in p.get("aliases", []):
            assert alias == alias.lower().strip() and alias not in ids
            assert alias not in owner, (alias, owner.get(alias), p["id"])
            owner[alias] = p["id"]
            found = find_provider_by_id(GENAI_PROVIDERS, alias)
            if alias not in gen.OVERRIDDEN:
                assert found is None or found.id == p["id"], (alias, found and found.id)
    assert owner["bedrock"] == owner["amazon-bedrock"] == "aws"
    assert owner["vertex"] == owner["google.generative-ai"] == "google"
    assert owner["openai.chat"] == "openai" and owner["anthropic.messages"] == "anthropic"
    assert owner["azure.chat"] == owner["azure-openai"] == "azure" and owner["xai"] == "x-ai"
    assert set(owner.values()) <= set(ids)


def test_a_bad_alias_stops_the_generator(gen: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in (
        {"azure": ("openai-eu",)},  # genai-prices resolves it to openai
        {"openai": ("openai",)},  # a provider id
        {"openai": ("OpenAI.Chat",)},  # not lower-case
        {"openai": ("x",), "azure": ("x",)},  # claimed twice
        {"no-such-provider": ("y",)},
    ):
        monkeypatch.setattr(gen, "ALIASES", bad)
        with pytest.raises(SystemExit):
            gen._check_aliases()


def test_aliases_markdown_lists_every_provider(gen: ModuleType) -> None:
    table = gen.aliases_markdown()
    rows = table.splitlines()[2:]
    assert [r.split("`")[1] for r in rows] == [p.id for p in GENAI_PROVIDERS]
    assert "`amazon-bedrock`" in table
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert table in readme, "README's Providers table: paste tools/gen_prices.py --aliases-markdown"
