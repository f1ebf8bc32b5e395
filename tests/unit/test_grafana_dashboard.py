"""deploy/grafana: the dashboard's panels query exported metrics through the provisioned
data source, and cover what the dashboard promises. Whether each query parses and returns
data is tests/integration/test_dashboard_prometheus.py's job (a real Prometheus)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.observability import (
    DASHBOARD,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    dashboard_queries,
    exported_metric_names,
    metric_names_in,
    substitute,
)

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_every_panel_uses_the_data_source_variable_and_exported_metrics() -> None:
    dashboard = _dashboard()
    exported = exported_metric_names()
    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 10
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS, panel["title"]
            names = metric_names_in(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= exported | {"up"}, (panel["title"], names - exported)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_the_panels_cover_what_the_dashboard_promises() -> None:
    exprs = [expr for _, expr in dashboard_queries(_dashboard())]
    by = [(metric_names_in(e), e.replace(" ", "")) for e in exprs]

    def some(metric: str, grouping: str) -> bool:
        return any(metric in names and grouping in flat for names, flat in by)

    assert some("usage_tokens_total", "by(model,provider)")
    assert some("usage_cost_usd_total", "by(model,provider)")
    assert some("usage_entries_total", "by(outcome)")
    assert some("usage_entries_total", "by(instance)")  # ingest rate per worker
    assert some("usage_dead_letters_total", "by(reason)")
    assert some("usage_event_lag_seconds_bucket", "histogram_quantile(")
    assert some("usage_alerts_total", "by(rule,level)")
    assert some("usage_unpriced_tokens_total", "by(model)")
    assert some("usage_consumer_lag", "by(topic,partition)")
    assert some("usage_dependency_up", "usage_dependency_up{")


def test_variables_substitute_the_way_grafana_sends_them() -> None:
    values = {"job": "usage-stream", "instance": ".*", "__rate_interval": "1m", "__range": "5m"}
    out = substitute('rate(x{job=~"$job", i=~"${instance}"}[$__rate_interval])', values)
    assert out == 'rate(x{job=~"usage-stream", i=~".*"}[1m])'
    for _, expr in dashboard_queries(_dashboard()):
        assert "$" not in substitute(expr, values), expr  # only the variables the test knows
    with pytest.raises(KeyError):
        substitute("rate(x[$__interval])", values)


def test_provisioning_points_at_the_dashboard_and_the_data_source_it_defaults_to() -> None:
    provisioning = GRAFANA_DIR / "provisioning"
    dashboards = yaml.safe_load((provisioning / "dashboards" / "usage-stream.yaml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    default = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "DS_PROMETHEUS")[
        "current"
    ]
    assert default["value"] == source["uid"]
    assert default["text"] == source["name"]
    # the compose Prometheus' scrape interval, so that $__rate_interval spans 4 scrapes
    prometheus = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]
