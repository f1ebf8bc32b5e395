"""``usage-stream alerts check FILE``: validate an alert rules file as start-up would."""

from __future__ import annotations

import sys
from pathlib import Path

from processor.domain.alert_rules import AlertRule, AlertRulesError, load_rules, rule_digest
from schemas.common import format_usd


def describe_rule(rule: AlertRule) -> str:
    """One line: name, subject/window, metric, thresholds (and minCalls where it applies)."""
    thresholds = ", ".join(f"{level} {format_usd(t)}" for level, t in rule.levels)
    line = f"{rule.name}: {rule.subject}/{rule.window} {rule.metric} >= {thresholds}"
    if rule.metric == "toolFailureRate":
        line += f" (minCalls {rule.min_calls})"
    return line


def check_rules_file(path: Path) -> int:
    """Print each rule of ``path`` and return 0, or print why it is refused and return 1."""
    try:
        rules = load_rules(path)
    except AlertRulesError as exc:
        print(f"usage-stream alerts check: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: ok, {len(rules)} rule(s) replacing the defaults, digest {rule_digest(rules)}")
    for rule in rules:
        print(f"  {describe_rule(rule)}")
    return 0
