"""docker-compose.yml, the Dockerfile and Prometheus agree with each other and with Settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from processor.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...] form
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_services() -> None:
    assert {"kafka", "redis", "worker", "prometheus"} <= set(_compose()["services"])


def test_every_usage_variable_is_a_setting() -> None:
    for name, service in _compose()["services"].items():
        unknown = {k for k in _environment(service) if k.startswith(ENV_PREFIX)} - FIELDS
        assert not unknown, f"service {name} sets unknown settings {unknown}"
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    in_dockerfile = set(re.findall(r"\b(USAGE_[A-Z0-9_]+)=", dockerfile))
    assert in_dockerfile <= FIELDS


def test_worker_points_at_the_compose_services() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    env = _environment(worker)
    assert env["USAGE_KAFKA_BOOTSTRAP"].split(":")[0] == "kafka"
    assert env["USAGE_REDIS_URL"].startswith("redis://redis:")
    assert env["USAGE_API_HOST"] == "0.0.0.0"
    assert (ROOT / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    assert worker["command"] == ["worker"]
    kafka_env = _environment(services["kafka"])
    assert f"//{env['USAGE_KAFKA_BOOTSTRAP']}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]


def test_prometheus_scrapes_the_worker_api_port() -> None:
    services = _compose()["services"]
    api_port = int(_environment(services["worker"])["USAGE_API_PORT"])
    mounts = services["prometheus"]["volumes"]
    assert any(m.startswith("./deploy/prometheus/prometheus.yml:") for m in mounts)
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = []
    for job in prom["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets += [(name, sd["port"]) for name in sd["names"]]
        for static in job.get("static_configs", []):
            targets += [tuple(t.rsplit(":", 1)) for t in static["targets"]]
    assert ("worker", api_port) in [(n, int(p)) for n, p in targets]
