#!/usr/bin/env python3
"""Generate ``processor/domain/prices.yaml`` (the built-in price catalog) from genai-prices.

Rerun after upgrading genai-prices:

    .venv/bin/python tools/gen_prices.py            # writes processor/domain/prices.yaml
    .venv/bin/python tools/gen_prices.py --check    # exit 1 if the file is out of date

Not imported at runtime; genai-prices is a dev-time dependency only.

What is kept: flat token prices (input, cache read -> cachedInput, cache write -> cacheWrite,
output) of the models selected in ``SELECTION``, standard tier only. Dropped: batch, flex,
priority and other price variants; per-request/search/image/audio prices; 1-hour cache
writes (Anthropic's ``cacheWrite`` here is the 5-minute write). Context-length tiers
(e.g. gemini-2.5-pro over 200k prompt tokens) are reduced to their base tier, noted in a
comment on the model. genai-prices gives no start date for a model's first price, so the
first ``effectiveFrom`` is the model's release date from ``SELECTION``; later periods come
from genai-prices' start-date constraints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices import types as gt
from genai_prices.data import providers

OUT = Path(__file__).resolve().parents[1] / "processor" / "domain" / "prices.yaml"

# (genai-prices provider id, genai-prices model id, our model name, first effectiveFrom,
#  extra aliases). The dated snapshot names genai-prices matches exactly are added as
#  aliases automatically.
SELECTION: list[tuple[str, str, str, str, tuple[str, ...]]] = [
    # OpenAI
    ("openai", "gpt-4o", "gpt-4o", "2024-08-06", ()),
    ("openai", "gpt-4o-2024-05-13", "gpt-4o-2024-05-13", "2024-05-13", ()),
    ("openai", "gpt-4o-mini", "gpt-4o-mini", "2024-07-18", ()),
    ("openai", "gpt-4.1", "gpt-4.1", "2025-04-14", ()),
    ("openai", "gpt-4.1-mini", "gpt-4.1-mini", "2025-04-14", ()),
    ("openai", "gpt-4.1-nano", "gpt-4.1-nano", "2025-04-14", ()),
    ("openai", "gpt-4-turbo", "gpt-4-turbo", "2024-04-09", ()),
    ("openai", "gpt-4", "gpt-4", "2023-03-14", ()),
    ("openai", "gpt-3.5-turbo", "gpt-3.5-turbo", "2024-01-25", ()),
    ("openai", "o1", "o1", "2024-12-17", ()),
    ("openai", "o1-mini", "o1-mini", "2024-09-12", ()),
    ("openai", "o1-pro", "o1-pro", "2025-03-19", ()),
    ("openai", "o3", "o3", "2025-04-16", ()),
    ("openai", "o3-mini", "o3-mini", "2025-01-31", ()),
    ("openai", "o3-pro", "o3-pro", "2025-06-10", ()),
    ("openai", "o4-mini", "o4-mini", "2025-04-16", ()),
    ("openai", "gpt-5", "gpt-5", "2025-08-07", ()),
    ("openai", "gpt-5-mini", "gpt-5-mini", "2025-08-07", ()),
    ("openai", "gpt-5-nano", "gpt-5-nano", "2025-08-07", ()),
    ("openai", "gpt-5-pro", "gpt-5-pro", "2025-10-06", ()),
    ("openai", "gpt-5.1", "gpt-5.1", "2025-11-13", ()),
    # Anthropic
    (
        "anthropic",
        "claude-3-5-sonnet",
        "claude-3-5-sonnet",
        "2024-06-20",
        ("claude-3-5-sonnet-latest", "claude-3.5-sonnet"),
    ),
    (
        "anthropic",
        "claude-3-5-haiku-latest",
        "claude-3-5-haiku",
        "2024-10-22",
        ("claude-3-5-haiku-latest", "claude-3.5-haiku"),
    ),
    (
        "anthropic",
        "claude-3-7-sonnet-latest",
        "claude-3-7-sonnet",
        "2025-02-19",
        ("claude-3-7-sonnet-latest", "claude-3.7-sonnet"),
    ),
    ("anthropic", "claude-3-opus-latest", "claude-3-opus", "2024-02-29", ("claude-3-opus-latest",)),
    ("anthropic", "claude-3-sonnet", "claude-3-sonnet", "2024-02-29", ()),
    ("anthropic", "claude-3-haiku", "claude-3-haiku", "2024-03-07", ()),
    (
        "anthropic",
        "claude-sonnet-4-0",
        "claude-sonnet-4",
        "2025-05-14",
        ("claude-sonnet-4-0", "claude-4-sonnet"),
    ),
    (
        "anthropic",
        "claude-opus-4-0",
        "claude-opus-4",
        "2025-05-14",
        ("claude-opus-4-0", "claude-4-opus"),
    ),
    ("anthropic", "claude-opus-4-1", "claude-opus-4-1", "2025-08-05", ("claude-opus-4.1",)),
    ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5", "2025-09-29", ("claude-sonnet-4.5",)),
    ("anthropic", "claude-haiku-4-5", "claude-haiku-4-5", "2025-10-15", ("claude-haiku-4.5",)),
    ("anthropic", "claude-opus-4-5", "claude-opus-4-5", "2025-11-24", ("claude-opus-4.5",)),
    # Google
    ("google", "gemini-1.5-pro", "gemini-1.5-pro", "2024-05-14", ()),
    ("google", "gemini-1.5-flash", "gemini-1.5-flash", "2024-05-14", ()),
    ("google", "gemini-2.0-flash", "gemini-2.0-flash", "2025-02-05", ("gemini-2.0-flash-001",)),
    (
        "google",
        "gemini-2.0-flash-lite",
        "gemini-2.0-flash-lite",
        "2025-02-25",
        ("gemini-2.0-flash-lite-001",),
    ),
    ("google", "gemini-2.5-pro", "gemini-2.5-pro", "2025-06-17", ()),
    ("google", "gemini-2.5-flash", "gemini-2.5-flash", "2025-06-17", ()),
    ("google", "gemini-2.5-flash-lite", "gemini-2.5-flash-lite", "2025-07-22", ()),
    # Mistral
    ("mistral", "mistral-large", "mistral-large", "2024-11-18", ()),
    ("mistral", "mistral-large-2512", "mistral-large-2512", "2025-12-02", ()),
    ("mistral", "mistral-medium-3-1", "mistral-medium-3", "2025-05-07", ()),
    ("mistral", "mistral-small-3.2-24b-instruct", "mistral-small", "2025-06-20", ()),
    ("mistral", "codestral", "codestral", "2025-01-13", ()),
    ("mistral", "codestral-2508", "codestral-2508", "2025-07-30", ()),
    ("mistral", "ministral-8b", "ministral-8b", "2024-10-16", ()),
    ("mistral", "ministral-3b", "ministral-3b", "2024-10-16", ("ministral-3b-latest",)),
    ("mistral", "mistral-nemo", "mistral-nemo", "2024-07-18", ()),
    ("mistral", "pixtral-large", "pixtral-large", "2024-11-18", ()),
]

FIELD_MAP = (  # genai-prices attribute -> our YAML field
    ("input_mtok", "input"),
    ("cache_read_mtok", "cachedInput"),
    ("cache_write_mtok", "cacheWrite"),
    ("output_mtok", "output"),
)


def _exact_names(clause: Any) -> list[str]:
    if isinstance(clause, gt.ClauseEquals):
        return [clause.equals]
    if isinstance(clause, gt.ClauseOr):
        return [n for c in clause.or_ for n in _exact_names(c)]
    return []


def _flat(price: gt.ModelPrice, notes: list[str]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for attr, name in FIELD_MAP:
        value = getattr(price, attr, None)
        if value is None:
            continue
        if isinstance(value, gt.TieredPrices):
            tiers = ", ".join(f"{t.price} above {t.start} input tokens" for t in value.tiers)
            notes.append(f"{name}: base tier only (genai-prices tiers: {tiers})")
            value = value.base
        assert isinstance(value, Decimal)
        if -value.as_tuple().exponent > 6:  # type: ignore[operator]
            raise SystemExit(f"{name}={value} has more than 6 decimal places")
        out[name] = value
    if "input" not in out or "output" not in out:
        raise SystemExit(f"no flat input/output token price: {price!r}")
    return out


def _periods(model: gt.ModelInfo, first: dt.date, notes: list[str]) -> list[tuple[dt.date, Any]]:
    if isinstance(model.prices, gt.ModelPrice):
        return [(first, _flat(model.prices, notes))]
    periods: list[tuple[dt.date, Any]] = []
    for cp in model.prices:
        c = cp.constraint
        if c is None:
            start = first
        elif isinstance(c, gt.StartDateConstraint):
            start = c.start_date
        else:
            notes.append(f"skipped time-of-day price {c!r}")
            continue
        periods.append((start, _flat(cp.prices, notes)))
    periods.sort(key=lambda p: p[0])
    return periods


def _fmt(d: Decimal) -> str:
    text = format(d.normalize(), "f")
    return text


def render() -> str:
    index = {(p.id, m.id): (p, m) for p in providers for m in p.models}
    lines = [
        "# Built-in price catalog: USD per million tokens (CONTRACT §7 format).",
        "# GENERATED by tools/gen_prices.py -- do not edit by hand; rerun the script instead.",
        f"# Source: genai-prices {genai_prices.__version__} (standard tier, flat token prices;",
        "# batch/flex/priority variants and 1h cache writes dropped; context-length tiers",
        "# reduced to the base tier). cachedInput/cacheWrite default to input and reasoning",
        "# to output when absent. Override or extend with USAGE_PRICES_FILE.",
        "models:",
    ]
    seen: set[str] = set()
    for provider_id, gid, name, first, extra in SELECTION:
        provider, model = index[(provider_id, gid)]
        if name in seen:
            raise SystemExit(f"duplicate model {name}")
        seen.add(name)
        notes: list[str] = []
        periods = _periods(model, dt.date.fromisoformat(first), notes)
        aliases = [a for a in dict.fromkeys([*_exact_names(model.match), *extra]) if a != name]
        lines.append(f"  {name}:")
        for note in dict.fromkeys(notes):
            lines.append(f"    # {note}")
        lines.append(f"    provider: {provider.id}")
        if aliases:
            lines.append(f"    aliases: [{', '.join(aliases)}]")
        lines.append("    prices:")
        for start, values in periods:
            lines.append(f'      - effectiveFrom: "{start.isoformat()}"')
            for _, key in FIELD_MAP:
                if key in values:
                    lines.append(f'        {key}: "{_fmt(values[key])}"')
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="fail if prices.yaml is out of date")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date; rerun tools/gen_prices.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(SELECTION)} models, genai-prices {genai_prices.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
