"""The client imports without Faust, the processor or httpx."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_import_does_not_pull_faust_or_processor() -> None:
    code = (
        "import json, sys, usage_client, usage_client.reader, usage_client.recorder;"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('faust', 'mode', 'processor', 'httpx', 'redis'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []
