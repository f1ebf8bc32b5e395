"""The price catalog: providers, their models and match rules, and the lookup of an entry.

Lookup of (provider, model), the same as genai-prices' (whose catalog the built-in one
is), cached per distinct pair so no entry scans the catalog:

1. The provider: the entry's ``provider`` lower-cased and trimmed, as a provider id, then
   as one of our spellings (``aliases``: ``bedrock``, ``vertex``, ``openai.chat``, ...),
   then by each provider's own match rule, in catalog order. A ``provider`` none of these
   knows: unpriced. Without ``provider``: the model's maker, the first provider whose
   model rule matches the model (``gpt-`` is OpenAI's, ``claude`` Anthropic's), else
   unpriced. ``litellm`` with ``<provider>/<model>`` names that provider.
2. The model, lower-cased, within that provider: the first model (in catalog order) whose
   match rule matches; else the same with a compact date made dashed (``-20251211`` ->
   ``-2025-12-11``); else, one step only, the same in each of the provider's fallback
   providers (Azure offers OpenAI's models, Vertex Anthropic's). Else unpriced.
3. The price period in effect at the entry's timestamp (``rates.period_in_effect``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from processor.domain.pricing.match import Matcher, dashed_dates
from processor.domain.pricing.rates import PricePeriod, period_in_effect

BUILT_IN = "built-in"
_CACHE_MAX = 8192
_MISS = object()
_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(slots=True)
class CatalogModel:
    id: str
    provider: str
    match: Matcher
    #: the lower-cased names the rule matches when it matches only exact names
    exact: list[str] | None
    periods: tuple[PricePeriod, ...] = ()
    #: why the model has no token price (then ``periods`` is empty)
    unpriced: str | None = None
    #: where the prices come from: ``built-in`` or the prices file's path
    source: str = BUILT_IN

    def price_at(self, timestamp_ms: int) -> PricePeriod | None:
        periods = self.periods
        if len(periods) == 1:
            return periods[0]
        return period_in_effect(periods, timestamp_ms) if periods else None


@dataclass(slots=True)
class Provider:
    """A provider and its models, parsed when first used: a worker reads the whole
    catalog at start-up but prices with a handful of its 47 providers."""

    id: str
    name: str
    aliases: tuple[str, ...] = ()
    provider_match: Matcher | None = None
    model_match: Matcher | None = None
    fallback: tuple[str, ...] = ()
    _models: list[CatalogModel] | None = field(default=None, repr=False)
    #: builds the models on first use (None: ``_models`` is set)
    _parse: Callable[[], list[CatalogModel]] | None = field(default=None, repr=False)
    _index: tuple[dict[str, int], list[int]] | None = field(default=None, repr=False)

    @property
    def models(self) -> list[CatalogModel]:
        """In catalog order (the first match wins); change it through ``set_models``."""
        if self._models is None:
            self._models = self._parse() if self._parse is not None else []
            self._parse = None
        return self._models

    def set_models(self, models: list[CatalogModel]) -> None:
        self._models, self._parse, self._index = models, None, None

    def _indexed(self) -> tuple[dict[str, int], list[int]]:
        """Exact names in a dict; only models with other rules are tried one by one."""
        if self._index is None:
            exact: dict[str, int] = {}
            other: list[int] = []
            for i, model in enumerate(self.models):
                if model.exact is None:
                    other.append(i)
                else:
                    for name in model.exact:
                        exact.setdefault(name, i)
            self._index = (exact, other)
        return self._index

    def own_model(self, ref: str) -> CatalogModel | None:
        """The first of this provider's models whose rule matches ``ref`` (lower-cased)."""
        exact, other = self._indexed()
        first = exact.get(ref)
        for i in other:
            if first is not None and i > first:
                break
            if self.models[i].match(ref):
                return self.models[i]
        return self.models[first] if first is not None else None


class Resolved(NamedTuple):
    provider: str  # the provider the entry was priced for
    model: CatalogModel  # may belong to one of its fallback providers


class Priced(NamedTuple):
    cost_pico: int
    priced: bool
    provider: str | None


