"""Run rollups in Redis: one atomic Lua call per batch to apply, pipelined reads to serve."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import msgpack  # type: ignore[import-untyped]
from redis.asyncio import Redis

from processor.domain.accept import entry_from_stored
from processor.domain.rollup import (
    AcceptedEntry,
    RunDelta,
    RunRollup,
    fold_batch,
    fold_run,
)
from processor.store.keys import Keys

_APPLY_LUA = resources.files("processor.store").joinpath("apply_batch.lua").read_text("utf-8")

# Each round either applies a group or strictly shrinks it, so this only bounds
# pathological races between workers re-sending the same ids at the same moment.
_MAX_ROUNDS = 50


@dataclass(slots=True)
class ApplyResult:
    accepted: list[AcceptedEntry] = field(default_factory=list)
    duplicates: list[AcceptedEntry] = field(default_factory=list)
    #: entries of a run whose counters they would take past 64 bits, with the counter
    #: name: not applied (the caller dead-letters them)
    overflowed: list[tuple[AcceptedEntry, str]] = field(default_factory=list)


@dataclass(slots=True)
class ApplyPlan:
    """A batch folded per run with the script arguments encoded, ready to execute."""

    pending: list[tuple[list[AcceptedEntry], RunDelta]]
    args: list[Any]
    repeats: list[AcceptedEntry]


class RunStore:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        dedup_ttl_s: int,
        entry_ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._dedup_ttl_s = dedup_ttl_s
        self._entry_ttl_s = entry_ttl_s
        self._clock = clock
        self._apply_script = redis.register_script(_APPLY_LUA)

    # --- write side ---------------------------------------------------------------------

    async def apply(self, entries: Sequence[AcceptedEntry]) -> ApplyResult:
        """Apply a batch exactly once per entry id; returns what was new and what was not."""
        return await self.execute(self.plan(entries))

    def plan(self, entries: Sequence[AcceptedEntry]) -> ApplyPlan:
        """The CPU part of ``apply``: fold per run and encode the script's arguments.

        Separate so a caller can do it while Redis still works on the previous batch.
        """
        pending, repeats = fold_batch(entries)
        return ApplyPlan(pending, self._encode(pending), repeats)

    async def execute(self, plan: ApplyPlan) -> ApplyResult:
        """The I/O part of ``apply``: one script call, more only for groups to re-fold."""
        result = ApplyResult(duplicates=list(plan.repeats))
        pending, args = plan.pending, plan.args
        for _ in range(_MAX_ROUNDS):
            if not pending:
                return result
            outcomes = _decode_results(await self._apply_script(keys=[], args=args))
            retry: list[tuple[list[AcceptedEntry], RunDelta]] = []
            for index, (members, _) in enumerate(pending):
                outcome = outcomes.get(index)
                if outcome is None:
                    result.accepted.extend(members)
                elif outcome[0] == "overflow" and len(members) > 1:
                    # find the culprit(s): retry each entry as a group of its own
                    retry.extend(([e], fold_run([e])) for e in members)
                elif outcome[0] == "overflow":
                    result.overflowed.append((members[0], str(outcome[1])))
                else:
                    seen = set(outcome[1])
                    rest = [e for e in members if e.entry_id not in seen]
                    result.duplicates.extend(e for e in members if e.entry_id in seen)
                    if rest:
                        retry.append((rest, fold_run(rest)))
            pending = retry
            args = self._encode(pending)
        raise RuntimeError("could not apply batch: entry ids kept conflicting")

    def _encode(self, pending: list[tuple[list[AcceptedEntry], RunDelta]]) -> list[Any]:
        bodies = _Blob()
        fields: dict[str, int] = {}
        tenants: dict[str, int] = {}
        groups = [self._group_payload(d, bodies, fields, tenants) for _, d in pending]
        generation, expire_at = self._dedup_generation()
        header = {
            "stats": self._keys.stats(),
            "fields": list(fields),
            "seen": [
                [self._keys.seen(t, generation), self._keys.seen(t, generation - 1)]
                for t in tenants
            ],
            "groups": groups,
        }
        return [msgpack.packb(header), expire_at, self._entry_ttl_s, b"".join(bodies.parts)]

    def _dedup_generation(self) -> tuple[int, int]:
        """The current dedup generation and when its hash may expire (unix seconds).

        An id is looked up in the current and the previous generation, so it is remembered
        for at least one full retention period and at most two.
        """
        now = int(self._clock())
        generation = now // self._dedup_ttl_s
        return generation, (generation + 2) * self._dedup_ttl_s

    def _group_payload(
        self,
        d: RunDelta,
        bodies: _Blob,
        fields: dict[str, int],
        tenants: dict[str, int],
    ) -> list[Any]:
        """One group of the Lua payload.

        Entry bodies are appended to ``bodies``, one blob sent as a single argument (one
        argument per body cost more to encode than everything else); the group carries
        its first body's offset and every body's length. Counter names are interned in
        ``fields`` (sent once per batch, referred to by 1-based index).
        """
        k = self._keys
        t = d.tenant_id
        own = [b if isinstance(b, bytes) else b.encode() for _, _, b in d.entries]
        body_at = bodies.add(own)
        # positional, in the order apply_batch.lua unpacks it (maps cost more to decode)
        return [
            _intern(tenants, t),
            d.entry_ids,
            [body_at, *map(len, own)],
            k.run(t, d.run_id),
            k.run_children(t, d.run_id),
            k.run_entries(t, d.run_id),
            d.run_id,
            k.runs_index(t),
            k.runs_by_user(t, d.user_id),
            k.runs_by_agent(t, d.agent_name) if d.agent_name else "",
            d.user_id,
            t,
            d.agent_name or "",
            [x for f, v in d.incr.items() for x in (_intern(fields, f), _lua_int(v))],
            [x for f, v in d.fincr.items() for x in (_intern(fields, f), repr(v))],
            d.min_ts,
            d.max_ts,
            sorted(d.children),
        ]

    # --- read side ----------------------------------------------------------------------

    async def applied_count(self) -> int:
        """Entries applied under this key prefix since it was created (all workers)."""
        raw = await self._redis.hget(self._keys.stats(), "applied")  # type: ignore[misc]
        return int(raw or 0)

    async def get_rollups(self, tenant: str, run_ids: Iterable[str]) -> dict[str, RunRollup]:
        ids = list(dict.fromkeys(run_ids))
        if not ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hgetall(self._keys.run(tenant, run_id))
                pipe.smembers(self._keys.run_children(tenant, run_id))
            replies = await pipe.execute()
        out: dict[str, RunRollup] = {}
        for i, run_id in enumerate(ids):
            fields, children = replies[2 * i], replies[2 * i + 1]
            if fields:
                out[run_id] = RunRollup.from_fields(run_id, fields, children)
        return out

    async def get_rollup(self, tenant: str, run_id: str) -> RunRollup | None:
        return (await self.get_rollups(tenant, [run_id])).get(run_id)

    async def get_tree(self, tenant: str, root: RunRollup, depth_limit: int) -> list[RunRollup]:
        """The root and every run reachable through sub-agent links, once each, cycles cut.

        Read breadth-first, one pipelined round trip per level. Children not (yet) known
        to Redis are skipped: a child's entries may arrive after its parent's.
        """
        found = [root]
        visited = {root.run_id}
        frontier = [root]
        depth = 0
        while frontier and depth < depth_limit:
            next_ids = [c for r in frontier for c in r.children if c not in visited]
            next_ids = list(dict.fromkeys(next_ids))
            visited.update(next_ids)
            level = await self.get_rollups(tenant, next_ids)
            frontier = [level[c] for c in next_ids if c in level]
            found.extend(frontier)
            depth += 1
        return found

    async def get_entries(self, tenant: str, run_id: str) -> list[dict[str, Any]]:
        """Every retained entry of the run, ordered by (timestamp, id).

        Sorted here rather than kept in a sorted set: one key less per run on the write
        path, which is the hot one.
        """
        bodies = await self._redis.hgetall(self._keys.run_entries(tenant, run_id))  # type: ignore[misc]
        entries = [entry_from_stored(b) for b in bodies.values()]
        entries.sort(key=lambda e: (e["timestamp"], e["id"]))
        return entries

    async def list_runs(
        self,
        tenant: str,
        *,
        user_id: str | None,
        agent_name: str | None,
        since: int | None,
        limit: int,
    ) -> list[str]:
        if user_id is not None:
            key = self._keys.runs_by_user(tenant, user_id)
        elif agent_name is not None:
            key = self._keys.runs_by_agent(tenant, agent_name)
        else:
            key = self._keys.runs_index(tenant)
        low: str | int = since if since is not None else "-inf"
        if user_id is not None and agent_name is not None:
            candidates = await self._redis.zrevrangebyscore(key, "+inf", low)
            agent_runs = await self._redis.zrevrangebyscore(
                self._keys.runs_by_agent(tenant, agent_name), "+inf", low
            )
            allowed = set(agent_runs)
            return [r for r in candidates if r in allowed][:limit]
        result = await self._redis.zrevrangebyscore(key, "+inf", low, start=0, num=limit)
        return list(result)


class _Blob:
    """Entry bodies concatenated into one script argument."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, bodies: list[bytes]) -> int:
        """Append ``bodies``; returns the 1-based offset of the first one."""
        at = self.size + 1
        self.parts.extend(bodies)
        self.size += sum(map(len, bodies))
        return at


def _intern(fields: dict[str, int], name: str) -> int:
    index = fields.get(name)
    if index is None:
        index = fields[name] = len(fields) + 1
    return index


def _lua_int(v: int) -> int | str:
    """Lua numbers are doubles: integers beyond 2^53 travel as strings."""
    return v if -(2**53) < v < 2**53 else str(v)


def _decode_results(raw: Any) -> dict[int, tuple[str, Any]]:
    """Group index -> ("seen", [ids]) or ("overflow", counter name); absent = applied."""
    decoded = json.loads(raw)
    if isinstance(decoded, dict):  # cjson encodes an empty table as {}
        return {}
    return {int(index): (str(kind), detail) for index, kind, detail in decoded}
