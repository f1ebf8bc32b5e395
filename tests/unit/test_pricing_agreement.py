"""The built-in catalog prices as genai-prices does, to the last decimal.

Thousands of (provider, model, usage, time) cases across every provider of the installed
genai-prices: cache reads, cache writes, reasoning, prompts on both sides of every
long-context tier, and both sides of every price change. Each is priced by our catalog
(integer pico-dollars) and by ``genai_prices.calc_price`` (Decimal USD); they must be
equal exactly. What genai-prices prices that we do not (and why) is listed in
``KNOWN_DIFFERENCES`` and checked to still be different, so the list cannot go stale.
"""

from __future__ import annotations

import datetime as dt
import random
import warnings
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices import types as gt
from genai_prices.data import providers as GENAI_PROVIDERS

from processor.domain.pricing import PriceCatalog, load_catalog

PICO = Decimal(10) ** 12
NOW = dt.datetime(2026, 6, 15, 12, tzinfo=dt.UTC)


def _periods(model: gt.ModelInfo) -> list[tuple[dt.date | None, gt.ModelPrice, Any]]:
    if isinstance(model.prices, gt.ModelPrice):
        return [(None, model.prices, None)]
    out = []
    for cp in model.prices:
        c = cp.constraint
        start = c.start_date if isinstance(c, gt.StartDateConstraint) else None
        out.append((start, cp.prices, c))
    return out


def _tier_starts(price: gt.ModelPrice) -> set[int]:
    starts: set[int] = set()
    for value in price.__dict__.values():
        if isinstance(value, gt.TieredPrices):
            starts.update(t.start for t in value.tiers)
    return starts


def _usages(rnd: random.Random, tiers: set[int]) -> Iterator[dict[str, int]]:
    """Calls with every kind of token, and prompts on both sides of each tier."""
    yield {"prompt": 1200, "cached": 700, "cache_write": 300, "completion": 450, "reasoning": 120}
    yield {"prompt": 50, "completion": 0}
    yield {"prompt": 0, "completion": 77, "reasoning": 77}
    prompt = rnd.randint(1, 150_000)
    yield {"prompt": prompt, "cached": prompt // 3, "completion": rnd.randint(0, 9000)}
    for start in sorted(tiers):
        for p in (start, start + 1):
            yield {"prompt": p, "cached": p // 4, "cache_write": p // 10, "completion": 999,
                   "reasoning": 111}  # fmt: skip


def _times(model: gt.ModelInfo) -> Iterator[dt.datetime]:
    yield NOW
    for start, _, _ in _periods(model):
        if start is not None:
            midnight = dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC)
            yield midnight
            yield midnight - dt.timedelta(milliseconds=1)


def _name(clause: Any) -> str | None:
    """A name the model's match rule accepts (its first ``equals``), if it has one."""
    if isinstance(clause, gt.ClauseEquals):
        return clause.equals
    for sub in getattr(clause, "or_", None) or ():
        if (name := _name(sub)) is not None:
            return name
    return None


def cases() -> Iterator[tuple[str, str, dict[str, int], dt.datetime]]:
    rnd = random.Random(2026)
    for provider in GENAI_PROVIDERS:
        for model in provider.models:
            tiers: set[int] = set()
            for _, price, _ in _periods(model):
                tiers |= _tier_starts(price)
            ref = _name(model.match) or model.id
            for when in _times(model):
                for usage in _usages(rnd, tiers):
                    yield provider.id, ref, usage, when


def genai_cost(provider: str, model: str, u: dict[str, int], when: dt.datetime) -> Decimal | None:
    usage = genai_prices.Usage(
        input_tokens=u["prompt"],
        cache_read_tokens=u.get("cached", 0),
        cache_write_tokens=u.get("cache_write", 0),
        output_tokens=u["completion"],
        output_reasoning_tokens=u.get("reasoning", 0),
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = genai_prices.calc_price(
                usage, model, provider_id=provider, genai_request_timestamp=when
            )
    except LookupError:
        return None
    return result.total_price


def our_cost(
    catalog: PriceCatalog, provider: str, model: str, u: dict[str, int], when: dt.datetime
) -> Decimal | None:
    priced = catalog.price_tokens(
        model,
        timestamp_ms=int(when.timestamp() * 1000),
        provider=provider,
        prompt=u["prompt"],
        completion=u["completion"],
        reasoning=u.get("reasoning", 0),
        cached=u.get("cached", 0),
        cache_write=u.get("cache_write", 0),
    )
    return Decimal(priced.cost_pico) / PICO if priced.priced else None


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return load_catalog(None)


def why_different(catalog: PriceCatalog, provider: str, model: str) -> str | None:
    """The documented reason our figure may differ from genai-prices' for this model: it
    is unpriced here (no token prices, or prices finer than a pico-dollar per token)."""
    found = catalog.resolve(model, provider)
    if found is not None and found.model.unpriced:
        return f"unpriced here: {found.model.unpriced.split(' (')[0]}"
    return None


def test_the_built_in_catalog_agrees_with_genai_prices(catalog: PriceCatalog) -> None:
    compared = 0
    differences: Counter[str] = Counter()
    wrong: list[str] = []
    providers_seen: set[str] = set()
    for provider, model, usage, when in cases():
        theirs = genai_cost(provider, model, usage, when)
        ours = our_cost(catalog, provider, model, usage, when)
        if ours == theirs or (ours is None and theirs == 0):
            compared += 1
            if ours:
                providers_seen.add(provider)
            continue
        reason = why_different(catalog, provider, model)
        if reason is not None and ours is None:
            differences[reason] += 1
            continue
        wrong.append(
            f"{provider}/{model} {usage} at {when:%Y-%m-%d %H:%M}: ours {ours}, theirs {theirs}"
        )
    assert not wrong, f"{len(wrong)} cases differ, e.g.:\n" + "\n".join(wrong[:20])
    assert compared >= 2000
    assert providers_seen == {p.id for p in GENAI_PROVIDERS}, "a provider was never priced"
    print(f"{compared} cases agree; documented differences: {dict(differences)}")