class PriceCatalog:
    def __init__(self, providers: Iterable[Provider]) -> None:
        self.providers: list[Provider] = list(providers)
        self._by_id = {p.id: p for p in self.providers}
        self._spellings: dict[str, Provider] = {}
        for p in self.providers:
            for alias in p.aliases:
                self._spellings.setdefault(alias, p)
        self._provider_cache: dict[str, Provider | None] = {}
        self._maker_cache: dict[str, Provider | None] = {}
        self._cache: dict[tuple[str | None, str], Resolved | None] = {}

    def __iter__(self) -> Iterator[CatalogModel]:
        for p in self.providers:
            yield from p.models

    def __len__(self) -> int:
        return sum(len(p.models) for p in self.providers)

    # --- lookup -------------------------------------------------------------------------

    def provider(self, name: str) -> Provider | None:
        """The provider an entry's ``provider`` names (id, our spelling, its own rule)."""
        key = name.strip().lower()
        if key in self._provider_cache:
            return self._provider_cache[key]
        found = self._by_id.get(key) or self._spellings.get(key)
        if found is None:
            found = next(
                (p for p in self.providers if p.provider_match and p.provider_match(key)), None
            )
        self._remember(self._provider_cache, key, found)
        return found

    def maker(self, model: str) -> Provider | None:
        """The provider whose model rule claims ``model``: who to price it with when the
        entry names no provider."""
        ref = model.lower()
        if ref in self._maker_cache:
            return self._maker_cache[ref]
        found = next((p for p in self.providers if p.model_match and p.model_match(ref)), None)
        self._remember(self._maker_cache, ref, found)
        return found

    def resolve(self, model: str, provider: str | None = None) -> Resolved | None:
        key = (provider, model)
        cached = self._cache.get(key, _MISS)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        found = self._resolve(model, provider)
        self._remember(self._cache, key, found)
        return found

    def _resolve(self, model: str, provider_name: str | None) -> Resolved | None:
        ref = model.lower()
        if provider_name is not None and provider_name.strip().lower() == "litellm":
            named, sep, rest = ref.partition("/")
            if sep and named and self.provider(named) is not None:
                provider_name, ref = named, rest
        p = self.provider(provider_name) if provider_name is not None else self.maker(ref)
        if p is None:
            return None
        found = self._model_of(p, ref)
        if found is None:
            dashed = dashed_dates(ref)
            if dashed != ref:
                found = self._model_of(p, dashed)
        return None if found is None else Resolved(p.id, found)

    def _model_of(self, p: Provider, ref: str) -> CatalogModel | None:
        found = p.own_model(ref)
        if found is not None:
            return found
        for fallback_id in p.fallback:
            other = self._by_id.get(fallback_id)
            if other is not None and (found := other.own_model(ref)) is not None:
                return found
        return None

    @staticmethod
    def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
        if len(cache) >= _CACHE_MAX:
            cache.clear()  # bounded against a stream of distinct names; rebuilt as used
        cache[key] = value

    # --- pricing ------------------------------------------------------------------------

    def price_at(
        self, model: str, timestamp_ms: int, provider: str | None = None
    ) -> PricePeriod | None:
        found = self.resolve(model, provider)
        return None if found is None else found.model.price_at(timestamp_ms)

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
        """Exact cost of one LLM call in pico-dollars (CONTRACT §7); 0 and
        ``priced=False`` when the catalog has no token price for it."""
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
        found = self._cache.get((provider, model))
        if found is None:
            found = self.resolve(model, provider)
            if found is None:
                return Priced(0, False, provider.strip().lower() if provider else None)
        periods = found.model.periods
        if not periods:
            return Priced(0, False, found.provider)
        period = periods[0] if len(periods) == 1 else period_in_effect(periods, timestamp_ms)
        flat = period._flat
        if flat is not None and total_only is None:
            # the hot path, inline: a flat price, no tier to look up
            r_in, r_cached, r_write, r_out, r_reasoning = flat
            cost = (
                period._per_call_pico
                + (prompt - cached - cache_write) * r_in
                + cached * r_cached
                + cache_write * r_write
                + (completion - reasoning) * r_out
                + reasoning * r_reasoning
            )
            return Priced(cost, True, found.provider)
        cost = period.cost_pico(
            prompt=prompt,
            completion=completion,
            reasoning=reasoning,
            cached=cached,
            cache_write=cache_write,
            total_only=total_only,
        )
        return Priced(cost, True, found.provider)
