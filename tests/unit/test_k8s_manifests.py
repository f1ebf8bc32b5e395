"""deploy/k8s as `kubectl kustomize` renders it agrees with processor/settings.py.

Ports, probes, scrape annotations and the Service follow the worker's configuration in the
rendered ConfigMap (with the metrics port apart from the API), every USAGE_* name is a real
setting, API keys come from a Secret, and shutdown fits the termination grace period.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from processor import consumer
from processor.settings import ENV_PREFIX, Settings
from tests.integration.harness import build_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
FIELDS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
#: measured SIGTERM-to-exit of a loaded worker, seconds (max of 7 runs, docs/decisions.md)
MEASURED_EXIT_MAX_S = 2.3


@cache
def rendered() -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        message = "kubectl is not installed (make install: the debian-tools target)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def one(kind: str) -> dict[str, Any]:
    found = [doc for doc in rendered() if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def worker_container() -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["worker"]
    container: dict[str, Any] = containers[0]
    return container


def configured() -> Settings:
    """The settings a worker of these manifests runs with (secrets aside)."""
    data = one("ConfigMap")["data"]
    return build_settings(**{k.removeprefix(ENV_PREFIX).lower(): v for k, v in data.items()})


def port_number(port: int | str) -> int:
    """A probe's or policy's port, named ports resolved against the container's."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in worker_container()["ports"]}
    return int(by_name[port])


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def selects_the_workers(selector: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= pod_labels().items()


def test_every_usage_variable_is_a_setting_with_a_valid_value() -> None:
    env_names = set(one("ConfigMap")["data"]) | {e["name"] for e in worker_container()["env"]}
    usage = {name for name in env_names if name.startswith(ENV_PREFIX)}
    assert usage, "no USAGE_* variable at all"
    assert usage <= FIELDS, f"not settings: {sorted(usage - FIELDS)}"
    assert env_names == usage, f"not USAGE_* variables: {sorted(env_names - usage)}"
    configured()  # values parse as the worker would parse them


def test_the_workers_read_the_rendered_config_map() -> None:
    refs = [e["configMapRef"]["name"] for e in worker_container()["envFrom"] if "configMapRef" in e]
    # the generator's name carries a content hash: a config change rolls the workers
    assert refs == [one("ConfigMap")["metadata"]["name"]]


def test_api_keys_and_other_secrets_come_from_a_secret_only() -> None:
    data = one("ConfigMap")["data"]
    secret_settings = {
        ENV_PREFIX + name.upper()
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    assert "USAGE_API_KEYS" in secret_settings
    assert not secret_settings & set(data), "a secret setting in the ConfigMap"
    env = {e["name"]: e for e in worker_container()["env"]}
    ref = env["USAGE_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "USAGE_API_KEYS"
    assert ref.get("optional") is not True  # no Secret: no pod, never an open API
    # the other secret settings, as keys of the same Secret
    secret_refs = [e["secretRef"] for e in worker_container()["envFrom"] if "secretRef" in e]
    assert [r["name"] for r in secret_refs] == [ref["name"]]
    assert not [doc for doc in rendered() if doc["kind"] == "Secret"]  # no key in the repo


def test_container_ports_are_the_configured_api_and_metrics_ports() -> None:
    settings = configured()
    assert settings.operations_apart, "the manifests keep /metrics off the API port"
    assert settings.api_host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in worker_container()["ports"]}
    assert ports == {"http": settings.api_port, "metrics": settings.metrics_port}


def test_probes_hit_health_and_readiness_on_the_metrics_port() -> None:
    container = worker_container()
    metrics_port = configured().operations_port
    expected = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(get["port"]) == metrics_port, probe


def test_scrape_annotations_point_at_the_metrics_port() -> None:
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == configured().metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_service_exposes_the_api_port_only() -> None:
    service = one("Service")
    assert selects_the_workers(service["spec"]["selector"])
    targets = [port_number(p["targetPort"]) for p in service["spec"]["ports"]]
    assert targets == [configured().api_port]


def test_several_replicas_and_a_disruption_budget() -> None:
    deployment = one("Deployment")
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    assert replicas <= configured().topic_partitions, "workers past the partitions stay idle"
    assert selects_the_workers(deployment["spec"]["selector"]["matchLabels"])
    pdb = one("PodDisruptionBudget")
    assert selects_the_workers(pdb["spec"]["selector"]["matchLabels"])
    budget = pdb["spec"]
    if "maxUnavailable" in budget:
        assert 1 <= budget["maxUnavailable"] < replicas
    else:
        assert 1 <= budget["minAvailable"] < replicas


def test_resource_requests_are_set() -> None:
    requests = worker_container()["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests)


def test_shutdown_fits_the_termination_grace_period() -> None:
    spec = one("Deployment")["spec"]["template"]["spec"]
    command = worker_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    # a stuck batch is given up after the drain cap; everything else took the measured time
    needed = pre_stop + consumer._STOP_DRAIN_S + MEASURED_EXIT_MAX_S
    assert spec["terminationGracePeriodSeconds"] > needed


def test_a_read_only_root_has_a_writable_tmp() -> None:
    container = worker_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Faust's data directory is a tempfile.mkdtemp() directory (processor/app.py)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_the_network_policy_keeps_the_metrics_port_internal() -> None:
    policy = one("NetworkPolicy")["spec"]
    assert selects_the_workers(policy["podSelector"]["matchLabels"])
    settings = configured()
    open_ports = {
        port_number(p["port"]) for rule in policy["ingress"] if not rule.get("from")
        for p in rule["ports"]
    }  # fmt: skip
    restricted = {
        port_number(p["port"]) for rule in policy["ingress"] if rule.get("from")
        for p in rule["ports"]
    }  # fmt: skip
    assert open_ports == {settings.api_port}
    assert restricted == {settings.metrics_port}
