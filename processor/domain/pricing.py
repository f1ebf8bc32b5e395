"""Effective-dated model price catalog and exact per-entry pricing (CONTRACT §7).

Prices are USD per million tokens with at most 6 decimal places, so one token costs a whole
number of pico-dollars: ``pico_per_token = price_per_million_usd * 10**12 / 10**6``. All
pricing is integer arithmetic on those rates.

Decisions (also in the README):

* Model lookup, first hit wins, result cached per raw model string:
  1. exact model name; 2. exact alias (``aliases:`` in the YAML; the built-in catalog lists
  the dated snapshot names genai-prices knows, e.g. ``gpt-4o-mini-2024-07-18``);
  3. case-insensitive match after trimming spaces and dropping a provider prefix up to the
  last ``/`` (``openai/gpt-4o`` and ``models/gemini-2.0-flash`` work);
  4. the same after removing one trailing date suffix ``-YYYY-MM-DD``, ``-YYYYMMDD`` or
  ``@YYYYMMDD`` (``claude-3-5-sonnet-20241022`` -> ``claude-3-5-sonnet``).
  No prefix/substring guessing: anything else is unknown (cost 0, ``priced=False``).
* Price in effect: the last price whose ``effectiveFrom`` (UTC midnight) is <= the entry
  timestamp. An entry older than the first ``effectiveFrom`` uses the earliest known price:
  a model that was used was not free, and release dates in the catalog are approximate.
* Price file vs built-in: a model named in the file replaces the built-in model's provider
  and whole price list (negotiated prices should never blend with list prices). If the file
  omits ``provider`` the built-in provider is kept; aliases are the union of both.
  Models new to the file are added.
* Missing fields: ``cachedInput`` and ``cacheWrite`` default to ``input``; ``reasoning``
  defaults to ``output``.
"""

from __future__ import annotations

import datetime as dt
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from processor.domain.money import usd_to_pico

__all__ = [
    "ModelEntry",
    "ModelPrice",
    "PriceCatalog",
    "PriceCatalogError",
    "Priced",
    "load_catalog",
    "parse_prices_document",
]

_MS_PER_DAY = 86_400_000
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_PICO_PER_MICRO = 10**6  # pico-dollars per token for 1 USD / million tokens
_MAX_PRICE_DECIMALS = 6
_LOOKUP_CACHE_MAX = 4096
_DATE_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|[-@]\d{8})$", re.ASCII)
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_PRICE_FIELDS = ("input", "cachedInput", "cacheWrite", "output", "reasoning")
_PRICE_KEYS = frozenset({"effectiveFrom", *_PRICE_FIELDS})
_MODEL_KEYS = frozenset({"provider", "prices", "aliases"})


class PriceCatalogError(ValueError):
    """A price file or price entry is invalid; the message names file, model and field."""


