"""Time-ordered entry and run ids: UUID version 7 (RFC 9562).

Layout: 48 bits of Unix epoch milliseconds, version 7, a 12-bit counter (``rand_a``,
seeded randomly each millisecond and incremented within it, RFC 9562 method 1), the variant
bits and 62 random bits. Ids made by one process are strictly increasing, as UUIDs and as
their canonical strings; when the 12-bit counter overflows within one millisecond the
timestamp field is advanced by one millisecond, so the order never breaks.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Final

__all__ = ["new_id", "uuid7", "uuid7_time_ms"]

_COUNTER_MAX: Final = 0xFFF
_lock = threading.Lock()
_last_ms = -1
_counter = 0


def _next_fields() -> tuple[int, int]:
    global _last_ms, _counter
    now_ms = time.time_ns() // 1_000_000
    with _lock:
        if now_ms > _last_ms:
            _last_ms = now_ms
            # Seed with the top bit clear so at least 2048 ids fit in one millisecond.
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
        else:
            _counter += 1
            if _counter > _COUNTER_MAX:
                _last_ms += 1
                _counter = 0
        return _last_ms, _counter


def uuid7() -> uuid.UUID:
    """A new UUIDv7, greater than every UUIDv7 this process made before."""
    ms, counter = _next_fields()
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand_b
    return uuid.UUID(int=value)


def new_id() -> str:
    """A new UUIDv7 in canonical form (36 characters, lower-case hex)."""
    return str(uuid7())


def uuid7_time_ms(value: uuid.UUID | str) -> int:
    """The Unix epoch milliseconds encoded in a UUIDv7."""
    u = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    if u.version != 7:
        raise ValueError(f"not a UUIDv7: {u}")
    return u.int >> 80
