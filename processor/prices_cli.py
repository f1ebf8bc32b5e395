"""``usage-stream prices show|check``: the operator's view of the price catalog."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from processor.domain.pricing import (
    PriceCatalog,
    PriceCatalogError,
    PricePeriod,
    Rate,
    load_catalog,
)
from schemas.common import format_usd

_MS_PER_DAY = 86_400_000


def show_price(
    model: str, *, provider: str | None, at: dt.date | None, prices_file: Path | None
) -> int:
    """Print the price in effect for ``model`` (at ``provider``, on ``at``) and its source."""
    try:
        catalog = load_catalog(prices_file)
    except PriceCatalogError as exc:
        print(f"usage-stream prices: {exc}", file=sys.stderr)
        return 2
    day = at or dt.datetime.now(dt.UTC).date()
    at_ms = (day.toordinal() - dt.date(1970, 1, 1).toordinal()) * _MS_PER_DAY
    print("\n".join(describe(catalog, model, provider, day, at_ms)))
    found = catalog.resolve(model, provider)
    return 0 if found is not None and found.model.periods else 1


def describe(
    catalog: PriceCatalog, model: str, provider: str | None, day: dt.date, at_ms: int
) -> list[str]:
    where = f"provider {provider!r}" if provider else "no provider (the model's maker)"
    if provider is not None and catalog.provider(provider) is None:
        return [f"{model!r} with {where}: unpriced, the catalog knows no such provider"]
    if provider is None and catalog.maker(model) is None:
        return [f"{model!r} with {where}: unpriced, the catalog names no maker for it"]
    found = catalog.resolve(model, provider)
    if found is None:
        return [f"{model!r} with {where}: unpriced, no model of that provider matches"]
    m = found.model
    head = f"{model!r} with {where}: priced as {m.provider}'s {m.id!r}"
    if m.provider != found.provider:
        head += f" (a fallback of {found.provider})"
    if not m.periods:
        return [head, f"  unpriced: {m.unpriced or 'no token prices'}", f"  source: {m.source}"]
    period = m.price_at(at_ms)
    assert period is not None
    since = period.effective_from.isoformat() if period.effective_from else "the start"
    lines = [
        head,
        f"  in effect on {day.isoformat()}: since {since}; source: {m.source}",
        "  USD per million tokens:",
    ]
    lines.extend(f"    {name:<12} {value}" for name, value in _components(period))
    if period.per_thousand_calls is not None:
        lines.append(f"  plus {period.per_thousand_calls} USD per 1,000 calls")
    others = [p for p in m.periods if p is not period]
    if others:
        lines.append("  other periods (the last one in effect wins):")
        lines.extend(
            f"    {_when(p)}: input {_rate(p.input)}, output {_rate(p.output)}" for p in others
        )
    return lines


def _when(period: PricePeriod) -> str:
    if period.utc_minutes is not None:
        start, end = period.utc_minutes
        return f"daily {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d} UTC"
    if period.effective_from is None:
        return "since the start"
    return f"from {period.effective_from.isoformat()}"


def _components(period: PricePeriod) -> list[tuple[str, str]]:
    out = [("input", _rate(period.input)), ("output", _rate(period.output))]
    for name, rate, default, default_name in (
        ("cachedInput", period.cached_input, period.input, "input"),
        ("cacheWrite", period.cache_write, period.input, "input"),
        ("reasoning", period.reasoning, period.output, "output"),
    ):
        same = rate is default
        out.append((name, _rate(rate) + (f"  (as {default_name})" if same else "")))
    return out


def _rate(rate: Rate) -> str:
    text = format_usd(rate.base)
    for tier in rate.tiers:
        text += f"; above {tier.above:,} prompt tokens {format_usd(tier.price)}"
    return text


def check_prices_file(path: Path) -> int:
    """Validate a prices file exactly as start-up would; 0 when it loads."""
    try:
        catalog = load_catalog(path)
    except PriceCatalogError as exc:
        print(f"usage-stream prices check: {exc}", file=sys.stderr)
        return 2
    from_file = [m for m in catalog if m.source == str(path)]
    print(f"{path}: ok, {len(from_file)} model price list(s) over the built-in catalog")
    return 0
