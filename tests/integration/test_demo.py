"""`usage-stream demo` as a user runs it, against the real stack.

The demo is a separate process (the console script), pointed at the session's Kafka and
Redis with ``USAGE_KAFKA_BOOTSTRAP`` / ``USAGE_REDIS_URL`` and at a stack directory of the
test's own, which holds the demo's log and API key file.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest
import redis

from processor.settings import ENV_PREFIX
from processor.stack import StackInfo

SUMMARY = re.compile(r"^\[\s*\d+s\] in ")
NAMESPACE = re.compile(r"^namespace (demo-[0-9a-f]{8}):", re.M)
ALERTS = re.compile(r"^alerts received: (\d+)(.*)$", re.M)

pytestmark = pytest.mark.timeout(300)


def _demo_argv(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("usage-stream")
    if script.exists():
        return [str(script), "demo", *args]
    found = shutil.which("usage-stream")
    return (
        [found, "demo", *args] if found else [sys.executable, "-m", "processor.cli", "demo", *args]
    )


def _env(stack: StackInfo, stack_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env.update(
        USAGE_KAFKA_BOOTSTRAP=stack.kafka_bootstrap,
        USAGE_REDIS_URL=stack.redis_url,
        USAGE_STACK_DIR=str(stack_dir),
        USAGE_LOG_FORMAT="json",
        USAGE_LOG_LEVEL="info",
    )
    return env


def test_headless_demo_alerts_and_logs_neither_key_nor_payload(
    stack: StackInfo, tmp_path: Path
) -> None:
    """20 s at 1,000 entries/s: the runaway agent's tree passes 100,000 tokens and the big
    spender $100 after about 6,000 fleet entries (some 6 s; at the default 200/s it takes
    30 s), so both rules have fired, warning and critical, well before the end."""
    stack_dir = tmp_path / "stack"
    run = subprocess.run(
        _demo_argv("--headless", "--seconds", "20", "--rate", "1000"),
        env=_env(stack, stack_dir),
        cwd=tmp_path,  # no .env file of the repository's
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    summaries = [line for line in run.stdout.splitlines() if SUMMARY.match(line)]
    assert len(summaries) >= 15, out  # one a second
    last = summaries[-1]
    assert re.search(r"lag 0 .*accepted [1-9]\d{4,} duplicate [1-9]", last), last
    # the fleet's bad input (one round in 20) reached the DLQ
    assert re.search(r"rejected [1-9]\d* \| dead letters \w+=[1-9]", last), last

    received = ALERTS.search(run.stdout)
    assert received and int(received.group(1)) >= 4, out
    for rule in (
        "run-token-budget critical",
        "run-token-budget warning",
        "user-daily-spend critical",
        "user-daily-spend warning",
    ):
        assert rule in received.group(2), out

    key = (stack_dir / "demo-api-key").read_text().strip()
    assert len(key) >= 20
    log_text = (stack_dir / "demo.log").read_text()
    assert key not in log_text and key not in out
    records = [json.loads(line) for line in log_text.splitlines()]  # every line is JSON
    assert len(records) > 20
    assert {"time", "level", "logger", "message"} <= set(records[0])
    loggers = {r["logger"] for r in records}
    assert {"faust.worker", "processor.consumer"} <= loggers  # Faust's records too
    for r in records:
        text = r["message"] + r.get("exception", "")
        for payload in ('"kind":', '"tokens":', '"runId":', '"prompt":', "tokenz"):
            assert payload not in text, r

    # the demo removed its topics and Redis keys on the way out
    ns = NAMESPACE.search(run.stdout)
    assert ns, out
    client = redis.Redis.from_url(stack.redis_url)
    try:
        assert not list(client.scan_iter(match=f"{ns.group(1)}:*", count=1000))
    finally:
        client.close()


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def _session_members(sid: int) -> list[str]:
    """Processes of session ``sid``, from /proc (pid, state and command)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        _, _, rest = raw.rpartition(")")
        fields = rest.split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid:
            found.append(f"{stat.parent.name} {fields[0]} {raw[: raw.rfind(')') + 1]}")
    return found


def test_sigint_to_the_demo_process_group_leaves_no_process_behind(
    stack: StackInfo, tmp_path: Path
) -> None:
    """What Ctrl-C in a terminal does: SIGINT to the whole foreground process group."""
    demo = subprocess.Popen(
        _demo_argv("--headless", "--seconds", "60"),
        env=_env(stack, tmp_path / "stack"),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own session and group, as a shell's job would be
    )
    assert demo.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(demo.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while sum(1 for line in seen if SUMMARY.match(line)) < 2:
            assert demo.poll() is None, "".join(seen)
            assert time.monotonic() < deadline, "no summary lines:\n" + "".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
        worker = re.search(r"worker ready \(pid (\d+)\)", "".join(seen))
        assert worker, "".join(seen)
        members = _session_members(demo.pid)
        assert any(m.startswith(f"{worker.group(1)} ") for m in members), members

        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=60) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    reader.join(timeout=10)  # the pipe closed with the demo: the rest is queued
    while not lines.empty():
        seen.append(lines.get_nowait())
    output = "".join(seen)
    # the demo waited for its worker: nothing of its session is left, right away
    assert _session_members(demo.pid) == [], output
    assert not Path(f"/proc/{worker.group(1)}").exists(), output
    assert "demo stopped" in output, output
