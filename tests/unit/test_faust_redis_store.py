"""RedisStore against a real redis-server started by this module (no mocks of Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import faust.stores
import pytest
import redis
from faust.streams import _current_event
from faust.types import TP

from processor.store.faust_redis import (
    RedisStore,
    RedisStoreConfig,
    table_data_key,
    table_keys_pattern,
    table_offset_key,
)

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.02)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def r(redis_url: str) -> Any:  # sync client; Any: redis-py types hget/hlen as maybe-awaitable
    return redis.Redis.from_url(redis_url)


@dataclass
class _Message:
    partition: int
    key: bytes | None = None
    value: bytes | None = None
    offset: int = 0
    topic: str = "changelog"

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


class _Event:
    def __init__(self, message: _Message) -> None:
        self.message = message


@contextlib.contextmanager
def in_partition(partition: int) -> Iterator[None]:
    """Pretend a stream event from ``partition`` is being processed."""
    event = _Event(_Message(partition))
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


def make_store(url: str, app_id: str, **table_kw: Any) -> RedisStore:
    app = faust.App(app_id, broker="kafka://127.0.0.1:1")
    table = app.Table("counts", default=int, store=url, **table_kw)
    store = table.data
    assert isinstance(store, RedisStore)
    return store


@pytest.fixture
async def app_id() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def store(redis_url: str, app_id: str) -> AsyncIterator[RedisStore]:
    s = make_store(f"{redis_url}?prefix=ut&flush_interval_ms=20", app_id)
    await s.load_partitions({0, 1})
    yield s
    await s._redis.aclose()


def tp(p: int) -> TP:
    return TP(f"{'x'}-counts-changelog", p)


def test_entry_point_resolves_redis_scheme() -> None:
    assert faust.stores.by_url("redis://localhost:6379/0") is RedisStore


def test_config_from_url_and_options() -> None:
    c = RedisStoreConfig.from_url("redis://h:1/2?prefix=xyz&flush_interval_ms=50&max_dirty=7")
    assert (c.redis_url, c.prefix, c.flush_interval, c.max_dirty) == (
        "redis://h:1/2",
        "xyz",
        0.05,
        7,
    )
    d = RedisStoreConfig.from_url("redis://", {"prefix": "o"})
    assert (d.redis_url, d.prefix, d.flush_interval) == ("redis://localhost:6379/0", "o", 0.1)
    with pytest.raises(ValueError):
        RedisStoreConfig.from_url("redis://h?flush_interval_ms=0")


def test_key_names() -> None:
    assert table_data_key("us", "app", "t", 3) == "us:ftab:{app:t:3}"
    assert table_offset_key("us", "app", "t", 3) == "us:ftab:{app:t:3}:offset"
    assert table_keys_pattern("us", "a*", "t") == "us:ftab:{a\\*:t:*"


async def test_set_get_del_in_working_set(store: RedisStore) -> None:
    with in_partition(0):
        store["k"] = 1
        assert store["k"] == 1 and "k" in store
    with in_partition(1):
        store["j"] = 2
        assert "k" not in store  # reads stay in the event's partition
    assert dict(store.items()) == {"k": 1, "j": 2}
    assert len(store) == 2 and set(store.keys()) == {"k", "j"}
    with in_partition(0):
        del store["k"]
        assert "k" not in store
    assert len(store) == 1
    assert store._parts[1].data == {b'"j"': b"2"}  # JSON-serialized by Faust


async def test_flush_waits_for_changelog_ack_and_writes_offset_atomically(
    store: RedisStore, r: Any
) -> None:
    dkey, okey = store.data_key(0), store.offset_key(0)
    with in_partition(0):
        store[b"a"] = 1
        store[b"a"] = 2
        store[b"b"] = 3
    assert await store.flush() == 0  # nothing acknowledged: Redis must not run ahead
    assert r.exists(dkey, okey) == 0

    store.set_persisted_offset(tp(0), 10)  # ack of the first write (a=1)
    assert await store.flush() == 1
    assert r.hgetall(dkey) == {b"a": b"1"} and r.get(okey) == b"10"

    store.set_persisted_offset(tp(0), 11)
    store.set_persisted_offset(tp(0), 12)
    assert await store.flush() == 2
    assert r.hgetall(dkey) == {b"a": b"2", b"b": b"3"} and r.get(okey) == b"12"
    assert store.persisted_offset(tp(0)) == 12

    with in_partition(0):
        del store[b"a"]
    store.set_persisted_offset(tp(0), 13)
    await store.flush()
    assert r.hgetall(dkey) == {b"b": b"3"} and r.get(okey) == b"13"


async def test_new_instance_reloads_data_and_offset(
    store: RedisStore, redis_url: str, app_id: str
) -> None:
    with in_partition(1):
        for i in range(100):
            store[f"k{i}".encode()] = i
    for off in range(100):
        store.set_persisted_offset(tp(1), off)
    await store.flush()

    other = make_store(f"{redis_url}?prefix=ut", app_id)
    try:
        await other.load_partitions({0, 1})
        assert other.persisted_offset(tp(1)) == 99
        assert other.persisted_offset(tp(0)) is None
        with in_partition(1):
            assert other[b"k42"] == 42
        assert len(other) == 100
    finally:
        await other._redis.aclose()
        # persisted_offset of a partition not loaded reads Redis synchronously
    fresh = make_store(f"{redis_url}?prefix=ut", app_id)
    assert fresh.persisted_offset(tp(1)) == 99


async def test_apply_changelog_batch_recovers_actives_ignores_standbys(
    store: RedisStore, r: Any
) -> None:
    batch = [
        _Event(_Message(0, b"x", b"1", offset=5)),
        _Event(_Message(0, b"x", b"2", offset=6)),
        _Event(_Message(0, b"y", b"9", offset=7)),
        _Event(_Message(0, b"y", None, offset=8)),
        _Event(_Message(7, b"z", b"1", offset=1)),  # not loaded here: a standby
    ]
    store.apply_changelog_batch(batch, lambda k: k, lambda v: v)  # type: ignore[arg-type]
    assert store.recovery_applied == {0: 4} and store.standby_records_ignored == 1
    assert store.persisted_offset(tp(0)) == 8
    await store.flush()
    assert r.hgetall(store.data_key(0)) == {b"x": b"2"}
    assert r.get(store.offset_key(0)) == b"8"
    assert not r.exists(store.data_key(7))


async def test_release_flushes_and_drops_working_set(store: RedisStore, r: Any) -> None:
    with in_partition(1):
        store[b"k"] = 5
    store.set_persisted_offset(tp(1), 0)
    await store.release_partitions({1})
    assert store.partitions == frozenset({0})
    assert r.hget(store.data_key(1), b"k") == b"5"
    assert len(store) == 0
    store.set_persisted_offset(tp(1), 1)  # late ack for a revoked partition: ignored


async def test_clear_deletes_in_redis(store: RedisStore, r: Any) -> None:
    with in_partition(0):
        store[b"a"] = 1
        store[b"b"] = 2
    store.set_persisted_offset(tp(0), 0)
    store.set_persisted_offset(tp(0), 1)
    await store.flush()
    store.clear()
    assert len(store) == 0
    await store.flush()
    assert r.exists(store.data_key(0)) == 0


async def test_failed_flush_keeps_changes_for_next_flush(
    store: RedisStore, r: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_partition(0):
        store[b"a"] = 1
    store.set_persisted_offset(tp(0), 3)

    async def boom(snaps: object) -> None:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(store, "_write", boom)
    with pytest.raises(redis.ConnectionError):
        await store.flush()
    with in_partition(0):
        store[b"a"] = 2  # newer confirmed write must win over the restored one
    store.set_persisted_offset(tp(0), 4)
    monkeypatch.undo()
    await store.flush()
    assert r.hgetall(store.data_key(0)) == {b"a": b"2"} and r.get(store.offset_key(0)) == b"4"


async def test_background_flusher_and_stop(redis_url: str, app_id: str, r: Any) -> None:
    s = make_store(f"{redis_url}?prefix=ut&flush_interval_ms=20", app_id)
    await s.load_partitions({0})
    await s.start()
    with in_partition(0):
        s[b"a"] = 1
    s.set_persisted_offset(tp(0), 0)
    deadline = time.monotonic() + 5
    while r.hget(s.data_key(0), b"a") is None:
        assert time.monotonic() < deadline, "background flush never happened"
        await asyncio.sleep(0.01)
    with in_partition(0):
        s[b"b"] = 2
    s.set_persisted_offset(tp(0), 1)
    await s.stop()  # flushes on stop
    assert r.hget(s.data_key(0), b"b") == b"2" and r.get(s.offset_key(0)) == b"1"


async def test_large_dirty_set_wakes_flusher(redis_url: str, app_id: str, r: Any) -> None:
    s = make_store(f"{redis_url}?prefix=ut&flush_interval_ms=60000&max_dirty=10", app_id)
    await s.load_partitions({0})
    await s.start()
    try:
        with in_partition(0):
            for i in range(10):
                s[str(i).encode()] = i
        for off in range(10):
            s.set_persisted_offset(tp(0), off)
        deadline = time.monotonic() + 5
        while r.hlen(s.data_key(0)) < 10:
            assert time.monotonic() < deadline, "threshold did not trigger a flush"
            await asyncio.sleep(0.01)
    finally:
        await s.stop()


async def test_reset_state_deletes_table_keys(store: RedisStore, r: Any) -> None:
    with in_partition(0):
        store[b"a"] = 1
    store.set_persisted_offset(tp(0), 0)
    await store.flush()
    r.set("ut:other", b"1")
    store.reset_state()
    assert store.partitions == frozenset()
    assert r.exists(store.data_key(0), store.offset_key(0)) == 0
    assert r.get("ut:other") == b"1"


async def test_fence_refuses_to_roll_back_a_later_offset(store: RedisStore, r: Any) -> None:
    r.hset(store.data_key(0), b"a", b"99")
    r.set(store.offset_key(0), 50)  # another worker owns partition 0 and got further
    with in_partition(0):
        store[b"a"] = 1
    with in_partition(1):
        store[b"b"] = 2
    store.set_persisted_offset(tp(0), 10)
    store.set_persisted_offset(tp(1), 7)
    await store.flush()
    assert r.hgetall(store.data_key(0)) == {b"a": b"99"} and r.get(store.offset_key(0)) == b"50"
    assert r.hgetall(store.data_key(1)) == {b"b": b"2"} and r.get(store.offset_key(1)) == b"7"


async def test_big_flush_and_reload(store: RedisStore, r: Any, redis_url: str, app_id: str) -> None:
    n = 25_000  # more than Lua's unpack() limit per call, and than max_dirty
    with in_partition(0):
        for i in range(n):
            store[f"k{i}".encode()] = i
        for i in range(0, n, 2):
            del store[f"k{i}".encode()]
    for off in range(n + n // 2):
        store.set_persisted_offset(tp(0), off)
    await store.flush()
    assert r.hlen(store.data_key(0)) == n // 2
    assert int(r.get(store.offset_key(0))) == n + n // 2 - 1
    other = make_store(f"{redis_url}?prefix=ut", app_id)
    try:
        await other.load_partitions({0})
        assert len(other) == n // 2 and other._parts[0].data[b"k1"] == b"1"
    finally:
        await other._redis.aclose()
