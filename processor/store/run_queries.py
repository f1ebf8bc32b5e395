"""The read side of the run keys (CONTRACT §3.1), every read bounded.

- Entries pages come from the run's entry index (a sorted set scored by timestamp, so
  ordered by (timestamp, id)): without a kind or step filter only the page's bodies are
  read; with one, the index is walked in chunks, so memory stays within a chunk.
- A run's sub-agent children are read in a capped range (``children_limit``); what the
  cap leaves out of a tree walk is counted in ``usage_subagent_children_cut_total``.
- The run listing reads one sorted set with the limit, whichever filters are given.

Key layout: processor/store/keys.py. The writer is RunStore (processor/store/runs.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from redis.asyncio import Redis

from processor.domain.accept import entry_from_stored
from processor.domain.readback import RunRollup
from processor.metrics import UsageMetrics
from processor.store.keys import Keys

#: Entry ids read per round trip when a filter needs the bodies to decide.
ENTRY_CHUNK: Final = 1000
#: Redis parses ranks as signed 64-bit integers.
_RANK_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """The entries endpoint's filters, every bound inclusive; ``None`` = no bound."""

    kinds: frozenset[str] | None = None
    step_min: int | None = None
    step_max: int | None = None
    start: int | None = None
    end: int | None = None

    @property
    def needs_bodies(self) -> bool:
        """True when the index alone (timestamps) cannot decide which entries match."""
        return self.kinds is not None or self.step_min is not None or self.step_max is not None

    def matches_body(self, entry: dict[str, Any]) -> bool:
        """The kind and step filters; ``stepCount`` defaults to 0. Time is the index's."""
        if self.kinds is not None and entry.get("kind") not in self.kinds:
            return False
        step = entry.get("stepCount", 0)
        if self.step_min is not None and step < self.step_min:
            return False
        return self.step_max is None or step <= self.step_max


