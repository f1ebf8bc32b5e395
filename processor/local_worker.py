"""Run a worker as a child process (for `usage-stream demo` and `bench`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from processor.settings import ENV_PREFIX, Settings, settings_env


class WorkerStartError(Exception):
    pass


class LocalWorker:
    """A worker child process logging to ``log_path`` (appended).

    ``own_session=True`` (the bench) detaches it from the terminal's signals: only
    :meth:`stop` ends it. ``own_session=False`` (the demo) keeps it in the parent's process
    group, so Ctrl-C (SIGINT to the group) reaches it at once and nothing outlives the
    parent's group; the parent still waits for it in :meth:`stop`.
    """

    def __init__(self, settings: Settings, log_path: Path, *, own_session: bool = True) -> None:
        self.settings = settings
        self.log_path = log_path
        self.own_session = own_session
        self.url = f"http://127.0.0.1:{settings.api_port}"
        #: /metrics, /healthz and /readyz: the API's port unless USAGE_METRICS_PORT is set
        self.ops_url = f"http://127.0.0.1:{settings.operations_port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
        env.update(settings_env(self.settings))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "processor.cli", "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=self.own_session,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def exit_code(self) -> int | None:
        """The worker's exit code once it has exited, else None (also before start)."""
        return self._proc.poll() if self._proc is not None else None

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if self.own_session:
                os.killpg(proc.pid, sig)  # it leads its own group
            else:
                os.kill(proc.pid, sig)  # its group is ours
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL now (a second Ctrl-C: stop waiting for a clean stop)."""
        self._signal(signal.SIGKILL)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise WorkerStartError(f"worker exited early; see {self.log_path}\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.ops_url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise WorkerStartError(f"worker not ready within {timeout:.0f}s\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
