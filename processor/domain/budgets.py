"""The budget check (CONTRACT §3.8): every rule that applies to a user's current windows
and to a run's tree, with what is observed, the level reached and what remains.

Pure: the caller reads the totals (user windows, the run tree's sums) and the clock.
Levels are reached as alerts fire: at or above a threshold (>=); a tool failure rate
only once the window holds ``minCalls`` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from processor.domain.alert_rules import AlertRule, failure_rate_reached
from schemas.common import format_usd

RATE_PLACES = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class Totals:
    """What a rule's metric is computed from, for one window or one run tree."""

    cost_pico: int = 0
    tokens: int = 0
    tool_ok: int = 0
    tool_failed: int = 0


@dataclass(frozen=True, slots=True)
class Budget:
    rule: AlertRule
    subject_type: str
    subject_id: str
    window_kind: str
    window_start: int | None
    window_end: int | None
    observed: Decimal
    level: str  # ok | warning | critical
    remaining: Decimal


def observed(rule: AlertRule, t: Totals) -> Decimal:
    """The rule's metric on ``t``: USD, tokens, or failed / total tool calls (6 places,
    half-even).

    >>> rule = AlertRule("r", "user", "day", "costUsd", None, Decimal("1"))
    >>> observed(rule, Totals(cost_pico=1_500_000_000_000))
    Decimal('1.5')
    """
    if rule.metric == "costUsd":
        return Decimal(t.cost_pico).scaleb(-12).normalize()
    if rule.metric == "tokens":
        return Decimal(t.tokens)
    calls = t.tool_ok + t.tool_failed
    if calls == 0:
        return Decimal(0)
    return (Decimal(t.tool_failed) / calls).quantize(RATE_PLACES, ROUND_HALF_EVEN).normalize()


def level_of(rule: AlertRule, t: Totals) -> str:
    """The highest level whose threshold the totals reach (exact comparisons).

    >>> rule = AlertRule("r", "user", "day", "tokens", Decimal("100"), Decimal("200"))
    >>> [level_of(rule, Totals(tokens=n)) for n in (99, 100, 250)]
    ['ok', 'warning', 'critical']
    """
    reached = "ok"
    value = t.cost_pico if rule.metric == "costUsd" else t.tokens
    for level, threshold, units in rule.level_units:
        if units is not None:
            hit = value >= units
        else:
            calls = t.tool_ok + t.tool_failed
            hit = calls >= rule.min_calls and failure_rate_reached(t.tool_failed, calls, threshold)
        if hit:
            reached = level
    return reached


def budget(
    rule: AlertRule,
    subject: tuple[str, str],
    window: tuple[str, int | None, int | None],
    totals: Totals,
) -> Budget:
    value = observed(rule, totals)
    limit = rule.critical if rule.critical is not None else rule.warning
    remaining = max(Decimal(0), (limit or Decimal(0)) - value)
    (subject_type, subject_id), (kind, start, end) = subject, window
    return Budget(
        rule,
        subject_type,
        subject_id,
        kind,
        start,
        end,
        value,
        level_of(rule, totals),
        remaining.normalize(),
    )


def exceeded(budgets: Sequence[Budget]) -> bool:
    return any(b.level == "critical" for b in budgets)


def plain(d: Decimal | None) -> str | None:
    """A decimal as a plain string (no exponent), or None.

    >>> plain(Decimal("1E+2")), plain(Decimal("0.50")), plain(None)
    ('100', '0.5', None)
    """
    # the one formatter of Decimal amounts (USD, tokens and rates read the same way)
    return None if d is None else format_usd(d)
