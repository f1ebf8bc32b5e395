"""The three distributions build as wheels, and the client's installs without the processor.

Builds usage-stream-schemas, usage-stream-client and usage-stream with ``pip wheel
--no-deps``, installs the first two into a fresh virtualenv (their own dependencies come
from the package registry) and checks that nothing of the processor's came with them: no
Faust, no Redis client, no uvloop. Then uses the installed packages outside the source
tree: builds a recorder and a reader (without connecting) and validates the example
vectors shipped in the schemas wheel. Needs no Kafka or Redis, only the registry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

import processor

ROOT = Path(__file__).resolve().parents[2]
VERSION = processor.__version__
#: Distributions of the processor's that a producer must not get with the client.
PROCESSOR_ONLY = {"faust-streaming", "redis", "hiredis", "uvloop", "mode-streaming", "usage-stream"}

_CHECK = """
import json, sys
from pathlib import Path
import schemas, usage_client
from schemas.entry import validate_entry_dict
from usage_client import UsageReader, UsageRecorder, HttpUsageRecorder

for name in ("schemas", "usage_client"):
    assert "site-packages" in sys.modules[name].__file__, sys.modules[name].__file__
rec = UsageRecorder("127.0.0.1:1", user_id="u-1", agent_name="planner")
run = rec.run()
http = HttpUsageRecorder("http://127.0.0.1:1", user_id="u-1")
reader = UsageReader("http://127.0.0.1:1")
examples = Path(schemas.__file__).parent / "examples"
valid = sorted((examples / "valid").glob("*.json"))
assert valid, examples
for path in valid:
    validate_entry_dict(json.loads(path.read_text()), now_ms=1_795_392_000_000)
codes = {}
for name, want in json.loads((examples / "expected.json").read_text()).items():
    try:
        schemas.parse_entry((examples / "invalid" / name).read_bytes(), now_ms=1_795_392_000_000)
    except schemas.EntryRejected as exc:
        codes[name] = (exc.code, exc.field) == (want["code"], want["field"])
    else:
        codes[name] = False
entry_schema = json.loads((examples.parent / "json" / "usage-entry.schema.json").read_text())
loaded = sorted(m.split(".")[0] for m in sys.modules)
print(json.dumps({
    "valid": len(valid), "invalid_as_expected": sum(codes.values()), "invalid": len(codes),
    "schema_title": entry_schema.get("title"), "run_id": run.run_id, "modules": loaded,
}))
"""


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


#: What each distribution's build needs, copied out of the tree first: setuptools builds in
#: the source directory, and its build/ and egg-info left inside schemas/ or usage_client/
#: would be linted, type-checked and imported as if they were sources.
_SOURCES = {
    "schemas": ["schemas"],
    "usage_client": ["usage_client"],
    "usage-stream": ["pyproject.toml", "README.md", "processor"],
}
_LEFT_OUT = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.pyc")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    out = tmp_path_factory.mktemp("wheels")
    for name, paths in _SOURCES.items():
        src = tmp_path_factory.mktemp("src") / name
        if paths == [name]:  # a package whose pyproject.toml lives in its own directory
            shutil.copytree(ROOT / name, src, ignore=_LEFT_OUT)
        else:
            src.mkdir()
            for rel in paths:
                if (ROOT / rel).is_dir():
                    shutil.copytree(ROOT / rel, src / rel, ignore=_LEFT_OUT)
                else:
                    shutil.copy2(ROOT / rel, src / rel)
        _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, src)
    found = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    yield found


def _metadata(wheel: Path) -> tuple[str, list[str]]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(name).decode())
    return meta["Version"], meta.get_all("Requires-Dist") or []


def _packages(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n.split("/")[0] for n in z.namelist() if not n.split("/")[0].endswith("-info")}


def test_the_wheels_hold_one_package_each_and_pin_each_other(wheels: dict[str, Path]) -> None:
    assert set(wheels) == {"usage_stream", "usage_stream_client", "usage_stream_schemas"}
    assert _packages(wheels["usage_stream_schemas"]) == {"schemas"}
    assert _packages(wheels["usage_stream_client"]) == {"usage_client"}
    assert _packages(wheels["usage_stream"]) == {"processor"}
    with zipfile.ZipFile(wheels["usage_stream_schemas"]) as z:
        names = set(z.namelist())
    assert "schemas/json/usage-entry.schema.json" in names
    assert "schemas/examples/expected.json" in names
    assert any(n.startswith("schemas/examples/invalid/") for n in names)
    for wheel in wheels.values():
        assert _metadata(wheel)[0] == VERSION
    processor_requires = _metadata(wheels["usage_stream"])[1]
    assert f"usage-stream-schemas=={VERSION}" in processor_requires
    assert f"usage-stream-client=={VERSION}" in processor_requires
    assert f"usage-stream-schemas=={VERSION}" in _metadata(wheels["usage_stream_client"])[1]


def test_the_client_installs_and_runs_without_faust_or_redis(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        wheels["usage_stream_schemas"],
        wheels["usage_stream_client"],
    )
    listed = json.loads(_run(python, "-m", "pip", "list", "--format=json"))
    installed = {p["name"].lower().replace("_", "-") for p in listed}
    assert {"usage-stream-client", "usage-stream-schemas", "aiokafka", "pydantic"} <= installed
    assert not installed & PROCESSOR_ONLY, installed & PROCESSOR_ONLY

    # run from an empty directory, so only the installed packages can be imported
    result = json.loads(_run(python, "-c", _CHECK, cwd=tmp_path))
    assert result["valid"] == len(list((ROOT / "schemas" / "examples" / "valid").glob("*.json")))
    assert result["invalid"] > 0
    assert result["invalid_as_expected"] == result["invalid"]
    assert result["schema_title"]
    assert len(result["run_id"]) == 36
    assert not {"faust", "mode", "redis", "processor"} & set(result["modules"])
