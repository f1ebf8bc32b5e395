"""UUIDv7 ids: well-formed, unique, time-ordered (also across a counter overflow)."""

from __future__ import annotations

import time
import uuid

import pytest

from usage_client import ids
from usage_client.ids import new_id, uuid7, uuid7_time_ms


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


def test_order_survives_counter_overflow_within_one_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frozen = time.time_ns() + 10**12  # a millisecond no earlier id used
    monkeypatch.setattr(ids.time, "time_ns", lambda: frozen)
    made = [new_id() for _ in range(10_000)]  # more than the 12-bit counter holds
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    first_ms = uuid7_time_ms(made[0])
    assert first_ms == frozen // 1_000_000
    assert uuid7_time_ms(made[-1]) > first_ms  # advanced past the frozen millisecond


def test_clock_going_backwards_keeps_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    base = time.time_ns() + 2 * 10**12
    monkeypatch.setattr(ids.time, "time_ns", lambda: base)
    first = new_id()
    monkeypatch.setattr(ids.time, "time_ns", lambda: base - 5 * 10**9)
    second = new_id()
    assert second > first
