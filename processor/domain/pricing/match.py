"""Match rules of the price catalog: genai-prices' clauses, compiled once at load.

A clause is a YAML mapping: ``{equals: s}``, ``{startsWith: s}``, ``{endsWith: s}``,
``{contains: s}``, ``{regex: s}``, ``{or: [...]}``, ``{and: [...]}``. They are applied to
the lower-cased model (or provider) string, as genai-prices applies them: the string
comparisons ignore case, a regex is searched as written.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any

Matcher = Callable[[str], bool]

_LEAVES = ("equals", "startsWith", "endsWith", "contains", "regex")


def compile_clause(clause: Any, where: str) -> Matcher:
    """A predicate over lower-cased text; ValueError naming ``where`` when malformed.

    >>> rule = compile_clause({"or": [{"startsWith": "GPT-4o"}, {"equals": "o1"}]}, "m")
    >>> rule("gpt-4o-mini"), rule("o1"), rule("o1-mini")
    (True, True, False)
    """
    if not isinstance(clause, Mapping) or len(clause) != 1:
        raise ValueError(f"{where}: a match clause is a mapping with exactly one key")
    ((kind, arg),) = clause.items()
    if kind in ("or", "and"):
        if not isinstance(arg, list) or not arg:
            raise ValueError(f"{where}.{kind}: expected a non-empty list of clauses")
        parts = [compile_clause(c, f"{where}.{kind}[{i}]") for i, c in enumerate(arg)]
        if kind == "or":
            return lambda text: any(p(text) for p in parts)
        return lambda text: all(p(text) for p in parts)
    if kind not in _LEAVES:
        raise ValueError(f"{where}: unknown clause {kind!r} (expected one of {_LEAVES}, or, and)")
    if not isinstance(arg, str):
        raise ValueError(f"{where}.{kind}: expected a string")
    if kind == "regex":
        try:
            pattern = re.compile(arg)
        except re.error as exc:
            raise ValueError(f"{where}.regex: {exc}") from None
        return lambda text: pattern.search(text) is not None
    s = arg.lower()
    if kind == "equals":
        return lambda text: text == s
    if kind == "startsWith":
        return lambda text: text.startswith(s)
    if kind == "endsWith":
        return lambda text: text.endswith(s)
    return lambda text: s in text


def exact_names(clause: Any) -> list[str] | None:
    """The names a clause matches when it only matches names exactly (``equals``, or an
    ``or`` of such), lower-cased; None when it may match other strings too.

    >>> exact_names({"or": [{"equals": "GPT-4o"}, {"equals": "gpt-4o-2024-08-06"}]})
    ['gpt-4o', 'gpt-4o-2024-08-06']
    >>> exact_names({"or": [{"equals": "gpt-4o"}, {"startsWith": "gpt-4o-"}]}) is None
    True
    """
    if not isinstance(clause, Mapping) or len(clause) != 1:
        return None
    ((kind, arg),) = clause.items()
    if kind == "equals" and isinstance(arg, str):
        return [arg.lower()]
    if kind == "or" and isinstance(arg, list):
        names: list[str] = []
        for c in arg:
            sub = exact_names(c)
            if sub is None:
                return None
            names.extend(sub)
        return names
    return None


_COMPACT_DATE = re.compile(r"(-)(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?=-|:|$)")


def dashed_dates(model: str) -> str:
    """``gpt-5.2-20251211`` -> ``gpt-5.2-2025-12-11`` (real dates only), as genai-prices
    retries a model it did not find: LiteLLM and OpenRouter send compact dates.

    >>> dashed_dates("gpt-5.2-20251211"), dashed_dates("model-20251341")
    ('gpt-5.2-2025-12-11', 'model-20251341')
    """

    def replace(m: re.Match[str]) -> str:
        year, month, day = (int(m.group(i)) for i in range(2, 5))
        try:
            dt.date(year, month, day)
        except ValueError:
            return m.group(0)
        return f"-{year:04d}-{month:02d}-{day:02d}"

    return _COMPACT_DATE.sub(replace, model)
