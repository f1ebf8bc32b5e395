"""Build helpers for the TypeScript client under ``clients/typescript`` (used by its tests).

``ensure_built()`` runs ``npm ci`` when ``node_modules`` is missing or older than
``package-lock.json``, and ``npm run build`` (which also checks that the generated types
match ``schemas/json/usage-entry.schema.json``) when ``dist`` is older than any source.
A file lock keeps concurrent pytest processes from building at the same time. Node.js and
npm are required: without them the tests fail (they are never silently skipped).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TS_DIR = REPO_ROOT / "clients" / "typescript"
DIST = TS_DIR / "dist"
_BUILD_STAMP = DIST / ".build-stamp"
_SOURCES = (
    "src/**/*.ts",
    "test/**/*.ts",
    "scripts/**/*",
    "tsconfig.json",
    "package.json",
    "package-lock.json",
)
_SCHEMA = REPO_ROOT / "schemas" / "json" / "usage-entry.schema.json"


def node_tools() -> tuple[str, str]:
    """Paths of ``node`` and ``npm``; fails the test when either is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail(
            "Node.js (>= 18) and npm are needed for the TypeScript client tests "
            f"({TS_DIR.relative_to(REPO_ROOT)}); install them or deselect these tests",
            pytrace=False,
        )
    return node, npm


def run(cmd: list[str], *, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run ``cmd`` in the package directory; fail the test with its output on error."""
    proc = subprocess.run(
        cmd,
        cwd=TS_DIR,
        env={**os.environ, "npm_config_update_notifier": "false", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(cmd)}` exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-20000:]}\n--- stderr ---\n{proc.stderr[-10000:]}",
            pytrace=False,
        )
    return proc.stdout


@contextmanager
def build_lock() -> Iterator[None]:
    """Exclusive across processes: one build (or ``npm test``) at a time."""
    path = Path(tempfile.gettempdir()) / f"usage-stream-ts-build-{os.getuid()}.lock"
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _newest_source_mtime() -> float:
    newest = _SCHEMA.stat().st_mtime
    for pattern in _SOURCES:
        for path in TS_DIR.glob(pattern):
            if path.is_file():
                newest = max(newest, path.stat().st_mtime)
    return newest


def ensure_installed() -> None:
    _node, npm = node_tools()
    marker = TS_DIR / "node_modules" / ".package-lock.json"
    lock = TS_DIR / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        run([npm, "ci", "--no-audit", "--no-fund"])


def ensure_built() -> None:
    """``npm ci`` and ``npm run build`` when needed (see the module docstring)."""
    _node, npm = node_tools()
    with build_lock():
        ensure_installed()
        if not _BUILD_STAMP.exists() or _BUILD_STAMP.stat().st_mtime < _newest_source_mtime():
            run([npm, "run", "build"])
            _BUILD_STAMP.touch()
