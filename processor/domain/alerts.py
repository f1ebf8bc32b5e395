"""Alerts: which checks a user window carries into the batch step, the run rules as the
step reads them, and alert ids.

Pure. The batch step (apply_batch.lua) evaluates the checks on each window's totals and
each run tree's totals as they are after the batch (section 5b for run trees), and fires
each (rule, subject, window, level) at most once, with the marker, the alert record and
its outbox message written in the same atomic step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from processor.domain.alert_rules import AlertRule

#: metric codes the script knows: cost (pico), tokens, tool failure rate
METRIC_CODES = {"costUsd": "c", "tokens": "t", "toolFailureRate": "r"}
LEVELS = ("warning", "critical")


@lru_cache(maxsize=65536)
def alert_id(
    tenant: str, rule: str, subject_type: str, subject_id: str, kind: str, start: int, level: str
) -> str:
    """Deterministic: the same rule, subject, window and level give the same id.

    >>> alert_id("default", "r", "user", "alice", "day", 0, "warning")[:4]
    'alt_'
    """
    # SHA-1 because apply_batch.lua computes the ids of run-tree alerts with Redis'
    # redis.sha1hex: an id, not a secret
    h = hashlib.sha1()
    for part in ("alert", tenant, rule, subject_type, subject_id, kind, str(start), level):
        raw = part.encode()
        h.update(b"%d:" % len(raw))
        h.update(raw)
    return "alt_" + h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Check:
    """One level of one rule on one window, as the script reads it (positional)."""

    metric: str  # METRIC_CODES value
    level: str
    threshold: int  # pico-dollars, tokens, or the rate's numerator
    denominator: int  # the rate's denominator (1 otherwise)
    min_calls: int
    alert_id: str
    rule: str
    threshold_text: str
    metric_name: str

    def payload(self, marker_key: str, record_key: str) -> list[object]:
        return [
            self.metric,
            self.level,
            _lua_number(self.threshold),
            self.denominator,
            self.min_calls,
            self.alert_id,
            marker_key,
            record_key,
            self.rule,
            self.threshold_text,
            self.metric_name,
        ]


def _levels(rule: AlertRule) -> list[tuple[str, Decimal, int, int]]:
    """(level, threshold, numerator, denominator) of each level a rule has, warning
    first: a rate as an exact fraction, cost and tokens in the store's units."""
    out = []
    for level in LEVELS:
        value = rule.warning if level == "warning" else rule.critical
        if value is None:
            continue
        if rule.metric == "toolFailureRate":
            num, den = value.as_integer_ratio()
        else:
            units = rule.warning_units if level == "warning" else rule.critical_units
            assert units is not None
            num, den = units, 1
        out.append((level, value, num, den))
    return out


def user_checks(
    rules: Sequence[AlertRule], tenant: str, user: str, kind: str, start: int
) -> list[Check]:
    """The checks of a user's window of ``kind`` starting at ``start``, warning first."""
    out = []
    for rule in rules:
        if rule.subject != "user" or rule.window != kind:
            continue
        for level, value, num, den in _levels(rule):
            out.append(
                Check(
                    METRIC_CODES[rule.metric],
                    level,
                    num,
                    den,
                    rule.min_calls,
                    alert_id(tenant, rule.name, "user", user, kind, start, level),
                    rule.name,
                    _plain(value),
                    rule.metric,
                )
            )
    return sorted(out, key=lambda c: LEVELS.index(c.level))


def run_checks(rules: Sequence[AlertRule]) -> list[list[object]]:
    """The run rules as apply_batch.lua reads them (positional: metric code, level,
    threshold, the rate's denominator, minCalls, rule, threshold text, metric), each rule's
    warning first."""
    out: list[list[object]] = []
    for rule in rules:
        if rule.subject != "run":
            continue
        for level, value, num, den in _levels(rule):
            out.append(
                [
                    METRIC_CODES[rule.metric],
                    level,
                    _lua_number(num),
                    den,
                    rule.min_calls,
                    rule.name,
                    _plain(value),
                    rule.metric,
                ]
            )
    return out


def _plain(value: Decimal) -> str:
    """A threshold as a plain decimal string, never with an exponent.

    >>> _plain(Decimal("0.0000001")), _plain(Decimal("80"))
    ('0.0000001', '80')
    """
    return format(value, "f")


def _lua_number(v: int) -> int | str:
    return v if -(2**53) < v < 2**53 else str(v)
