"""Alert rules (CONTRACT §4, §7): the shipped defaults, or a ``USAGE_ALERT_RULES_FILE``
that replaces them.

A rules file is checked whole before anything of it is used: any error raises
:class:`AlertRulesError` with a message naming the file, the rule (by name, or as
``rules[i]`` when it has no usable name) and the field; nothing is half-loaded. ``rules: []``
is valid and means no alerting.

Thresholds are quoted plain decimal strings (``"80"``, ``"0.5"``: no sign, exponent or
spaces; YAML numbers are refused so that no float ever reaches a money figure). The store
compares in whole units: ``costUsd`` in pico-dollars (at most 12 decimals), ``tokens`` in
tokens (whole numbers), both fitting a signed 64-bit Redis counter. ``toolFailureRate`` is a
fraction in [0, 1], compared exactly by :func:`failure_rate_reached`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NoReturn, cast, get_args

import yaml

from processor.domain.money import INT64_MAX, parse_usd, usd_to_pico
from schemas.common import format_usd

Subject = Literal["user", "run"]
Window = Literal["hour", "day", "month", "run"]
Metric = Literal["costUsd", "tokens", "toolFailureRate"]
Level = Literal["warning", "critical"]

#: the windows each subject may use
SUBJECT_WINDOWS: Mapping[str, tuple[str, ...]] = {"user": ("hour", "day", "month"), "run": ("run",)}
_REQUIRED = ("name", "subject", "window", "metric", "thresholds")
_KEYS = frozenset({*_REQUIRED, "minCalls"})
_LEVELS: tuple[Level, ...] = ("warning", "critical")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)
_MAX_TEXT = 40
_MERGE = "tag:yaml.org,2002:merge"
_Fail = Callable[[str, str], NoReturn]


class AlertRulesError(ValueError):
    """An alert rules file is invalid; the message names the file, the rule and the field."""


@dataclass(frozen=True)
class AlertRule:
    """One rule; ``min_calls`` matters for ``toolFailureRate`` only (1 elsewhere)."""

    name: str
    subject: Subject
    window: Window
    metric: Metric
    warning: Decimal | None
    critical: Decimal | None
    min_calls: int = 1

    @property
    def warning_units(self) -> int | None:
        """The warning threshold in the store's units (None for toolFailureRate)."""
        return _units(self.metric, self.warning)

    @property
    def critical_units(self) -> int | None:
        """The critical threshold in the store's units (None for toolFailureRate)."""
        return _units(self.metric, self.critical)

    @cached_property
    def levels(self) -> tuple[tuple[Level, Decimal], ...]:
        """The configured levels and their thresholds, warning first."""
        pairs = ((lv, t) for lv, t in zip(_LEVELS, (self.warning, self.critical), strict=True))
        return tuple((lv, t) for lv, t in pairs if t is not None)

    @cached_property
    def level_units(self) -> tuple[tuple[Level, Decimal, int | None], ...]:
        """``levels`` with each threshold in the store's units (None for a rate)."""
        return tuple((lv, t, _units(self.metric, t)) for lv, t in self.levels)


def _units(metric: Metric, threshold: Decimal | None) -> int | None:
    if threshold is None or metric == "toolFailureRate":
        return None
    return usd_to_pico(threshold) if metric == "costUsd" else int(threshold)


def failure_rate_reached(failed: int, total: int, threshold: Decimal) -> bool:
    """``failed / total >= threshold``, exactly: ``failed * d >= n * total`` where ``n / d``
    is the threshold as a fraction. Never reached without calls (the caller also waits for
    ``min_calls``).

    >>> failure_rate_reached(1, 3, Decimal("0.333")), failure_rate_reached(1, 3, Decimal("0.334"))
    (True, False)
    """
    if total <= 0:
        return False
    n, d = threshold.as_integer_ratio()
    return failed * d >= n * total


DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule("user-daily-spend", "user", "day", "costUsd", Decimal("80"), Decimal("100")),
    AlertRule("run-token-budget", "run", "run", "tokens", Decimal("80000"), Decimal("100000")),
)


# --- reading a file --------------------------------------------------------------------


class _Mapping(dict[Any, Any]):
    """A YAML mapping that remembers the keys written more than once."""

    duplicates: tuple[str, ...] = ()


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> Iterator[_Mapping]:
    data = _Mapping()
    yield data
    assert isinstance(node, yaml.MappingNode)
    # explicit keys only (before merges are flattened): overriding a merged key is fine
    keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE]
    data.update(loader.construct_mapping(node))
    data.duplicates = tuple(sorted({k for k in keys if keys.count(k) > 1}))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def load_rules(path: Path | None) -> tuple[AlertRule, ...]:
    """:data:`DEFAULT_RULES`, or the rules of ``path`` (which replace them)."""
    if path is None:
        return DEFAULT_RULES
    source = f"alert rules file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AlertRulesError(f"{source}: cannot read: {exc}") from exc
    try:
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise AlertRulesError(f"{source}: invalid YAML: {exc}") from exc
    return parse_rules_document(doc, source)


def parse_rules_document(doc: Any, source: str = "alert rules") -> tuple[AlertRule, ...]:
    """Validate a parsed §7 document (``{"rules": [...]}``)."""
    if not isinstance(doc, Mapping) or set(doc) != {"rules"}:
        raise AlertRulesError(f"{source}: top level must be a mapping with only 'rules'")
    if getattr(doc, "duplicates", ()):
        raise AlertRulesError(f"{source}: top level: duplicate key 'rules'")
    raw_rules = doc["rules"]
    if not isinstance(raw_rules, list):
        raise AlertRulesError(f"{source}: rules: must be a list, got {type(raw_rules).__name__}")
    names: dict[str, int] = {}
    return tuple(_rule(source, i, raw, names) for i, raw in enumerate(raw_rules))


