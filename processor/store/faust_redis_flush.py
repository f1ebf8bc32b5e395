"""The write of one RedisStore flush: every partition's snapshot, atomically, fenced.

Each partition is written by one Lua script call touching only that partition's two
keys (one cluster slot thanks to the hash tag); all calls of a flush go in one
MULTI/EXEC, so a flush is all-or-nothing.

Fence: a partition whose stored offset is already *greater* than the snapshot's is
left untouched (the script returns 0). That happens only when another worker owns the
partition and got further (a late flush after a rebalance, a zombie worker); writing
would roll Redis back.
"""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from processor.store.faust_redis_state import Snapshot

# KEYS: data hash, offset string.
# ARGV: offset (-1: unknown), offset_changed (0/1), nsets, ndels, k1, v1, ..., d1, ...
FLUSH_PARTITION_LUA = """
local new = tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[2])
if cur and new >= 0 and tonumber(cur) > new then
  return 0
end
local nsets, ndels = tonumber(ARGV[3]), tonumber(ARGV[4])
local i, last = 5, 4 + 2 * nsets
while i <= last do
  local j = math.min(i + 3999, last)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
last = last + ndels
while i <= last do
  local j = math.min(i + 3999, last)
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
if new >= 0 and ARGV[2] == '1' then
  redis.call('SET', KEYS[2], ARGV[1])
end
return 1
"""


def flush_args(snap: Snapshot) -> list[bytes | int]:
    args: list[bytes | int] = [
        -1 if snap.offset is None else snap.offset,
        int(snap.offset_changed),
        len(snap.sets),
        len(snap.deletes),
    ]
    for key, value in snap.sets.items():
        args += (key, value)
    args += snap.deletes
    return args


async def write_snapshots(
    client: aioredis.Redis,
    snaps: list[Snapshot],
    data_key: Callable[[int], str],
    offset_key: Callable[[int], str],
) -> list[int]:
    """Apply ``snaps`` in one transaction; return the partitions the fence refused."""
    script = client.register_script(FLUSH_PARTITION_LUA)
    async with client.pipeline(transaction=True) as pipe:
        for snap in snaps:
            await script(
                keys=[data_key(snap.partition), offset_key(snap.partition)],
                args=flush_args(snap),
                client=pipe,
            )
        results = await pipe.execute()
    return [snap.partition for snap, ok in zip(snaps, results, strict=True) if not ok]