def _rate(value: Decimal, field_name: str) -> int:
    """Pico-dollars per token for a USD-per-million price; ValueError naming the field."""
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise ValueError(f"{field_name}: {value!r} must be a finite decimal >= 0")
    try:
        pico_per_million = usd_to_pico(value)
    except ValueError:
        pico_per_million = -1
    if pico_per_million < 0 or pico_per_million % _PICO_PER_MICRO:
        raise ValueError(
            f"{field_name}: {value} has more than {_MAX_PRICE_DECIMALS} decimal places "
            "(USD per million tokens must give a whole number of pico-dollars per token)"
        )
    return pico_per_million // _PICO_PER_MICRO


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One price period; all prices in USD per million tokens. Use :meth:`of` for defaults."""

    effective_from: dt.date  # UTC calendar date
    input: Decimal
    cached_input: Decimal
    cache_write: Decimal
    output: Decimal
    reasoning: Decimal
    #: pico-dollars per token: (input, cached_input, cache_write, output, reasoning)
    rates: tuple[int, int, int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.effective_from, dt.date) or isinstance(
            self.effective_from, dt.datetime
        ):
            raise ValueError(f"effectiveFrom: {self.effective_from!r} must be a date")
        rates = (
            _rate(self.input, "input"),
            _rate(self.cached_input, "cachedInput"),
            _rate(self.cache_write, "cacheWrite"),
            _rate(self.output, "output"),
            _rate(self.reasoning, "reasoning"),
        )
        object.__setattr__(self, "rates", rates)

    @classmethod
    def of(
        cls,
        effective_from: dt.date,
        input: Decimal,
        output: Decimal,
        *,
        cached_input: Decimal | None = None,
        cache_write: Decimal | None = None,
        reasoning: Decimal | None = None,
    ) -> ModelPrice:
        """Build a price with the defaults: cached_input/cache_write = input, reasoning = output."""
        return cls(
            effective_from=effective_from,
            input=input,
            cached_input=input if cached_input is None else cached_input,
            cache_write=input if cache_write is None else cache_write,
            output=output,
            reasoning=output if reasoning is None else reasoning,
        )

    @property
    def starts_ms(self) -> int:
        """Epoch milliseconds of UTC midnight starting ``effective_from``."""
        return (self.effective_from.toordinal() - _EPOCH_ORDINAL) * _MS_PER_DAY


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A model with its price periods, sorted by strictly increasing ``effective_from``."""

    name: str
    provider: str | None
    prices: tuple[ModelPrice, ...]
    aliases: tuple[str, ...] = ()
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 200:
            raise ValueError(f"model name {self.name!r} must be a string of 1..200 characters")
        object.__setattr__(self, "prices", tuple(self.prices))
        object.__setattr__(self, "aliases", tuple(self.aliases))
        if not self.prices:
            raise ValueError("prices: at least one price is required")
        starts = tuple(p.starts_ms for p in self.prices)
        for i in range(1, len(starts)):
            if starts[i] <= starts[i - 1]:
                raise ValueError(
                    f"prices[{i}].effectiveFrom: {self.prices[i].effective_from} must be after "
                    f"{self.prices[i - 1].effective_from} (ordered by effectiveFrom, no repeats)"
                )
        object.__setattr__(self, "_starts", starts)

    def price_at(self, timestamp_ms: int) -> ModelPrice:
        """The price in effect at ``timestamp_ms`` (earliest price before the first date)."""
        if len(self._starts) == 1:
            return self.prices[0]
        return self.prices[max(bisect_right(self._starts, timestamp_ms) - 1, 0)]


class Priced(NamedTuple):
    cost_pico: int
    priced: bool
    provider: str | None
    #: catalog name the model resolved to (None when unknown)
    catalog_model: str | None = None