@dataclass(slots=True)
class EntryPage:
    """One page of a run's entries and how many entries match in all."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0


class RunQueries:
    """Reads of rollups, sub-agent trees, entries and run listings."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        children_limit: int = 1000,
        metrics: UsageMetrics | None = None,
        entry_chunk: int = ENTRY_CHUNK,
    ) -> None:
        if children_limit < 1 or entry_chunk < 1:
            raise ValueError("children_limit and entry_chunk must be at least 1")
        self._redis = redis
        self._keys = keys
        self._children_limit = children_limit
        self._metrics = metrics
        self._entry_chunk = entry_chunk

    async def applied_count(self) -> int:
        """Entries applied under this key prefix since it was created (all workers)."""
        raw = await self._redis.hget(self._keys.stats(), "applied")  # type: ignore[misc]
        return int(raw or 0)

    # --- rollups and trees --------------------------------------------------------------

    async def _read_runs(
        self, tenant: str, run_ids: Sequence[str]
    ) -> dict[str, tuple[RunRollup, int]]:
        """Known runs among ``run_ids`` -> (rollup with capped children, children in all)."""
        if not run_ids:
            return {}
        k, last = self._keys, self._children_limit - 1
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(k.run(tenant, run_id))
                pipe.zrange(k.run_children(tenant, run_id), 0, last)
                pipe.zcard(k.run_children(tenant, run_id))
            replies = await pipe.execute()
        out: dict[str, tuple[RunRollup, int]] = {}
        for i, run_id in enumerate(run_ids):
            fields, children, count = replies[3 * i : 3 * i + 3]
            if fields:
                out[run_id] = (RunRollup.from_fields(run_id, fields, children), int(count))
        return out

    async def get_rollups(self, tenant: str, run_ids: Iterable[str]) -> dict[str, RunRollup]:
        """The known runs among ``run_ids``; ``children`` capped at ``children_limit``."""
        runs = await self._read_runs(tenant, list(dict.fromkeys(run_ids)))
        return {run_id: rollup for run_id, (rollup, _) in runs.items()}

    async def get_rollup(self, tenant: str, run_id: str) -> RunRollup | None:
        return (await self.get_rollups(tenant, [run_id])).get(run_id)

    async def run_exists(self, tenant: str, run_id: str) -> bool:
        return bool(await self._redis.exists(self._keys.run(tenant, run_id)))

    async def get_tree(self, tenant: str, run_id: str, depth_limit: int) -> list[RunRollup]:
        """The run first, then every run reachable through sub-agent links, once each,
        cycles cut, at most ``depth_limit`` levels below it; ``[]`` for an unknown run.

        Read breadth-first, one pipelined round trip per level. At most
        ``children_limit`` children of each run are followed (the first by id); the
        rest are counted in ``children_cut``. Children not (yet) known to Redis are
        skipped: a child's entries may arrive after its parent's.
        """
        level = await self._read_runs(tenant, [run_id])
        if run_id not in level:
            return []
        frontier = [level[run_id]]
        found = [frontier[0][0]]
        visited = {run_id}
        cut = 0
        depth = 0
        while frontier and depth < depth_limit:
            next_ids: list[str] = []
            for rollup, count in frontier:
                cut += count - len(rollup.children)
                for child in rollup.children:
                    if child not in visited:
                        visited.add(child)
                        next_ids.append(child)
            level = await self._read_runs(tenant, next_ids)
            frontier = [level[c] for c in next_ids if c in level]
            found.extend(rollup for rollup, _ in frontier)
            depth += 1
        if cut > 0 and self._metrics is not None:
            self._metrics.children_cut.inc(cut)
        return found

    # --- entries ------------------------------------------------------------------------

    async def entries_page(
        self, tenant: str, run_id: str, where: EntryFilter, *, offset: int, limit: int
    ) -> EntryPage | None:
        """Entries ``offset .. offset + limit - 1`` of those matching ``where``, ordered
        by (timestamp, id), and how many match; ``None`` for an unknown run.

        Ids in the index whose body is gone (expired between two reads) are skipped.
        """
        k = self._keys
        index = k.run_entry_index(tenant, run_id)
        low = "-inf" if where.start is None else where.start
        high = "+inf" if where.end is None else where.end
        direct = not where.needs_bodies and where.start is None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.exists(k.run(tenant, run_id))
            pipe.zcount(index, low, high)
            if where.start is not None:
                # rank of the first entry at or after start: ranks seek in O(log n)
                pipe.zcount(index, "-inf", f"({where.start}")
            elif direct:
                pipe.zrange(index, offset, min(offset + limit - 1, _RANK_MAX))
            replies = await pipe.execute()
        if not replies[0]:
            return None
        in_range, first = int(replies[1]), 0
        if where.start is not None:
            first = int(replies[2])
        if where.needs_bodies:
            return await self._walk(tenant, run_id, where, first, in_range, offset, limit)
        if offset >= in_range:
            return EntryPage([], in_range)
        if direct:
            ids = replies[2]
        else:
            ids = await self._redis.zrange(index, first + offset, first + offset + limit - 1)
        # the rank range may run past ``end``: keep what the count covers
        ids = ids[: max(0, in_range - offset)]
        return EntryPage(await self._bodies(tenant, run_id, ids), in_range)

    async def _bodies(self, tenant: str, run_id: str, ids: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        bodies = await self._redis.hmget(self._keys.run_entries(tenant, run_id), ids)  # type: ignore[misc]
        return [entry_from_stored(b) for b in bodies if b is not None]

    async def _walk(
        self,
        tenant: str,
        run_id: str,
        where: EntryFilter,
        first: int,
        count: int,
        offset: int,
        limit: int,
    ) -> EntryPage:
        """Count and page the entries matching ``where`` among index ranks ``first ..
        first + count - 1``, a chunk at a time."""
        index = self._keys.run_entry_index(tenant, run_id)
        page = EntryPage()
        rank, stop = first, first + count
        while rank < stop:
            last = min(rank + self._entry_chunk, stop) - 1
            ids = await self._redis.zrange(index, rank, last)
            if not ids:
                break  # the index shrank under us (expired): nothing further
            for entry in await self._bodies(tenant, run_id, ids):
                if where.matches_body(entry):
                    if offset <= page.total < offset + limit:
                        page.entries.append(entry)
                    page.total += 1
            rank = last + 1
        return page

    # --- run listing --------------------------------------------------------------------

    async def list_runs(
        self,
        tenant: str,
        *,
        user_id: str | None,
        agent_name: str | None,
        since: int | None,
        limit: int,
    ) -> list[str]:
        """Run ids newest first by startedAt, from the one index the filters name."""
        k = self._keys
        if user_id is not None and agent_name is not None:
            key = k.runs_by_user_agent(tenant, user_id, agent_name)
        elif user_id is not None:
            key = k.runs_by_user(tenant, user_id)
        elif agent_name is not None:
            key = k.runs_by_agent(tenant, agent_name)
        else:
            key = k.runs_index(tenant)
        low: str | int = since if since is not None else "-inf"
        return list(await self._redis.zrevrangebyscore(key, "+inf", low, start=0, num=limit))
