"""deploy/prometheus: the alerting rules pass promtool's unit tests (series that fire each
rule and series that do not), every rule is tested both ways and has a runbook line, and
the rules, the scrape config and docker-compose.yml agree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.observability import (
    PROMETHEUS_DIR,
    ROOT,
    debian_binary,
    exported_metric_names,
    metric_names_in,
)

RULES = PROMETHEUS_DIR / "rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "rules.test.yml"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [debian_binary("promtool"), *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _alerting_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for group in doc["groups"] for r in group["rules"] if "alert" in r]


def test_promtool_unit_tests_of_the_alerting_rules_pass() -> None:
    result = _run("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_checks_the_config_and_its_rules() -> None:
    result = _run("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # the config loads rules.yml (not an empty glob) with every rule in it
    assert f"SUCCESS: {len(_alerting_rules())} rules found" in result.stdout + result.stderr


def test_every_rule_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {r["alert"] for r in _alerting_rules()}
    assert len(names) >= 8
    assert names - fires == set(), "rules no test fires"
    assert names - quiet == set(), "rules no test shows staying quiet"
    assert (fires | quiet) - names == set(), "tests of rules that do not exist"


def test_every_rule_has_severity_annotations_and_a_readme_runbook_line() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Prometheus alerts")
    section = readme[start : readme.find("\n## ", start)]
    for rule in _alerting_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        assert name in rule["annotations"]["runbook"]
        # one line of the runbook per rule, naming it in bold
        assert re.search(rf"^- \*\*`{name}`\*\*", section, re.M), f"README runbook line of {name}"


def test_rules_use_exported_metrics_and_the_scrape_job_name() -> None:
    exported = exported_metric_names()
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    for rule in _alerting_rules():
        expr = rule["expr"]
        names = metric_names_in(expr)
        assert names, rule["alert"]
        assert names <= exported | {"up"}, (rule["alert"], names - exported)
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs, (rule["alert"], job)
    assert any('up{job="usage-stream"}' in r["expr"] for r in _alerting_rules())


def test_compose_mounts_the_rules_next_to_the_config() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = [m.split(":")[:2] for m in compose["services"]["prometheus"]["volumes"]]
    where = {src: dst for src, dst in mounts}
    config_dir = Path(where["./deploy/prometheus/prometheus.yml"]).parent
    assert where["./deploy/prometheus/rules.yml"] == str(config_dir / RULES.name)
