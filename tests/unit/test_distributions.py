"""The repository's three distributions are versioned together and pin each other exactly.

usage-stream (the root pyproject.toml) depends on usage-stream-schemas (schemas/) and
usage-stream-client (usage_client/), and the client on the schemas: one version number for
all three, so a release of one is a release of all and the pins can be `==`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import processor

ROOT = Path(__file__).resolve().parents[2]
PYPROJECTS = {
    "usage-stream": ROOT / "pyproject.toml",
    "usage-stream-schemas": ROOT / "schemas" / "pyproject.toml",
    "usage-stream-client": ROOT / "usage_client" / "pyproject.toml",
}
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")


def _project(name: str) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads(PYPROJECTS[name].read_text())["project"]
    return project


def _requirements(name: str) -> dict[str, str]:
    """Requirement name (normalized) -> its version specifier, of one distribution."""
    out: dict[str, str] = {}
    for req in _project(name)["dependencies"]:
        m = _REQUIREMENT.match(req.split(";")[0].strip())
        assert m, req
        out[re.sub(r"[-_.]+", "-", m.group(1)).lower().split("[")[0]] = m.group(2).strip()
    return out


def test_the_three_distributions_have_one_version() -> None:
    versions = {name: _project(name)["version"] for name in PYPROJECTS}
    assert {_project(name)["name"] for name in PYPROJECTS} == set(PYPROJECTS)
    assert len(set(versions.values())) == 1, versions
    assert processor.__version__ == versions["usage-stream"]


def test_each_distribution_pins_the_others_at_that_version() -> None:
    version = _project("usage-stream")["version"]
    root = _requirements("usage-stream")
    assert root["usage-stream-schemas"] == f"=={version}"
    assert root["usage-stream-client"] == f"=={version}"
    assert _requirements("usage-stream-client")["usage-stream-schemas"] == f"=={version}"


def test_the_client_and_schemas_need_no_faust_and_no_redis() -> None:
    client = set(_requirements("usage-stream-client"))
    schemas = set(_requirements("usage-stream-schemas"))
    assert client == {"usage-stream-schemas", "aiokafka", "pydantic"}
    assert schemas == {"pydantic"}


def test_each_package_is_in_exactly_one_distribution() -> None:
    root = tomllib.loads(PYPROJECTS["usage-stream"].read_text())["tool"]["setuptools"]
    assert root["packages"]["find"]["include"] == ["processor*"]
    for name, package in (
        ("usage-stream-schemas", "schemas"),
        ("usage-stream-client", "usage_client"),
    ):
        tool = tomllib.loads(PYPROJECTS[name].read_text())["tool"]["setuptools"]
        # the package is the pyproject's own directory, which keeps its place in the tree
        assert tool["packages"][0] == package
        assert all(p.startswith(f"{package}.") for p in tool["packages"][1:])
        assert tool["package-dir"] == {package: "."}
        assert PYPROJECTS[name].parent.name == package


def test_make_install_installs_all_three_and_reruns_when_any_changes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install -q -e \./schemas -e \./usage_client -e '\.\[dev\]'", makefile)
    stamp_rule = re.search(r"^DIST_PYPROJECTS := (.*)$", makefile, re.MULTILINE)
    assert stamp_rule
    assert set(stamp_rule.group(1).split()) == {
        str(p.relative_to(ROOT)) for p in PYPROJECTS.values()
    }
    assert re.search(r"^\$\(PIP_STAMP\): \$\(DIST_PYPROJECTS\)", makefile, re.MULTILINE)


def test_the_worker_image_installs_the_three_from_the_tree() -> None:
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    for directory in ("processor", "schemas", "usage_client"):
        assert f"COPY {directory} ./{directory}" in dockerfile
    assert "pip install ./schemas ./usage_client ." in dockerfile