def _rule(source: str, index: int, raw: Any, names: dict[str, int]) -> AlertRule:
    if not isinstance(raw, Mapping):
        raise AlertRulesError(
            f"{source}: rules[{index}]: must be a mapping, got {type(raw).__name__}"
        )
    name = raw.get("name")
    usable = isinstance(name, str) and name.strip() != ""
    where = f"rule {name!r}" if usable else f"rules[{index}]"

    def fail(field: str, problem: str) -> NoReturn:
        raise AlertRulesError(f"{source}: {where}: {field}: {problem}")

    for key in getattr(raw, "duplicates", ()):
        fail(key, "duplicate key")
    for key in raw:
        if key not in _KEYS:
            fail(str(key), f"unknown key; allowed: {', '.join(sorted(_KEYS))}")
    for key in _REQUIRED:
        if key not in raw:
            fail(key, "missing")
    if not isinstance(name, str) or not usable:
        fail("name", f"must be a non-empty string, got {name!r}")
    if name in names:
        fail("name", f"duplicate: rules[{names[name]}] has the same name")
    names[name] = index
    subject = _choice(raw["subject"], get_args(Subject), "subject", fail)
    window = _choice(raw["window"], get_args(Window), "window", fail)
    if window not in (fits := SUBJECT_WINDOWS[subject]):
        fail("window", f"{window!r} does not fit subject {subject!r}; use {' | '.join(fits)}")
    metric = cast(Metric, _choice(raw["metric"], get_args(Metric), "metric", fail))
    warning, critical = _thresholds(raw["thresholds"], metric, fail)
    min_calls = raw.get("minCalls", 1)
    if "minCalls" in raw and metric != "toolFailureRate":
        fail("minCalls", "only applies to metric toolFailureRate")
    if isinstance(min_calls, bool) or not isinstance(min_calls, int) or min_calls < 1:
        fail("minCalls", f"must be a positive integer, got {min_calls!r}")
    return AlertRule(
        name, cast(Subject, subject), cast(Window, window), metric, warning, critical, min_calls
    )


def _choice(value: Any, allowed: tuple[str, ...], field: str, fail: _Fail) -> str:
    if not isinstance(value, str) or value not in allowed:
        fail(field, f"unknown {field} {value!r}; expected " + " | ".join(allowed))
    return value


def _thresholds(raw: Any, metric: Metric, fail: _Fail) -> tuple[Decimal | None, Decimal | None]:
    if not isinstance(raw, Mapping):
        fail("thresholds", f"must be a mapping of warning/critical, got {type(raw).__name__}")
    for key in getattr(raw, "duplicates", ()):
        fail(f"thresholds.{key}", "duplicate key")
    extra = [k for k in raw if k not in _LEVELS]
    if extra:
        fail(f"thresholds.{extra[0]}", "unknown key; allowed: warning, critical")
    if not raw:
        fail("thresholds", "needs warning, critical or both")
    warning, critical = (
        _threshold(raw[lv], metric, f"thresholds.{lv}", fail) if lv in raw else None
        for lv in _LEVELS
    )
    if warning is not None and critical is not None and warning > critical:
        fail("thresholds.warning", f"{warning} is above critical {critical}")
    return warning, critical


def _threshold(value: Any, metric: Metric, field: str, fail: _Fail) -> Decimal:
    if not isinstance(value, str):
        what = "a YAML number" if isinstance(value, int | float) else type(value).__name__
        fail(field, f'must be a quoted decimal string such as "80", got {what} {value!r}')
    if len(value) > _MAX_TEXT or not _DECIMAL.fullmatch(value):
        fail(field, f"{value!r} is not a plain decimal string (no sign, exponent or spaces)")
    if value.startswith("-"):
        fail(field, f"{value!r} is negative; thresholds are >= 0")
    d = Decimal(value)
    if metric == "costUsd":
        try:
            units = parse_usd(value)
        except ValueError as exc:
            fail(field, str(exc))
    elif metric == "tokens":
        if d != d.to_integral_value():
            fail(field, f"{value!r} is not a whole number of tokens")
        units = int(d)
    else:
        if d > 1:
            fail(field, f"{value!r} is above 1; toolFailureRate is a fraction in [0, 1]")
        units = 0
    if units > INT64_MAX:
        fail(field, f"{value!r} is too large for a 64-bit counter")
    return d


# --- writing ---------------------------------------------------------------------------


def rules_document(rules: Iterable[AlertRule]) -> dict[str, Any]:
    """The §7 document of ``rules`` (``load_rules`` of its YAML gives them back)."""
    out = [
        {"name": r.name, "subject": r.subject, "window": r.window, "metric": r.metric}
        | {"thresholds": {lv: format_usd(t) for lv, t in r.levels}}
        | ({"minCalls": r.min_calls} if r.metric == "toolFailureRate" else {})
        for r in rules
    ]
    return {"rules": out}


def rule_digest(rules: Iterable[AlertRule]) -> str:
    """A short stable hash of the rules, for logs: equal rules give equal digests."""
    text = json.dumps(rules_document(rules), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
