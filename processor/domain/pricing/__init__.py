"""The price catalog and exact per-entry pricing (CONTRACT §7).

``rates`` holds one period's prices as exact integer rates with long-context tiers;
``match`` genai-prices' match rules; ``catalog`` the providers, models and the lookup of an
entry; ``load`` reading the built-in catalog and a ``USAGE_PRICES_FILE``.
"""

from processor.domain.pricing.catalog import (
    BUILT_IN,
    CatalogModel,
    PriceCatalog,
    Priced,
    Provider,
    Resolved,
)
from processor.domain.pricing.load import (
    PriceCatalogError,
    load_catalog,
    parse_catalog_document,
    parse_prices_document,
    read_prices_file,
)
from processor.domain.pricing.rates import PricePeriod, Rate, Tier

__all__ = [
    "BUILT_IN",
    "CatalogModel",
    "PriceCatalog",
    "PriceCatalogError",
    "PricePeriod",
    "Priced",
    "Provider",
    "Rate",
    "Resolved",
    "Tier",
    "load_catalog",
    "parse_catalog_document",
    "parse_prices_document",
    "read_prices_file",
]
