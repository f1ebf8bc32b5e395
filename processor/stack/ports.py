"""Free loopback ports for the local stack."""

from __future__ import annotations

import socket
from collections.abc import Iterable

LOOPBACK = "127.0.0.1"


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on ``host:port`` and we may bind it."""
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as the servers bind: a port whose old connections sit in TIME_WAIT after a
        # restart is free for them, and a restarted Kafka must come back where it was
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    # A bound-but-not-listening socket elsewhere would have failed bind; a listener on
    # 0.0.0.0 with SO_REUSEADDR semantics is caught by a connect probe.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) != 0


def ephemeral_port(host: str = LOOPBACK) -> int:
    """A port the kernel says is free right now (it may be taken again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pick_port(
    preferred: int | None = None, *, host: str = LOOPBACK, exclude: Iterable[int] = ()
) -> int:
    """``preferred`` when it is free, else any free port; never one in ``exclude``."""
    taken = set(exclude)
    if preferred is not None and preferred not in taken and port_is_free(preferred, host):
        return preferred
    for _ in range(100):
        port = ephemeral_port(host)
        if port not in taken and port_is_free(port, host):
            return port
    raise OSError(f"no free TCP port on {host}")
