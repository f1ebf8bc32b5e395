"""Redis from Debian's ``redis-server`` package, on a loopback port, AOF persistence on.

The one way this project starts a redis-server: the local stack, and the tests that need
a server of their own (without persistence, as a replica, with TLS) through the keyword
arguments of ``render_redis_conf``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from processor.stack.ports import LOOPBACK
from processor.stack.process import StackError, log_tail, spawn

REDIS_BINARY = "redis-server"
APT_PACKAGE = "redis-server"


@dataclass(frozen=True)
class RedisLayout:
    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "redis.conf"

    @property
    def log(self) -> Path:
        return self.root / "redis.log"

    @property
    def stdout_log(self) -> Path:
        return self.root / "redis.out"

    @property
    def pidfile(self) -> Path:
        return self.root / "redis.pid"

    def tail(self, lines: int = 40) -> str:
        return (
            f"--- {self.stdout_log} ---\n{log_tail(self.stdout_log, lines)}\n"
            f"--- {self.log} ---\n{log_tail(self.log, lines)}"
        )


def find_redis_server() -> str | None:
    found = shutil.which(REDIS_BINARY)
    if found:
        return found
    # Debian installs it in /usr/bin, but a non-login PATH may miss /usr/sbin-style dirs
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(
        ["apt-get", *args], capture_output=True, text=True, check=False, env=env, timeout=900
    )


def install_redis() -> str:
    """Path of ``redis-server``; installs the Debian package when missing and we are root."""
    found = find_redis_server()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError(
            "redis-server is not installed; install it (Debian/Ubuntu: "
            "sudo apt-get install -y redis-server) and run again"
        )
    result = _apt_get("install", "-y", "--no-install-recommends", APT_PACKAGE)
    if result.returncode != 0:
        update = _apt_get("update")
        if update.returncode != 0:
            raise StackError("apt-get update failed:\n" + update.stderr.strip()[-2000:])
        result = _apt_get("install", "-y", "--no-install-recommends", APT_PACKAGE)
        if result.returncode != 0:
            raise StackError(
                "apt-get install -y redis-server failed:\n" + result.stderr.strip()[-2000:]
            )
    found = find_redis_server()
    if found is None:
        raise StackError("apt-get installed redis-server but the binary is not on PATH")
    return found


def render_redis_conf(
    layout: RedisLayout,
    port: int,
    host: str = LOOPBACK,
    *,
    appendonly: bool = True,
    snapshots: bool = True,
    extra: Sequence[str] = (),
) -> str:
    """Configuration a user would run with: loopback only, AOF every second, RDB kept.

    The keyword arguments are for tests' own servers: ``appendonly``/``snapshots`` off
    for a throw-away server, ``extra`` directives (``replicaof``, TLS) appended.
    """
    return "\n".join(
        [
            "# written by usage-stream's local stack; regenerated on every start",
            f"bind {host}",
            f"port {port}",
            "protected-mode yes",
            "daemonize no",
            f"pidfile {layout.pidfile}",
            f"logfile {layout.log}",
            "loglevel notice",
            f"dir {layout.data_dir}",
            f"appendonly {'yes' if appendonly else 'no'}",
            "appendfsync everysec",
            'appendfilename "appendonly.aof"',
            "save 3600 1 300 100 60 10000" if snapshots else 'save ""',
            "databases 16",
            "maxclients 10000",
            *extra,
            "",
        ]
    )


def write_config(
    layout: RedisLayout,
    port: int,
    *,
    appendonly: bool = True,
    snapshots: bool = True,
    extra: Sequence[str] = (),
) -> None:
    """``render_redis_conf`` into the layout's config file, its data dir created."""
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    text = render_redis_conf(layout, port, appendonly=appendonly, snapshots=snapshots, extra=extra)
    layout.config.write_text(text)


def argv(binary: str, layout: RedisLayout) -> list[str]:
    return [binary, str(layout.config)]


def launch(binary: str, layout: RedisLayout) -> subprocess.Popen[bytes]:
    """Start redis-server on the layout's config (``write_config`` first), detached, its
    stdout in the layout's ``redis.out``; the caller waits for ``ping``."""
    return spawn(argv(binary, layout), log_file=layout.stdout_log, cwd=layout.root)


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"+PONG")
