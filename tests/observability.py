"""Helpers for the tests of deploy/prometheus and deploy/grafana: the metric names the
worker exports, the metric names a PromQL expression uses, the dashboard's queries with
Grafana's variables substituted, and the Debian Prometheus binaries."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from processor.metrics import UsageMetrics

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "usage-stream.json"

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def debian_binary(name: str) -> str:
    """``promtool`` or ``prometheus`` (Debian's prometheus package, `make install`).

    Missing: a skip on a developer's machine, a failure under CI.
    """
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not os.access(path, os.X_OK):
        message = f"{name} not found (Debian package prometheus; `make install` installs it)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def documented_names() -> set[str]:
    """Every usage_* metric as its ``# TYPE`` line names it (counters with ``_total``)."""
    names: set[str] = set()
    for family in UsageMetrics(CollectorRegistry()).registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def exported_metric_names() -> set[str]:
    """Every sample name a scrape of the usage_* metrics can hold."""
    names: set[str] = set()
    for family in UsageMetrics(CollectorRegistry()).registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def metric_names_in(expr: str) -> set[str]:
    """The usage_* metric names of a PromQL expression, and ``up`` when it selects it."""
    code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values are not names
    names = set(re.findall(r"\busage_[a-z0-9_]+\b", code))
    if re.search(r"\bup\s*\{", code):
        names.add("up")
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title / refId, expr) of every target, rows' nested panels included."""
    for panel in dashboard["panels"]:
        for nested in [panel, *panel.get("panels", [])]:
            for target in nested.get("targets", []):
                yield f"{nested['title']} / {target['refId']}", target["expr"]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables (``$name``, ``${name}``) replaced by ``values``, as Grafana
    sends them; a variable without a value is a KeyError."""

    def value(match: re.Match[str]) -> str:
        return values[match.group(1) or match.group(2)]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)
