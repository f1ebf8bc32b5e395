"""`usage-stream demo` without a stack: what it imports, its namespace, what it draws.

The demo against the real stack (headless run, alerts, logs, Ctrl-C) is in
tests/integration/test_demo.py.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from rich.console import Console

from processor.demo import DEMO_TENANT, Namespace
from processor.demo_board import DemoInfo, Published, Snapshot, parse_metrics, render, summary_line
from processor.settings import Settings
from processor.topics import owned_topics

REPO = Path(__file__).resolve().parents[2]
OUR_PACKAGES = {"processor", "schemas", "usage_client"}
DEMO_MODULES = ("processor/demo.py", "processor/demo_board.py")


def _runtime_closure() -> set[str]:
    """Every distribution a plain ``pip install usage-stream`` brings (no extras)."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("usage-stream", frozenset())]
    while todo:
        name, extras = todo.pop()
        for raw in metadata.requires(name) or []:
            req = Requirement(raw)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            key = canonicalize_name(req.name)
            if key not in seen:
                seen.add(key)
                todo.append((req.name, frozenset(req.extras)))
    return seen


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    """Top-level module -> the distributions that provide it (stdlib and ours left out)."""
    provided = metadata.packages_distributions()
    out: dict[str, set[str]] = {}
    for module in modules:
        if module in sys.stdlib_module_names or module in OUR_PACKAGES or module.startswith("_"):
            continue
        out[module] = {canonicalize_name(d) for d in provided.get(module, [])}
    return out


def test_the_demo_imports_only_what_its_runtime_dependencies_declare() -> None:
    direct = {
        canonicalize_name(Requirement(r).name)
        for r in metadata.requires("usage-stream") or []
        if "extra ==" not in r
    }
    for path in DEMO_MODULES:
        tree = ast.parse((REPO / path).read_text())
        roots = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        }
        for module, dists in _distributions(roots).items():
            assert dists & direct, f"{path} imports {module} ({dists or 'unknown'}): not declared"


# Runs in a fresh interpreter where the modules of every distribution a plain install
# would not bring raise ModuleNotFoundError, as they would there (libraries' optional
# imports, such as redis-py's of cryptography, fall back as they would there too).
_AS_IF_PLAIN = """
import importlib.abc, sys
blocked = set(sys.argv[1:])
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
import processor.cli, processor.demo, processor.demo_board
processor.cli.main(["demo", "--help"])
"""


def test_the_demo_command_loads_with_only_a_plain_install() -> None:
    closure = _runtime_closure()
    every = {m for m in metadata.packages_distributions() if m.isidentifier()}
    extra_only = sorted(m for m, d in _distributions(every).items() if d and not d & closure)
    assert "httpx" in extra_only  # the dev tools are there to be hidden
    run = subprocess.run(
        [sys.executable, "-c", _AS_IF_PLAIN, *extra_only],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 0 and "--headless" in run.stdout, run.stderr


def test_a_namespace_renames_everything_the_worker_writes() -> None:
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    ns = Namespace.new()
    demo = ns.apply(base)
    assert ns.name.startswith("demo-") and ns.name != Namespace.new().name
    assert demo.key_prefix == ns.name and demo.app_id.endswith(ns.name)
    assert all(t.startswith(f"{ns.name}.") for t in owned_topics(demo))
    assert demo.api_key_tenants() == {ns.api_key: DEMO_TENANT}
    assert demo.kafka_bootstrap == base.kafka_bootstrap and demo.log_format == base.log_format


METRICS = """\
# HELP usage_entries_total Entries by outcome.
# TYPE usage_entries_total counter
usage_entries_total{kind="tokens",outcome="accepted"} 120.0
usage_entries_total{kind="tool",outcome="accepted"} 30.0
usage_entries_total{kind="tokens",outcome="duplicate"} 4.0
usage_entries_total{kind="unknown",outcome="rejected"} 3.0
# HELP usage_dead_letters_total Dead letters.
# TYPE usage_dead_letters_total counter
usage_dead_letters_total{reason="json"} 2.0
usage_dead_letters_total{reason="schema"} 1.0
usage_dead_letters_total{reason="too_large"} 0.0
"""


def test_metrics_are_read_as_integers_by_outcome_and_reason() -> None:
    outcomes, dead = parse_metrics(METRICS)
    assert outcomes == {"accepted": 150, "duplicate": 4, "rejected": 3}
    assert dead == {"json": 2, "schema": 1}
    assert all(type(v) is int for v in [*outcomes.values(), *dead.values()])


def _snapshot() -> Snapshot:
    outcomes, dead = parse_metrics(METRICS)
    return Snapshot(
        elapsed=12.0,
        published=Published(entries=160, resent=5, bad=3),
        in_rate=1000.0,
        applied_rate=990.0,
        lag=7,
        outcomes=outcomes,
        dead_letters=dead,
        runs=[
            {
                "runId": "demo-1-runaway-1",
                "agentName": "planner",
                "userId": "demo-1-runaway-owner",
                "entryCount": 40,
                "tokensIncludingSubAgents": {"total": 101234},
                "costUsd": "0.01",
                "costIncludingSubAgentsUsd": "0.123456789",
                "toolStats": {"successfulCalls": 3, "failedCalls": 1},
            }
        ],
        users_month=[("demo-1-big-spender", "101.5")],
        users_today=[("demo-1-big-spender", "101.5")],
        alerts_total=1,
        alerts=[
            {
                "rule": "user-daily-spend",
                "level": "critical",
                "subject": {"type": "user", "id": "demo-1-big-spender"},
                "metric": "costUsd",
                "observed": "101.5",
                "threshold": "100",
                "triggeredAt": 1_763_000_000_000,
            }
        ],
    )


def test_the_headless_line_carries_every_figure() -> None:
    line = summary_line(_snapshot())
    for part in (
        "in 1,000/s",
        "applied 990/s",
        "lag 7",
        "accepted 150",
        "duplicate 4",
        "rejected 3",
        "dead letters json=2 schema=1",
        "alerts 1",
        "top run demo-1-runaway-1 $0.12",
    ):
        assert part in line, part
    assert "\n" not in line


def test_the_dashboard_shows_figures_runs_users_alerts_and_urls() -> None:
    info = DemoInfo(
        tenant="demo",
        key_prefix="demo-1",
        api_url="http://127.0.0.1:6066",
        metrics_url="http://127.0.0.1:6066/metrics",
        key_file=".usage-stack/demo-api-key",
        log_file=".usage-stack/demo.log",
        rate=1000,
        users=20,
        seconds=60,
    )
    console = Console(record=True, width=200, color_system=None)
    console.print(render(_snapshot(), info))
    screen = console.export_text()
    for part in (
        "http://127.0.0.1:6066/v1/openapi.json",
        "http://127.0.0.1:6066/metrics",
        "1,000/s",
        "json=2 schema=1",
        "ids after demo-1-",
        "runaway-1",
        "101,234",
        "0.12",
        "big-spender",
        "101.50",
        "user-daily-spend",
        "$101.50 / $100.00",
    ):
        assert part in screen, part
    assert "demo-1-runaway-1" not in screen  # the namespace is said once, in the title
