"""Detached child processes: start, identify (pid reuse safe), stop, read logs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """The local stack could not be installed, started, or stopped; the message says why."""


@dataclass(frozen=True)
class ProcessRecord:
    """What we need to recognise a process we started: pid, kernel start time, a token."""

    pid: int
    start_ticks: int
    cmd_token: str

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "start_ticks": self.start_ticks, "cmd_token": self.cmd_token}

    @classmethod
    def from_json(cls, raw: object) -> ProcessRecord:
        if not isinstance(raw, dict):
            raise ValueError("process record must be an object")
        return cls(int(raw["pid"]), int(raw["start_ticks"]), str(raw["cmd_token"]))


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    _, _, rest = raw.rpartition(")")
    return rest.split()


def start_ticks(pid: int) -> int | None:
    """Kernel start time of ``pid`` in clock ticks (field 22 of /proc/<pid>/stat)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def is_running(record: ProcessRecord) -> bool:
    """True when ``record`` still names the very process we started and it is not a zombie."""
    fields = _stat_fields(record.pid)
    if fields is None or fields[0] in {"Z", "X"}:
        return False
    if start_ticks(record.pid) != record.start_ticks:
        return False
    return record.cmd_token in cmdline(record.pid)


def has_exited(record: ProcessRecord) -> bool:
    """True once the recorded process is gone or a zombie (its cmdline empties earlier)."""
    fields = _stat_fields(record.pid)
    if fields is None or fields[0] in {"Z", "X"}:
        return True
    return start_ticks(record.pid) != record.start_ticks


def spawn(
    argv: Sequence[str], *, log_file: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (survives us, gets no terminal signals)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        try:
            return subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise StackError(f"cannot start {argv[0]}: {exc}") from exc


def record_for(proc: subprocess.Popen[bytes], cmd_token: str) -> ProcessRecord:
    ticks = start_ticks(proc.pid)
    if ticks is None:
        code = proc.poll()
        raise StackError(f"{proc.args!r} exited at once (exit code {code})")
    return ProcessRecord(proc.pid, ticks, cmd_token)


def stop(
    record: ProcessRecord,
    *,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> bool:
    """SIGTERM the process we started (and its group), SIGKILL after ``timeout``.

    Returns False when the recorded process is no longer ours (already gone, or the pid
    now belongs to somebody else) so nothing was signalled.
    """
    if not is_running(record):
        _reap(proc)
        return False
    _signal(record, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(proc)
        if has_exited(record):
            _reap(proc)
            return True
        time.sleep(0.1)
    _signal(record, signal.SIGKILL)
    kill_deadline = time.monotonic() + 10.0
    while not has_exited(record) and time.monotonic() < kill_deadline:
        _reap(proc)
        time.sleep(0.05)
    _reap(proc)
    return True


def _signal(record: ProcessRecord, sig: signal.Signals) -> None:
    try:
        # we started it with start_new_session, so it leads its own process group
        if os.getpgid(record.pid) == record.pid:
            os.killpg(record.pid, sig)
        else:
            os.kill(record.pid, sig)
    except ProcessLookupError:
        pass


def _reap(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.poll()


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    tail = data.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log {path} is empty)"
