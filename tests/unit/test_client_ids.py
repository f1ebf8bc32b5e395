"""UUIDv7 ids: well-formed, unique, time-ordered (also across a counter overflow)."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from usage_client.ids import UUIDv7Generator, new_id, uuid7, uuid7_time_ms


def test_format_version_and_variant() -> None:
    u = uuid7()
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    text = new_id()
    assert len(text) == 36 and text == text.lower()
    assert uuid.UUID(text).version == 7


def test_encodes_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    u = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= uuid7_time_ms(u) <= after + 1
    assert uuid7_time_ms(str(u)) == uuid7_time_ms(u)
    with pytest.raises(ValueError, match="not a UUIDv7"):
        uuid7_time_ms(uuid.uuid4())


def test_unique_and_strictly_increasing() -> None:
    made = [new_id() for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    as_uuids = [uuid.UUID(m) for m in made]
    assert as_uuids == sorted(as_uuids)


def test_order_survives_counter_overflow_within_one_millisecond() -> None:
    frozen = time.time_ns()
    gen = UUIDv7Generator(clock=lambda: frozen)
    made = [gen.new_id() for _ in range(10_000)]  # more than the 12-bit counter holds
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    first_ms = uuid7_time_ms(made[0])
    assert first_ms == frozen // 1_000_000
    assert uuid7_time_ms(made[-1]) > first_ms  # carried past the frozen millisecond


def test_clock_going_backwards_keeps_the_order() -> None:
    now = [time.time_ns()]
    gen = UUIDv7Generator(clock=lambda: now[0])
    first = gen.new_id()
    now[0] -= 5 * 10**9
    second = gen.new_id()
    assert second > first
    assert uuid7_time_ms(second) == uuid7_time_ms(first)  # carried forward, not back


def test_threads_get_unique_ids() -> None:
    gen = UUIDv7Generator()
    with ThreadPoolExecutor(8) as pool:
        chunks = list(pool.map(lambda _: [gen.new_id() for _ in range(2000)], range(8)))
    made = [i for chunk in chunks for i in chunk]
    assert len(set(made)) == len(made)
    assert all(chunk == sorted(chunk) for chunk in chunks)
