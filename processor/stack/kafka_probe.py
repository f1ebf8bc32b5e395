"""Whether a Kafka broker answers: one Metadata request over a plain socket.

No Kafka client library: the stack's readiness check must not depend on aiokafka's
start-up and retry behaviour, and a Metadata v4 request is understood by Kafka 1.0
through 4.x.
"""

from __future__ import annotations

import socket
import struct
import time

from processor.stack.kafka import NODE_ID


def _kafka_string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">h", len(raw)) + raw


def metadata_request(correlation_id: int, client_id: str = "usage-stream-stack") -> bytes:
    """A Metadata v4 request for no topics (supported by Kafka 1.0 through 4.x)."""
    header = struct.pack(">hhi", 3, 4, correlation_id) + _kafka_string(client_id)
    body = struct.pack(">i", 0) + struct.pack(">?", False)  # topics: [], no auto-create
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def parse_metadata_brokers(correlation_id: int, frame: bytes) -> list[tuple[int, str, int]]:
    """Brokers (node id, host, port) from a Metadata v4 response frame (without length)."""
    offset = 0

    def take(fmt: str) -> tuple[int, ...]:
        nonlocal offset
        values = struct.unpack_from(fmt, frame, offset)
        offset += struct.calcsize(fmt)
        return values

    def take_string() -> str:
        nonlocal offset
        (length,) = take(">h")
        if length < 0:
            return ""
        value = frame[offset : offset + length].decode("utf-8")
        offset += length
        return value

    (got_id,) = take(">i")
    if got_id != correlation_id:
        raise ValueError(f"correlation id {got_id} != {correlation_id}")
    take(">i")  # throttle_time_ms
    (count,) = take(">i")
    brokers = []
    for _ in range(count):
        (node_id,) = take(">i")
        host = take_string()
        (port,) = take(">i")
        take_string()  # rack
        brokers.append((node_id, host, port))
    return brokers


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks += chunk
    return bytes(chunks)


def probe_broker(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when the broker answers a Metadata request and lists itself."""
    correlation_id = int(time.monotonic() * 1000) & 0x7FFFFFFF
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(metadata_request(correlation_id))
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            frame = _recv_exact(sock, size)
        brokers = parse_metadata_brokers(correlation_id, frame)
    except (OSError, ValueError, struct.error):
        return False
    return any(node_id == NODE_ID for node_id, _, _ in brokers)
