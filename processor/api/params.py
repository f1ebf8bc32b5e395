"""Query-parameter parsing: every bad value is a 400 naming the parameter, never a 500.

Rules shared by every endpoint (documented in the README):
- a parameter given more than once is rejected; unknown parameters are ignored;
- an empty value (``?limit=``) is a bad value, not "absent";
- integers are plain ASCII decimals (``-?[0-9]+``, at most 19 digits): no ``+``, no
  fraction, no exponent, no spaces;
- booleans are ``true`` or ``false`` (any case).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Final

from multidict import MultiMapping

from processor.api.errors import bad_request

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
INT64_MAX: Final = 2**63 - 1

_INT_RE: Final = re.compile(r"-?[0-9]{1,19}", re.ASCII)


def get_str(query: MultiMapping[str], name: str) -> str | None:
    """The single value of ``name``, or ``None`` when absent; 400 when repeated or empty."""
    values = query.getall(name, [])
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(f"query parameter '{name}' is given more than once")
    value = values[0]
    if value == "":
        raise bad_request(f"query parameter '{name}' is empty")
    return value


def get_int(
    query: MultiMapping[str],
    name: str,
    *,
    default: int | None = None,
    minimum: int = 0,
    maximum: int = INT64_MAX,
) -> int | None:
    """An integer in ``[minimum, maximum]``, ``default`` when absent."""
    raw = get_str(query, name)
    if raw is None:
        return default
    if _INT_RE.fullmatch(raw) is None:
        raise bad_request(f"query parameter '{name}' must be an integer, got {raw[:40]!r}")
    value = int(raw)
    if value < minimum:
        raise bad_request(f"query parameter '{name}' must be >= {minimum}, got {value}")
    if value > maximum:
        raise bad_request(f"query parameter '{name}' must be <= {maximum}, got {value}")
    return value


def get_bool(query: MultiMapping[str], name: str, *, default: bool) -> bool:
    raw = get_str(query, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise bad_request(f"query parameter '{name}' must be 'true' or 'false', got {raw[:40]!r}")


def get_limit(query: MultiMapping[str], name: str = "limit") -> int:
    value = get_int(query, name, default=DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    assert value is not None
    return value


def get_choices(
    query: MultiMapping[str], name: str, allowed: Collection[str]
) -> frozenset[str] | None:
    """A comma-separated subset of ``allowed`` (spaces around items ignored), or ``None``."""
    raw = get_str(query, name)
    if raw is None:
        return None
    items = [item.strip() for item in raw.split(",")]
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise bad_request(
            f"query parameter '{name}' has unknown value {unknown[0][:40]!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    return frozenset(items)


def check_range(low_name: str, low: int | None, high_name: str, high: int | None) -> None:
    """400 when both bounds are given and ``low > high``."""
    if low is not None and high is not None and low > high:
        raise bad_request(f"query parameter '{low_name}' ({low}) must be <= '{high_name}' ({high})")
