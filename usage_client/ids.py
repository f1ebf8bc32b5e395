"""Time-ordered entry and run ids: UUID version 7 (RFC 9562).

Layout: 48 bits of Unix epoch milliseconds, version 7, a 12-bit counter (``rand_a``,
seeded randomly each millisecond and incremented within it, RFC 9562 method 1), the variant
bits and 62 random bits. Ids made by one generator are strictly increasing, as UUIDs and as
their canonical strings: when the counter overflows within one millisecond, or the clock
steps back, the timestamp field is carried forward from the last id instead.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Final

__all__ = ["UUIDv7Generator", "new_id", "uuid7", "uuid7_time_ms"]

_COUNTER_MAX: Final = 0xFFF


class UUIDv7Generator:
    """Thread-safe, monotonic UUIDv7 source; ``clock`` returns epoch nanoseconds."""

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def _next_fields(self) -> tuple[int, int]:
        now_ms = self._clock() // 1_000_000
        with self._lock:
            if now_ms > self._last_ms:
                self._last_ms = now_ms
                # Seed with the top bit clear so at least 2048 ids fit in one millisecond.
                self._counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
            else:
                self._counter += 1
                if self._counter > _COUNTER_MAX:
                    self._last_ms += 1
                    self._counter = 0
            return self._last_ms, self._counter

    def uuid7(self) -> uuid.UUID:
        """A new UUIDv7, greater than every one this generator made before."""
        ms, counter = self._next_fields()
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76
        value |= counter << 64
        value |= 0b10 << 62
        value |= rand_b
        return uuid.UUID(int=value)

    def new_id(self) -> str:
        return str(self.uuid7())


_default = UUIDv7Generator()


def uuid7() -> uuid.UUID:
    """A new UUIDv7 from the process-wide generator."""
    return _default.uuid7()


def new_id() -> str:
    """A new UUIDv7 in canonical form (36 characters, lower-case hex)."""
    return _default.new_id()


def uuid7_time_ms(value: uuid.UUID | str) -> int:
    """The Unix epoch milliseconds encoded in a UUIDv7."""
    u = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    if u.version != 7:
        raise ValueError(f"not a UUIDv7: {u}")
    return u.int >> 80
