"""Reading prices: the built-in catalog (``prices.yaml``, generated from genai-prices) and
a ``USAGE_PRICES_FILE`` in the format of CONTRACT §7, merged over it.

A prices file is checked whole before anything of it is used: any error stops start-up
with a message naming the file, the model, the provider and the field; nothing is
half-loaded. A model in the file replaces that provider's model of the same name (its
whole price list: negotiated prices never blend with list prices), keeping the built-in
model's match rule (so its dated snapshots get the file's price too) and adding the
file's name and aliases; a model the provider does not have is added before the others,
so the file's names win. A provider the catalog does not know is added. Without
``provider``/``providers``, the model's maker in the catalog is used.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml

from processor.domain.pricing.catalog import CatalogModel, PriceCatalog, Provider
from processor.domain.pricing.match import Matcher, compile_clause, exact_names
from processor.domain.pricing.rates import PricePeriod, Rate, Tier

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_RATE_FIELDS = ("input", "cachedInput", "cacheWrite", "output", "reasoning")
_PERIOD_KEYS = frozenset({"effectiveFrom", *_RATE_FIELDS})
#: the built-in catalog also keeps genai-prices' time-of-day (off-peak) prices
_BUILTIN_PERIOD_KEYS = _PERIOD_KEYS | {"utcHours", "perThousandCalls"}
_FILE_MODEL_KEYS = frozenset({"provider", "providers", "prices", "aliases"})
_FILE_PROVIDER_KEYS = frozenset({"prices", "aliases"})
_FREE = Rate(Decimal(0))


class PriceCatalogError(ValueError):
    """A price file or price entry is invalid; the message names file, model and field."""


def load_catalog(prices_file: Path | None) -> PriceCatalog:
    """The built-in catalog, extended/overridden by ``prices_file`` when given."""
    models = read_prices_file(prices_file) if prices_file is not None else None
    providers = _builtin_providers()
    if models is not None:
        providers = merge_file(providers, models, str(prices_file))
    return PriceCatalog(providers)


# --- built-in -------------------------------------------------------------------------------


def _builtin_providers() -> list[Provider]:
    """A fresh copy each call (a file merge changes providers in place)."""
    return [_copy(p) for p in _parsed_builtin()]


def _copy(p: Provider) -> Provider:
    """The provider with models parsed (or to be parsed) once, shared by every copy."""
    copy = Provider(p.id, p.name, p.aliases, p.provider_match, p.model_match, p.fallback)
    copy._parse = lambda: list(p.models)
    return copy


@cache
def _parsed_builtin() -> tuple[Provider, ...]:
    text = resources.files("processor.domain").joinpath("prices.yaml").read_text("utf-8")
    return tuple(parse_catalog_document(read_catalog_text(text)))


def read_catalog_text(text: str) -> Any:
    """The built-in catalog document. tools/gen_prices.py writes it in YAML's flow style,
    which is JSON below the comment lines, so it loads with ``json`` (a few ms) rather
    than a YAML parser (about 440 ms with libyaml for 2,300 models)."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    if body.lstrip().startswith("{"):
        return json.loads(body)
    return yaml.load(text, Loader=_Loader)


def parse_catalog_document(doc: Mapping[str, Any]) -> list[Provider]:
    """The providers of a document in the built-in catalog's format (tools/gen_prices.py)."""
    return [_builtin_provider(spec) for spec in doc["providers"]]


def _builtin_provider(spec: Mapping[str, Any]) -> Provider:
    pid = spec["id"]
    where = f"built-in prices.yaml: provider {pid!r}"
    p = Provider(
        pid,
        spec.get("name", pid),
        tuple(spec.get("aliases", ())),
        compile_clause(spec["providerMatch"], where) if "providerMatch" in spec else None,
        compile_clause(spec["modelMatch"], where) if "modelMatch" in spec else None,
        tuple(spec.get("fallback", ())),
    )
    specs = spec["models"]
    p._parse = lambda: [_builtin_model(where, pid, m) for m in specs]
    return p


def _builtin_model(where: str, pid: str, m: Mapping[str, Any]) -> CatalogModel:
    mwhere = f"{where}, model {m['id']!r}"
    periods: tuple[PricePeriod, ...] = ()
    if "prices" in m:
        periods = tuple(
            _period(f"{mwhere}, prices[{i}]", item, dated=i > 0, builtin=True)
            for i, item in enumerate(m["prices"])
        )
    return CatalogModel(
        m["id"],
        pid,
        compile_clause(m["match"], mwhere),
        exact_names(m["match"]),
        periods,
        m.get("unpriced"),
    )


# --- a prices file --------------------------------------------------------------------------

#: (provider as written or None, model, aliases, periods), checked
FileModel = tuple[str | None, str, tuple[str, ...], tuple[PricePeriod, ...]]


def read_prices_file(path: Path) -> list[FileModel]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PriceCatalogError(f"prices file {path}: cannot read: {exc}") from exc
    try:
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise PriceCatalogError(f"prices file {path}: invalid YAML: {exc}") from exc
    return parse_prices_document(doc, f"prices file {path}")


def parse_prices_document(doc: Any, source: str = "prices") -> list[FileModel]:
    """Validate a parsed §7 document (``{"models": {...}}``)."""
    if not isinstance(doc, Mapping) or set(doc) != {"models"}:
        raise PriceCatalogError(f"{source}: top level must be a mapping with only 'models'")
    models = doc["models"]
    if not isinstance(models, Mapping):
        raise PriceCatalogError(f"{source}: 'models' must be a mapping of model name -> spec")
    out: list[FileModel] = []
    for name, spec in models.items():
        out.extend(_file_model(source, name, spec))
    return out


def _file_model(source: str, name: Any, spec: Any) -> list[FileModel]:
    where = f"{source}: model {name!r}"
    if not isinstance(name, str) or not name.strip():
        raise PriceCatalogError(f"{where}: model names must be non-empty strings")
    if not isinstance(spec, Mapping):
        raise PriceCatalogError(f"{where}: must be a mapping with 'prices' or 'providers'")
    _no_unknown(where, spec, _FILE_MODEL_KEYS)
    aliases = _aliases(where, spec.get("aliases", []))
    if "providers" in spec:
        if "prices" in spec or "provider" in spec:
            raise PriceCatalogError(
                f"{where}: either 'provider' + 'prices' or 'providers', not both"
            )
        providers = spec["providers"]
        if not isinstance(providers, Mapping) or not providers:
            raise PriceCatalogError(f"{where}, providers: must be a mapping provider -> prices")
        out = []
        for pname, pspec in providers.items():
            pwhere = f"{where}, provider {pname!r}"
            _provider_name(where, pname)
            if not isinstance(pspec, Mapping):
                raise PriceCatalogError(f"{pwhere}: must be a mapping with 'prices'")
            _no_unknown(pwhere, pspec, _FILE_PROVIDER_KEYS)
            extra = _aliases(pwhere, pspec.get("aliases", []))
            out.append((pname, name, aliases + extra, _periods(pwhere, pspec.get("prices"))))
        return out
    provider = spec.get("provider")
    if provider is not None:
        _provider_name(where, provider)
    return [(provider, name, aliases, _periods(where, spec.get("prices")))]


def _provider_name(where: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise PriceCatalogError(f"{where}, provider: must be a non-empty string")


def _aliases(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) and a.strip() for a in value):
        raise PriceCatalogError(f"{where}, aliases: must be a list of non-empty strings")
    return tuple(value)


def _no_unknown(where: str, spec: Mapping[Any, Any], allowed: frozenset[str]) -> None:
    unknown = set(spec) - allowed
    if unknown:
        raise PriceCatalogError(f"{where}: unknown field(s) {sorted(map(str, unknown))}")


def _periods(where: str, raw: Any) -> tuple[PricePeriod, ...]:
    if not isinstance(raw, list) or not raw:
        raise PriceCatalogError(f"{where}, prices: must be a non-empty list")
    periods = [_period(f"{where}, prices[{i}]", p, dated=True) for i, p in enumerate(raw)]
    for i, (before, after) in enumerate(pairwise(p.effective_from for p in periods), 1):
        if before is not None and after is not None and after <= before:
            raise PriceCatalogError(
                f"{where}, prices[{i}].effectiveFrom: {after} must be after {before}"
            )
    return tuple(periods)


def _period(where: str, item: Any, *, dated: bool, builtin: bool = False) -> PricePeriod:
    if not isinstance(item, Mapping):
        raise PriceCatalogError(f"{where}: must be a mapping")
    _no_unknown(where, item, _BUILTIN_PERIOD_KEYS if builtin else _PERIOD_KEYS)
    # the built-in catalog's later periods start at a date or are time-of-day prices
    required: tuple[str, ...] = ("effectiveFrom",) if dated and "utcHours" not in item else ()
    if not builtin:
        required += ("input", "output")
    for name in required:
        if item.get(name) is None:
            raise PriceCatalogError(f"{where}.{name}: required")
    rates = {k: _rate(f"{where}.{k}", item[k]) for k in _RATE_FIELDS if item.get(k) is not None}
    # genai-prices prices a component it has no price for at 0 (embeddings have no output)
    for name in ("input", "output"):
        rates.setdefault(name, _FREE)
    start = item.get("effectiveFrom")
    hours = item.get("utcHours")
    fee = item.get("perThousandCalls")
    return PricePeriod.of(
        None if start is None else _date(f"{where}.effectiveFrom", start),
        rates["input"],
        rates["output"],
        cached_input=rates.get("cachedInput"),
        cache_write=rates.get("cacheWrite"),
        reasoning=rates.get("reasoning"),
        utc_minutes=None if hours is None else (_minute(hours["from"]), _minute(hours["to"])),
        per_thousand_calls=None if fee is None else Decimal(fee),
    )


def _minute(text: str) -> int:
    """``"16:30"`` -> minutes after UTC midnight."""
    hh, mm = text.split(":")
    return int(hh) * 60 + int(mm)


def _rate(where: str, value: Any) -> Rate:
    """A decimal, or ``{base: decimal, tiers: [{above: int, price: decimal}, ...]}``."""
    if isinstance(value, Mapping):
        _no_unknown(where, value, frozenset({"base", "tiers"}))
        if "base" not in value or not isinstance(value.get("tiers"), list) or not value["tiers"]:
            raise PriceCatalogError(f"{where}: a tiered price needs 'base' and a list 'tiers'")
        tiers = []
        for i, t in enumerate(value["tiers"]):
            twhere = f"{where}.tiers[{i}]"
            if not isinstance(t, Mapping) or set(t) != {"above", "price"}:
                raise PriceCatalogError(f"{twhere}: must be a mapping of 'above' and 'price'")
            above = t["above"]
            if isinstance(above, bool) or not isinstance(above, int):
                raise PriceCatalogError(f"{twhere}.above: {above!r} must be an integer")
            tiers.append(Tier(above, _decimal(f"{twhere}.price", t["price"])))
        base = _decimal(f"{where}.base", value["base"])
    else:
        base, tiers = _decimal(where, value), []
    try:
        return Rate(base, tuple(tiers))
    except ValueError as exc:
        raise PriceCatalogError(f"{where}.{exc}") from None


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
    try:
        Rate(d)
    except ValueError as exc:
        raise PriceCatalogError(f"{where}: {str(exc).removeprefix('base: ')}") from None
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


# --- merging ----------------------------------------------------------------------------


def merge_file(providers: list[Provider], models: list[FileModel], source: str) -> list[Provider]:
    """The built-in providers with the file's models merged in (module docstring)."""
    catalog = PriceCatalog(providers)
    for provider_name, name, aliases, periods in models:
        if provider_name is None:
            p = catalog.maker(name)
            if p is None:
                raise PriceCatalogError(
                    f"prices file {source}: model {name!r}, provider: required (the catalog "
                    "names no maker for this model)"
                )
        else:
            found = catalog.provider(provider_name)
            if found is None:
                found = _new_provider(providers, provider_name)
                catalog = PriceCatalog(providers)
            p = found
        names = [n.lower() for n in (name, *aliases)]
        existing = p.own_model(name.lower())
        listed = list(p.models)
        if existing is not None:
            listed[listed.index(existing)] = CatalogModel(
                existing.id,
                p.id,
                _names_or(frozenset(names), existing.match),
                None if existing.exact is None else [*names, *existing.exact],
                periods,
                None,
                source,
            )
        else:
            model = CatalogModel(
                name, p.id, _names_or(frozenset(names), None), names, periods, None, source
            )
            listed.insert(0, model)
        p.set_models(listed)
    return providers


def _names_or(names: frozenset[str], rule: Matcher | None) -> Matcher:
    """Matches ``names`` exactly, or what ``rule`` matches."""

    def match(ref: str) -> bool:
        return ref in names or (rule is not None and rule(ref))

    return match


def _new_provider(providers: list[Provider], name: str) -> Provider:
    p = Provider(name.strip().lower(), name.strip())
    providers.append(p)
    return p