class PriceCatalog:
    """Immutable set of models; lookups are memoised per raw model string."""

    def __init__(self, entries: Iterable[ModelEntry] = ()) -> None:
        self._entries: dict[str, ModelEntry] = {}
        for e in entries:  # a later entry with the same name replaces an earlier one
            self._entries[e.name] = e
        self._aliases: dict[str, ModelEntry] = {}
        self._folded: dict[str, ModelEntry] = {}
        for e in self._entries.values():
            for alias in e.aliases:
                self._aliases[alias] = e
                self._folded[alias.strip().lower()] = e
        for e in self._entries.values():  # names beat aliases in the folded index
            self._folded[e.name.strip().lower()] = e
        self._cache: dict[str, ModelEntry | None] = {}

    # -- construction -------------------------------------------------------------------

    @classmethod
    def builtin(cls) -> PriceCatalog:
        """The catalog shipped in ``processor/domain/prices.yaml``."""
        return cls(_builtin_entries())

    @classmethod
    def from_file(cls, path: Path) -> PriceCatalog:
        return cls(_load_file(path))

    def extended_with(self, path: Path) -> PriceCatalog:
        """This catalog with the models of a §7 price file added or replacing (see module doc)."""
        return self.merged(_load_file(path))

    def merged(self, overrides: Iterable[ModelEntry]) -> PriceCatalog:
        merged = dict(self._entries)
        for new in overrides:
            old = merged.get(new.name)
            if old is not None:
                aliases = tuple(dict.fromkeys((*old.aliases, *new.aliases)))
                provider = new.provider if new.provider is not None else old.provider
                new = ModelEntry(new.name, provider, new.prices, aliases)
            merged[new.name] = new
        return PriceCatalog(merged.values())

    # -- queries --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries.values())

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.lookup(model) is not None

    def lookup(self, model: str) -> ModelEntry | None:
        """Resolve a producer's model string (see module doc for the rules)."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        entry = self._resolve(model)
        if len(self._cache) >= _LOOKUP_CACHE_MAX:
            self._cache.clear()  # producers control model strings: keep memory bounded
        self._cache[model] = entry
        return entry

    def _resolve(self, model: str) -> ModelEntry | None:
        entry = self._entries.get(model) or self._aliases.get(model)
        if entry is not None:
            return entry
        key = model.strip().lower()
        if "/" in key:
            key = key.rsplit("/", 1)[1]
        entry = self._folded.get(key)
        if entry is None:
            base = _DATE_SUFFIX.sub("", key)
            if base != key:
                entry = self._folded.get(base)
        return entry

    def provider_for(self, model: str) -> str | None:
        entry = self.lookup(model)
        return None if entry is None else entry.provider

    def price_at(self, model: str, timestamp_ms: int) -> ModelPrice | None:
        entry = self.lookup(model)
        return None if entry is None else entry.price_at(timestamp_ms)

    def price_tokens(
        self,
        model: str,
        *,
        timestamp_ms: int,
        provider: str | None = None,
        prompt: int = 0,
        completion: int = 0,
        reasoning: int = 0,
        cached: int = 0,
        cache_write: int = 0,
        total_only: int | None = None,
    ) -> Priced:
        """Exact cost of one tokens entry at the price in effect at ``timestamp_ms``.

        ``prompt`` includes ``cached`` and ``cache_write``; ``completion`` includes
        ``reasoning``. ``total_only`` is for entries that carry only ``tokens.total``
        (priced at ``input``; the other counts must then be 0). Invariant violations raise
        ``ValueError``. Unknown model: ``Priced(0, False, provider)``. Producer-supplied
        ``costUsd`` is the caller's business (it wins).
        """
        if total_only is not None:
            if total_only < 0 or prompt or completion or reasoning or cached or cache_write:
                raise ValueError("total_only must be >= 0 and given without other token counts")
        elif (
            reasoning < 0
            or cached < 0
            or cache_write < 0
            or reasoning > completion
            or cached + cache_write > prompt
        ):
            raise ValueError(
                "token counts must be >= 0 with reasoning <= completion and "
                "cached + cacheWrite <= prompt"
            )
        entry = self.lookup(model)
        if entry is None:
            return Priced(0, False, provider or None, None)
        starts = entry._starts
        if len(starts) == 1:
            r_in, r_cached, r_cw, r_out, r_reason = entry.prices[0].rates
        else:
            i = bisect_right(starts, timestamp_ms) - 1
            r_in, r_cached, r_cw, r_out, r_reason = entry.prices[i if i > 0 else 0].rates
        if total_only is not None:
            cost = total_only * r_in
        else:
            cost = (
                (prompt - cached - cache_write) * r_in
                + cached * r_cached
                + cache_write * r_cw
                + (completion - reasoning) * r_out
                + reasoning * r_reason
            )
        return Priced(cost, True, provider or entry.provider, entry.name)


# -- loading ------------------------------------------------------------------------------


def load_catalog(prices_file: Path | None) -> PriceCatalog:
    """The built-in catalog, extended/overridden by ``prices_file`` when given."""
    catalog = PriceCatalog.builtin()
    return catalog if prices_file is None else catalog.extended_with(prices_file)


@cache
def _builtin_entries() -> tuple[ModelEntry, ...]:
    res = resources.files("processor.domain").joinpath("prices.yaml")
    text = res.read_text(encoding="utf-8")
    return tuple(parse_prices_document(yaml.safe_load(text), "built-in prices.yaml"))


def _load_file(path: Path) -> list[ModelEntry]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PriceCatalogError(f"prices file {path}: cannot read: {exc}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PriceCatalogError(f"prices file {path}: invalid YAML: {exc}") from exc
    return parse_prices_document(doc, f"prices file {path}")


def parse_prices_document(doc: Any, source: str = "prices") -> list[ModelEntry]:
    """Validate a parsed §7 document (``{"models": {...}}``) into model entries."""
    if not isinstance(doc, Mapping) or set(doc) != {"models"}:
        raise PriceCatalogError(f"{source}: top level must be a mapping with only 'models'")
    models = doc["models"]
    if not isinstance(models, Mapping):
        raise PriceCatalogError(f"{source}: 'models' must be a mapping of model name -> spec")
    return [_parse_model(source, name, spec) for name, spec in models.items()]


def _parse_model(source: str, name: Any, spec: Any) -> ModelEntry:
    where = f"{source}: model {name!r}"
    if not isinstance(name, str) or not name.strip():
        raise PriceCatalogError(f"{where}: model names must be non-empty strings")
    if not isinstance(spec, Mapping):
        raise PriceCatalogError(f"{where}: must be a mapping with 'prices'")
    unknown = set(spec) - _MODEL_KEYS
    if unknown:
        raise PriceCatalogError(f"{where}: unknown field(s) {sorted(map(str, unknown))}")
    provider = spec.get("provider")
    if provider is not None and (not isinstance(provider, str) or not provider):
        raise PriceCatalogError(f"{where}, provider: must be a non-empty string")
    aliases = spec.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise PriceCatalogError(f"{where}, aliases: must be a list of non-empty strings")
    raw_prices = spec.get("prices")
    if not isinstance(raw_prices, list) or not raw_prices:
        raise PriceCatalogError(f"{where}, prices: must be a non-empty list")
    prices = [_parse_price(f"{where}, prices[{i}]", p) for i, p in enumerate(raw_prices)]
    try:
        return ModelEntry(name, provider, tuple(prices), tuple(aliases))
    except ValueError as exc:
        raise PriceCatalogError(f"{where}, {exc}") from exc


def _parse_price(where: str, item: Any) -> ModelPrice:
    if not isinstance(item, Mapping):
        raise PriceCatalogError(f"{where}: must be a mapping")
    unknown = set(item) - _PRICE_KEYS
    if unknown:
        raise PriceCatalogError(f"{where}: unknown field(s) {sorted(map(str, unknown))}")
    for required in ("effectiveFrom", "input", "output"):
        if item.get(required) is None:
            raise PriceCatalogError(f"{where}.{required}: required")
    values = {
        k: _decimal(f"{where}.{k}", item[k]) for k in _PRICE_FIELDS if item.get(k) is not None
    }
    try:
        return ModelPrice.of(
            _date(f"{where}.effectiveFrom", item["effectiveFrom"]),
            values["input"],
            values["output"],
            cached_input=values.get("cachedInput"),
            cache_write=values.get("cacheWrite"),
            reasoning=values.get("reasoning"),
        )
    except ValueError as exc:
        raise PriceCatalogError(f"{where}.{exc}") from exc


def _decimal(where: str, value: Any) -> Decimal:
    # Strings are preferred ("0.15"); YAML ints and floats are read via their shortest repr.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PriceCatalogError(f'{where}: {value!r} must be a decimal string such as "0.15"')
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise PriceCatalogError(f"{where}: {value!r} is not a decimal number") from None
    if not d.is_finite() or d < 0:
        raise PriceCatalogError(f"{where}: {value!r} must be a finite number >= 0")
    return d


def _date(where: str, value: Any) -> dt.date:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and _DATE_TEXT.fullmatch(value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise PriceCatalogError(f'{where}: {value!r} must be a UTC date "YYYY-MM-DD"')
