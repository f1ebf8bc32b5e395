#!/usr/bin/env python3
"""Generate ``processor/domain/prices.yaml`` (the built-in price catalog) from genai-prices.

Rerun after upgrading genai-prices:

    .venv/bin/python tools/gen_prices.py                    # writes processor/domain/prices.yaml
    .venv/bin/python tools/gen_prices.py --check            # exit 1 if the file is out of date
    .venv/bin/python tools/gen_prices.py --aliases-markdown # the README's "Providers" table

Not imported at runtime; genai-prices is a dev-time dependency only. The output is
deterministic: the same genai-prices data gives the same bytes.

The file holds the WHOLE genai-prices catalog, provider first, in genai-prices' own order
(providers, and models within a provider: the first model whose ``match`` accepts the
lower-cased model name wins, as in genai-prices). Every model is listed, priced or not, so
that first-match order is never changed by a missing model.

Kept, one to one:

- per provider: ``id``, ``name``, ``provider_match`` (``providerMatch``), ``model_match``
  (``modelMatch``), ``fallback_model_providers`` (``fallback``), plus ``aliases``, our own
  extra provider spellings (``ALIASES`` below, checked against genai-prices'
  ``find_provider_by_id``);
- per model: ``id`` and its ``match`` clause (equals, startsWith, endsWith, contains, regex,
  or, and; strings exactly as genai-prices has them);
- token prices, USD per million tokens: ``input_mtok`` -> ``input``, ``cache_read_mtok`` ->
  ``cachedInput``, ``cache_write_mtok`` -> ``cacheWrite`` (the 5-minute write),
  ``output_mtok`` -> ``output``, ``output_reasoning_mtok`` -> ``reasoning``;
- context-length tiers (``TieredPrices``) as ``{base, tiers: [{above, price}]}``: every token
  of the component is priced at the highest tier whose ``above`` is strictly below the call's
  total input tokens;
- price periods: genai-prices' unconstrained price is the first period (no ``effectiveFrom``,
  in effect since ever; genai-prices also falls back to its first price when no constraint
  is active) and each ``StartDateConstraint`` becomes a period with that ``effectiveFrom``
  (a datetime with a time of day would keep its date, with a comment on the model), and
  each ``TimeOfDateConstraint`` a period with ``utcHours: {from, to}`` (DeepSeek's peak
  hours); periods keep genai-prices' order, because the engine applies its rule: the last
  period that is active at the entry's time wins, the first when none is.

Dropped:

- price variants (batch, flex, priority, ... ``price_variants``): standard prices only;
- ``cache_write_1h_mtok`` (1-hour cache writes) and every non-text-token price (audio,
  image, video tokens, web and storage searches, requests, document pages, characters,
  audio hours, citation tokens, ...): our entries only carry text token counts;

A model is emitted as ``unpriced: <reason>`` instead of ``prices`` when

- genai-prices has no price at all for it (mostly OpenRouter ``:free`` models and
  subscription-included ones; genai-prices' ``calc_price`` gives 0 for them), or
- it has neither an input nor an output token price in any period (priced per audio hour,
  per character, per document page, ... only), or
- a kept price (base or tier, in any kept period) has more than 6 decimal places: that is not
  a whole number of pico-dollars per token, which the engine refuses.

A model with an input price and no output price (embeddings, rerankers, classifiers) is kept
with only ``input`` (and ``cachedInput`` where priced): genai-prices' ``calc_price`` prices the
output tokens of such a model at 0, and an absent ``output`` means the same here. (In
genai-prices 0.2.3 no model has an output price without an input price.)

The file is YAML in flow style: below its comment lines (each starting with ``#`` in
column 0; the notes on a model precede its line) it is plain JSON, one model a line. Any
YAML loader reads it, and so does ``json.loads`` once the comment lines are dropped: about
5 ms against ~0.4 s for PyYAML's CSafeLoader (which builds every node in Python), for a
300 ms start-up budget. Keys are in the documented order; decimals are quoted strings in
plain notation (never an exponent), tier starts (``above``) are integers.

The generator refuses (exits with an error) data it cannot represent faithfully: a price
list whose unconstrained price is not first, start dates out of order or repeated, tiers
with repeated starts, negative prices, a period with neither input nor output in a priced
model, an unknown match clause, a repeated model id, or a bad alias. Before writing, it
loads the rendered text back, as YAML (PyYAML's CSafeLoader) and as JSON, and compares both
with the data it meant to write.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import yaml
from genai_prices import types as gt
from genai_prices.data import providers as PROVIDERS
from genai_prices.data_snapshot import find_provider_by_id

from schemas.common import format_usd

OUT = Path(__file__).resolve().parents[1] / "processor" / "domain" / "prices.yaml"

# genai-prices attribute -> our YAML field, in output order.
FIELD_MAP = (
    ("input_mtok", "input"),
    ("cache_read_mtok", "cachedInput"),
    ("cache_write_mtok", "cacheWrite"),
    ("output_mtok", "output"),
    ("output_reasoning_mtok", "reasoning"),
    ("requests_kcount", "perThousandCalls"),  # a fee per call, in USD per 1,000 calls
)
KEPT_KEYS = frozenset(attr for attr, _ in FIELD_MAP)
MAX_DECIMALS = 6  # 1e-6 USD per million tokens = 1 pico-dollar per token

# Our extra spellings of provider ids, the ones producers send: the Vercel AI SDK's
# `model.provider` ("openai.chat", "amazon-bedrock", ...), LiteLLM's prefixes ("vertex_ai",
# "fireworks_ai"), OpenTelemetry's gen_ai.provider.name ("aws.bedrock", "gcp.vertex_ai",
# "x_ai", ...) and common short forms. Some are also accepted by genai-prices' own
# provider_match (e.g. anything containing "bedrock" is aws); listing them here makes them
# exact. Checked by _check_aliases: lower-case, not a provider id, not claimed twice, and
# genai-prices' find_provider_by_id gives None or the same provider for each.
#
# OVERRIDDEN lists the few where we deliberately differ from genai-prices' provider_match:
# "azure-openai", "azure_openai", "azure.ai.openai" contain "openai", so genai-prices says
# openai; but they name Azure's OpenAI service, so azure (its own list first, then OpenAI's
# and the others' models through azure's fallback); "vertex.anthropic" (the AI SDK's
# Claude on Vertex) contains "anthropic"; it is Google's Vertex, so google (which falls
# back to anthropic).
OVERRIDDEN = frozenset({"azure-openai", "azure_openai", "azure.ai.openai", "vertex.anthropic"})
ALIASES: dict[str, tuple[str, ...]] = {
    "anthropic": ("anthropic.messages",),
    "aws": ("bedrock", "amazon-bedrock", "aws-bedrock", "aws.bedrock", "bedrock-converse"),
    "azure": (
        "azure.chat",
        "azure.responses",
        "azure.completion",
        "azure-ai",
        "azure_ai",
        "azure.ai.inference",
        "azure-openai",
        "azure_openai",
        "azure.ai.openai",
    ),
    "cerebras": ("cerebras.chat",),
    "cohere": ("cohere.chat",),
    "deepseek": ("deepseek.chat",),
    "fireworks": ("fireworks-ai", "fireworksai", "fireworks_ai", "fireworks.chat"),
    # Vertex is google: genai-prices' google provider matches "vertex" itself and falls
    # back to anthropic for Claude models served on Vertex.
    "google": (
        "gemini",
        "google-genai",
        "google.generative-ai",
        "google-vertex",
        "google.vertex",
        "google.vertex.chat",
        "vertex",
        "vertex-ai",
        "vertex_ai",
        "vertexai",
        "gcp.gemini",
        "gcp.vertex_ai",
        "gcp.gen_ai",
        "vertex.anthropic",
    ),
    "groq": ("groq.chat",),
    "mistral": ("mistralai", "mistral_ai", "mistral.chat"),
    "openai": ("openai.chat", "openai.responses", "openai.completion", "openai.embedding"),
    "openrouter": ("openrouter.chat",),
    "perplexity": ("perplexity.chat", "perplexity-ai", "perplexityai"),
    "together": ("togetherai", "togetherai.chat", "together.ai"),
    "x-ai": ("xai", "x_ai", "xai.chat", "xai.responses", "grok"),
}

# Descriptions of the non-token price kinds, for the `unpriced` reason.
_KIND_WORDS: dict[str, str] = {
    "audio_hours": "per audio hour",
    "input_audio_hours": "per audio hour",
    "input_mchars": "per character",
    "input_document_kpages": "per document page",
    "input_annotated_document_kpages": "per document page",
    "input_text_messages_kcount": "per text message",
    "requests_kcount": "per request",
    "web_searches_kcount": "per web search",
    "storage_searches_kcount": "per storage search",
}


class GenError(SystemExit):
    """The genai-prices data does not fit the format; fix the generator."""

    def __init__(self, message: str) -> None:
        super().__init__(f"gen_prices: {message}")


# -- data ----------------------------------------------------------------------------------


def _clause(c: Any) -> dict[str, Any]:
    if isinstance(c, gt.ClauseEquals):
        return {"equals": c.equals}
    if isinstance(c, gt.ClauseStartsWith):
        return {"startsWith": c.starts_with}
    if isinstance(c, gt.ClauseEndsWith):
        return {"endsWith": c.ends_with}
    if isinstance(c, gt.ClauseContains):
        return {"contains": c.contains}
    if isinstance(c, gt.ClauseRegex):
        re.compile(c.regex)
        return {"regex": c.regex}
    if isinstance(c, gt.ClauseOr):
        return {"or": [_clause(x) for x in c.or_]}
    if isinstance(c, gt.ClauseAnd):
        return {"and": [_clause(x) for x in c.and_]}
    raise GenError(f"unknown match clause {c!r}")


def _dec(d: Decimal, where: str) -> str:
    if not d.is_finite() or d < 0:
        raise GenError(f"{where}: price {d} is not a finite non-negative number")
    return format_usd(d)


def _decimals(d: Decimal) -> int:
    exp = d.normalize().as_tuple().exponent
    assert isinstance(exp, int)
    return max(0, -exp)


def _utc_hhmm(t: dt.time) -> str:
    if t.tzinfo is not None:
        t = dt.datetime.combine(dt.date(1970, 1, 1), t).astimezone(dt.UTC).time()
    return t.strftime("%H:%M:%S" if t.second else "%H:%M")


def _period(mp: gt.ModelPrice, where: str) -> tuple[dict[str, Any], str | None]:
    """Our fields of one genai-prices price set, and the first too-precise value if any."""
    out: dict[str, Any] = {}
    too_precise: str | None = None
    for attr, name in FIELD_MAP:
        value = getattr(mp, attr, None)
        if value is None:
            continue
        if isinstance(value, gt.TieredPrices):
            starts = [t.start for t in value.tiers]
            if not value.tiers or len(set(starts)) != len(starts):
                raise GenError(f"{where}: {attr} has empty or repeated tiers {value!r}")
            values = [value.base, *(t.price for t in value.tiers)]
            out[name] = {
                "base": _dec(value.base, where),
                "tiers": [
                    {"above": int(t.start), "price": _dec(t.price, where)}
                    for t in sorted(value.tiers, key=lambda t: t.start)
                ],
            }
        else:
            values = [value]
            out[name] = _dec(value, where)
        for v in values:
            if too_precise is None and _decimals(v) > MAX_DECIMALS:
                too_precise = (
                    f"{name} {_dec(v, where)} has more than {MAX_DECIMALS} decimal places: "
                    "not a whole number of pico-dollars per token"
                )
    return out, too_precise


def _other_kinds(model: gt.ModelInfo) -> list[str]:
    prices = [model.prices] if isinstance(model.prices, gt.ModelPrice) else model.prices
    keys: set[str] = set()
    for p in prices:
        mp = p if isinstance(p, gt.ModelPrice) else p.prices
        keys.update(k for k, v in vars(mp).items() if v is not None and not k.startswith("_"))
    return sorted(keys - KEPT_KEYS)


def _unpriced_reason_no_tokens(model: gt.ModelInfo) -> str:
    others = _other_kinds(model)
    if not others:
        return "no prices at all in genai-prices (its calc_price gives 0 for this model)"
    words = list(dict.fromkeys(_KIND_WORDS.get(k, k) for k in others))
    return f"no token prices (priced {' and '.join(words)} only: {', '.join(others)})"


def _model(provider: gt.Provider, model: gt.ModelInfo) -> tuple[dict[str, Any], list[str]]:
    where = f"{provider.id}/{model.id}"
    notes: list[str] = []
    entry: dict[str, Any] = {"id": model.id, "match": _clause(model.match)}

    if isinstance(model.prices, gt.ModelPrice):
        raw: list[tuple[Any, gt.ModelPrice]] = [(None, model.prices)]
    else:
        raw = [(cp.constraint, cp.prices) for cp in model.prices]
    if not raw:
        entry["unpriced"] = _unpriced_reason_no_tokens(model)
        return entry, notes

    # in genai-prices' order: the last active period wins, the first when none is
    periods: list[tuple[dt.date | gt.TimeOfDateConstraint | None, gt.ModelPrice]] = []
    for index, (constraint, mp) in enumerate(raw):
        if constraint is None:
            if index != 0:
                raise GenError(f"{where}: an unconstrained price that is not the first one")
            periods.append((None, mp))
        elif isinstance(constraint, gt.StartDateConstraint):
            start = constraint.start_date
            if isinstance(start, dt.datetime):
                day = start.date()
                if start.time() != dt.time(0):
                    notes.append(
                        f"effectiveFrom {day.isoformat()}: genai-prices starts this price at "
                        f"{start.isoformat()}; the time of day is dropped"
                    )
                start = day
            if index == 0:
                # genai-prices uses its first price when no constraint is active, so this
                # one is in effect since ever.
                notes.append(
                    f"first price: genai-prices dates it {start.isoformat()} but uses it for "
                    "earlier requests too, so it has no effectiveFrom here"
                )
                periods.append((None, mp))
            else:
                periods.append((start, mp))
        elif isinstance(constraint, gt.TimeOfDateConstraint):
            if constraint.start_time.second or constraint.end_time.second:
                raise GenError(f"{where}: a time-of-day price with seconds {constraint!r}")
            periods.append((constraint, mp))
        else:
            raise GenError(f"{where}: unknown price constraint {constraint!r}")

    dates = [d for d, _ in periods if isinstance(d, dt.date)]
    if dates != sorted(dates) or len(set(dates)) != len(dates):
        raise GenError(f"{where}: start dates out of order or repeated: {dates}")

    rendered: list[dict[str, Any]] = []
    too_precise: str | None = None
    for since, mp in periods:
        fields, precise = _period(mp, where)
        too_precise = too_precise or precise
        if isinstance(since, gt.TimeOfDateConstraint):
            hours = {"from": _utc_hhmm(since.start_time), "to": _utc_hhmm(since.end_time)}
            rendered.append({"utcHours": hours} | fields)
        else:
            rendered.append(({"effectiveFrom": since.isoformat()} if since else {}) | fields)

    if not any("input" in p or "output" in p for p in rendered):
        entry["unpriced"] = _unpriced_reason_no_tokens(model)
    elif any("input" not in p and "output" not in p for p in rendered):
        raise GenError(f"{where}: a period without input and output prices: {rendered}")
    elif too_precise is not None:
        entry["unpriced"] = too_precise
    else:
        entry["prices"] = rendered
    return entry, notes


def _check_aliases() -> None:
    ids = [p.id for p in PROVIDERS]
    owner: dict[str, str] = {}
    for provider_id, aliases in ALIASES.items():
        if provider_id not in ids:
            raise GenError(f"ALIASES names {provider_id!r}, not a genai-prices provider id")
        for alias in aliases:
            if alias != alias.lower() or alias != alias.strip() or not alias:
                raise GenError(f"alias {alias!r} must be lower-case, without spaces")
            if alias in ids:
                raise GenError(f"alias {alias!r} is a genai-prices provider id")
            if alias in owner:
                raise GenError(f"alias {alias!r} claimed by {owner[alias]} and {provider_id}")
            owner[alias] = provider_id
            found = find_provider_by_id(PROVIDERS, alias)
            if found is not None and found.id != provider_id and alias not in OVERRIDDEN:
                raise GenError(
                    f"alias {alias!r} -> {provider_id}, but genai-prices' provider_match "
                    f"resolves it to {found.id}"
                )


def catalog() -> tuple[dict[str, Any], dict[tuple[str, str], list[str]]]:
    """The document to write, and the comments to put on models (by provider and model id)."""
    _check_aliases()
    notes: dict[tuple[str, str], list[str]] = {}
    out: list[dict[str, Any]] = []
    for p in PROVIDERS:
        entry: dict[str, Any] = {"id": p.id, "name": p.name}
        if ALIASES.get(p.id):
            entry["aliases"] = list(ALIASES[p.id])
        if p.provider_match is not None:
            entry["providerMatch"] = _clause(p.provider_match)
        if p.model_match is not None:
            entry["modelMatch"] = _clause(p.model_match)
        if p.fallback_model_providers is not None:
            entry["fallback"] = list(p.fallback_model_providers)
        models = []
        seen: set[str] = set()
        for m in p.models:
            if m.id in seen:
                raise GenError(f"{p.id}: model id {m.id!r} listed twice")
            seen.add(m.id)
            model, model_notes = _model(p, m)
            models.append(model)
            if model_notes:
                notes[(p.id, m.id)] = list(dict.fromkeys(model_notes))
        entry["models"] = models
        out.append(entry)
    return {"providers": out}, notes


# -- YAML ----------------------------------------------------------------------------------


def _json(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def _comment(text: str) -> str:
    return "# " + " ".join(text.split())


def _header(doc: dict[str, Any]) -> list[str]:
    models = [m for p in doc["providers"] for m in p["models"]]
    unpriced = sum("unpriced" in m for m in models)
    return [
        "# Built-in price catalog, provider first: USD per million tokens.",
        f"# GENERATED by tools/gen_prices.py from genai-prices {genai_prices.__version__}"
        " -- do not edit by hand; rerun the script.",
        f"# {len(doc['providers'])} providers, {len(models)} models ({len(models) - unpriced}"
        f" priced, {unpriced} unpriced), in genai-prices' order: the first match wins.",
        "# Kept: input, cache read (cachedInput), 5-minute cache write (cacheWrite), output and",
        "# reasoning token prices; context-length tiers; start-date periods (the first period",
        "# has no effectiveFrom: in effect since ever) and time-of-day periods (utcHours), in",
        "# genai-prices' order (the last active period wins); genai-prices' provider and model",
        "# match rules. `aliases` are our own provider spellings (tools/gen_prices.py ALIASES).",
        "# Dropped: batch/flex/priority price variants, 1-hour cache writes, audio, image,",
        "# video, search, request, page and character prices.",
        "# A model with no usable token price has `unpriced: <reason>` instead of `prices`;",
        "# a model without `output` (embeddings) prices output tokens at 0, as genai-prices.",
        "# YAML in flow style: below the comment lines (all starting with #) it is JSON, one",
        "# model a line, so it also loads with json.loads (ms instead of ~0.4 s for libyaml).",
        "# Override or extend with USAGE_PRICES_FILE.",
    ]


def _emit(doc: dict[str, Any], notes: dict[tuple[str, str], list[str]]) -> str:
    """YAML that is JSON once the comment lines (column 0, ``#``) are dropped."""
    lines = [*_header(doc), '{"providers": [']
    for i, p in enumerate(doc["providers"]):
        head = _json({k: v for k, v in p.items() if k != "models"})
        lines.append(f'{head[:-1]}, "models": [')
        for j, m in enumerate(p["models"]):
            lines.extend(_comment(n) for n in notes.get((p["id"], m["id"]), []))
            lines.append(_json(m) + ("," if j < len(p["models"]) - 1 else ""))
        lines.append("]}" + ("," if i < len(doc["providers"]) - 1 else ""))
    lines.append("]}")
    return "\n".join(lines) + "\n"


def json_body(text: str) -> str:
    """The JSON below the comment lines of prices.yaml."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def render() -> str:
    """The text of prices.yaml, checked by loading it back both as YAML and as JSON."""
    doc, notes = catalog()
    text = _emit(doc, notes)
    if yaml.load(text, Loader=yaml.CSafeLoader) != doc:
        raise GenError("the rendered YAML does not load back as the data it was made from")
    if json.loads(json_body(text)) != doc:
        raise GenError("the rendered file's JSON body is not the data it was made from")
    return text


# -- README table --------------------------------------------------------------------------


def _clause_text(c: dict[str, Any]) -> str:
    (kind, arg), *_ = c.items()
    if kind in ("or", "and"):
        return f" {kind} ".join(
            f"({_clause_text(x)})" if next(iter(x)) in ("or", "and") else _clause_text(x)
            for x in arg
        )
    words = {
        "equals": "is",
        "startsWith": "starts with",
        "endsWith": "ends with",
        "contains": "contains",
        "regex": "matches",
    }
    return f"{words[kind]} `{arg}`"


def aliases_markdown() -> str:
    """A Markdown table: every accepted provider spelling -> genai-prices provider id."""
    _check_aliases()
    rows = [
        "| provider (genai-prices id) | name | also accepted (our aliases) "
        "| genai-prices' own `providerMatch` on the lower-cased value |",
        "|---|---|---|---|",
    ]
    for p in PROVIDERS:
        aliases = ", ".join(f"`{a}`" for a in ALIASES.get(p.id, ()))
        match = _clause_text(_clause(p.provider_match)) if p.provider_match else ""
        rows.append(f"| `{p.id}` | {p.name} | {aliases} | {match} |")
    return "\n".join(rows) + "\n"


# -- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="exit 1 if prices.yaml is out of date")
    ap.add_argument(
        "--aliases-markdown",
        action="store_true",
        help="print the provider spellings table (Markdown) for the README and exit",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.aliases_markdown:
        sys.stdout.write(aliases_markdown())
        return 0
    text = render()
    if args.check:
        current = args.out.read_bytes() if args.out.exists() else b""
        if current != text.encode("utf-8"):
            print(f"{args.out} is out of date; rerun tools/gen_prices.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_bytes(text.encode("utf-8"))
    n = sum(len(p.models) for p in PROVIDERS)
    print(
        f"wrote {args.out} ({len(PROVIDERS)} providers, {n} models, "
        f"genai-prices {genai_prices.__version__})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
