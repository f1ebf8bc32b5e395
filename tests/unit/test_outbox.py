"""The pure parts of the outbox relay: progress records, the ring of recent ids, entries,
and the progress topic's settings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.outbox import (
    RecentIds,
    decode_progress,
    encode_progress,
    parse_entry,
    progress_key,
    progress_slot,
    progress_state,
)
from processor.topics import owned_topics, topic_configs, topic_partitions
from tests.integration.harness import build_settings


def test_progress_record_round_trip() -> None:
    value = encode_progress("1700000000000-3", ["a", "b:c", "é"])
    assert decode_progress(value) == ("1700000000000-3", ["a", "b:c", "é"])
    assert value == b'{"streamId":"1700000000000-3","ids":["a","b:c","\\u00e9"]}'


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not json",
        b"[]",
        b'{"ids": []}',
        b'{"streamId": 1, "ids": []}',
        b'{"streamId": "1-0", "ids": "a"}',
        b'{"streamId": "1-0", "ids": [1]}',
    ],
)
def test_anything_else_is_refused_not_skipped(value: bytes | None) -> None:
    with pytest.raises(ValueError):
        decode_progress(value)


def test_progress_keys_belong_to_one_outbox_only() -> None:
    assert progress_key("alerts", 7) == b"alerts#7"
    assert progress_slot("alerts", b"alerts#7") == 7
    assert progress_slot("a#b", progress_key("a#b", 3)) == 3
    for other in [None, b"alerts", b"alerts#", b"alerts#x", b"alertsx#1", b"a#b#1", b"xalerts#1"]:
        assert progress_slot("alerts", other) is None
    assert progress_slot("a", progress_key("a#b", 1)) is None


def test_ring_size_keeps_the_window_in_full_buckets() -> None:
    recent = RecentIds(window=10_000, bucket=500)
    assert recent.slots == 21  # 20 full buckets behind the current one
    assert RecentIds(window=300, bucket=100).slots == 4
    assert RecentIds(window=301, bucket=100).slots == 5


def test_next_record_changes_nothing_until_commit() -> None:
    recent = RecentIds(window=4, bucket=2)
    slot, ids = recent.next_record(["a"])
    assert (slot, ids) == (0, ["a"]) and "a" not in recent
    recent.commit(slot, ids)
    assert "a" in recent
    assert recent.next_record(["b", "c"]) == (0, ["a", "b", "c"])  # not full yet: same bucket
    recent.commit(0, ["a", "b", "c"])
    assert recent.next_record(["d"]) == (1, ["d"])  # full: the next slot


def _publish(recent: RecentIds, log: list[tuple[bytes, bytes]], batch: list[str]) -> None:
    slot, ids = recent.next_record(batch)
    log.append((progress_key("o", slot), encode_progress(f"{len(log)}-0", ids)))
    recent.commit(slot, ids)


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=80),
    window=st.integers(min_value=1, max_value=300),
    bucket=st.integers(min_value=1, max_value=80),
)
def test_last_window_ids_survive_compaction_and_restart(
    sizes: list[int], window: int, bucket: int
) -> None:
    """Whatever the transaction sizes: after compaction (the latest record per key) a fresh
    relay restores at least the last ``window`` published ids, and the same ring."""
    recent = RecentIds(window, bucket)
    log: list[tuple[bytes, bytes]] = []
    published: list[str] = []
    for n, size in enumerate(sizes):
        batch = [f"m{n}.{i}" for i in range(size)]
        _publish(recent, log, batch)
        published += batch
    compacted = {
        progress_slot("o", key): (offset, value) for offset, (key, value) in enumerate(log)
    }
    restored = RecentIds(window, bucket)
    buckets, current, stream_id = progress_state(
        {slot: v for slot, v in compacted.items() if slot is not None}
    )
    restored.restore(buckets, current)
    assert stream_id == f"{len(log) - 1}-0"
    assert all(mid in restored for mid in published[-window:])
    assert restored._ids == recent._ids
    assert restored.next_record(["next"]) == recent.next_record(["next"])


def test_restore_from_nothing_starts_empty() -> None:
    assert progress_state({}) == ({}, 0, "0-0")
    recent = RecentIds()
    recent.restore({}, 0)
    assert len(recent) == 0 and recent.next_record(["x"]) == (0, ["x"])


def test_rotation_drops_only_the_overwritten_generation() -> None:
    recent = RecentIds(window=4, bucket=2)  # 3 slots of 2
    ids = [f"id{i}" for i in range(12)]
    for start in range(0, 12, 2):
        slot, bucket = recent.next_record(ids[start : start + 2])
        recent.commit(slot, bucket)
        assert set(ids[max(0, start - 2) : start + 2]) <= recent._ids
    assert recent._ids == set(ids[6:])


def test_entries_from_bytes_or_text_clients() -> None:
    as_bytes = parse_entry(b"1-0", {b"k": b"run-1", b"v": b'{"a":1}', b"id": b"alert:1"})
    as_text = parse_entry("1-0", {"k": "run-1", "v": '{"a":1}', "id": "alert:1"})
    assert as_bytes == as_text
    assert as_bytes is not None
    assert (as_bytes.stream_id, as_bytes.message_id) == ("1-0", "alert:1")
    assert (as_bytes.key, as_bytes.value) == (b"run-1", b'{"a":1}')
    keyless = parse_entry("2-0", {"v": "x", "id": "i"})
    assert keyless is not None and keyless.key is None


@pytest.mark.parametrize("fields", [{}, {"k": "a", "v": "x"}, {"k": "a", "id": "i"}])
def test_entries_without_id_or_value_are_malformed(fields: dict[str, str]) -> None:
    assert parse_entry("1-0", fields) is None


def test_progress_topic_is_owned_compacted_and_single_partition() -> None:
    s = build_settings(topic_partitions=8, topic_outbox_progress="p.progress")
    assert "p.progress" in owned_topics(s)
    assert topic_partitions(s, "p.progress") == 1
    assert topic_configs(s, "p.progress")["cleanup.policy"] == "compact"
    others = [t for t in owned_topics(s) if t != "p.progress"]
    assert others and all(topic_partitions(s, t) == 8 for t in others)
    assert all("cleanup.policy" not in topic_configs(s, t) for t in others)
