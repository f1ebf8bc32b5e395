"""Tree totals read from the live rollups: the run and every run reachable from it
through sub-agent links, each once, cycles cut, as the rollup API walks it (breadth-first,
at most ``depth_limit`` levels below it, ``children_limit`` children per run followed).

Reads only each run's total counters and children, not its whole rollup, so a tree of
100 runs costs two small replies per run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from processor.domain.budgets import Totals
from processor.domain.windows import F_COST_TOTAL, F_TOKENS_TOTAL, F_TOOL_FAIL, F_TOOL_OK
from processor.metrics import UsageMetrics
from processor.store.keys import Keys

#: Runs read per walk at most (whatever the limits allow, a walk stays bounded).
MAX_NODES = 20_000
_FIELDS = [F_COST_TOTAL, F_TOKENS_TOTAL, F_TOOL_OK, F_TOOL_FAIL, "user", "ts0"]


@dataclass(slots=True)
class Node:
    children: list[str]
    totals: Totals
    user: str
    started: int | None


Graph = dict[str, Node]


class TreeReader:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        depth_limit: int,
        children_limit: int,
        metrics: UsageMetrics | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._depth = depth_limit
        self._children = children_limit
        self._metrics = metrics

    async def read_graph(self, tenant: str, roots: Sequence[str]) -> Graph:
        """Children and own totals of every run within the depth limit below ``roots``."""
        k, last = self._keys, self._children - 1
        graph: Graph = {}
        frontier = list(roots)
        full: list[str] = []  # runs with children_limit children read: maybe more
        for _ in range(self._depth + 1):
            frontier = [r for r in frontier if r not in graph]
            if not frontier or len(graph) >= MAX_NODES:
                break
            async with self._redis.pipeline(transaction=False) as pipe:
                for run in frontier:
                    pipe.hmget(k.run(tenant, run), _FIELDS)
                    pipe.zrange(k.run_children(tenant, run), 0, last)
                replies = await pipe.execute()
            nxt: list[str] = []
            for i, run in enumerate(frontier):
                values, children = replies[2 * i : 2 * i + 2]
                if values[4] is None and values[5] is None:
                    continue  # not (yet) known: its entries may come after its parent's
                cost, tokens, ok, failed = (int(v or 0) for v in values[:4])
                started = int(values[5]) if values[5] is not None else None
                graph[run] = Node(list(children), Totals(cost, tokens, ok, failed),
                                   values[4] or "", started)  # fmt: skip
                if len(children) == self._children:
                    full.append(run)
                nxt.extend(children)
            frontier = nxt
        if full and self._metrics is not None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for run in full:
                    pipe.zcard(k.run_children(tenant, run))
                counts = await pipe.execute()
            cut = sum(int(c) for c in counts) - self._children * len(full)
            if cut:
                self._metrics.children_cut.inc(cut)
        return graph

    def members(self, root: str, graph: Graph) -> set[str]:
        """The runs of ``root``'s tree as the rollup API walks it: breadth-first, each
        once, cycles cut, at most ``depth_limit`` levels below it."""
        members = {root}
        frontier = [root]
        for _ in range(self._depth):
            nxt = []
            for run in frontier:
                for child in graph[run].children:
                    if child in graph and child not in members:
                        members.add(child)
                        nxt.append(child)
            if not nxt:
                break
            frontier = nxt
        return members

    async def totals(self, tenant: str, run_id: str) -> tuple[Totals, Node | None]:
        """The tree's totals and the run's own node (None: unknown run)."""
        graph = await self.read_graph(tenant, [run_id])
        node = graph.get(run_id)
        if node is None:
            return Totals(), None
        return sum_totals(graph[m].totals for m in self.members(run_id, graph)), node


def sum_totals(parts: Iterable[Totals]) -> Totals:
    cost = tokens = ok = failed = 0
    for t in parts:
        cost += t.cost_pico
        tokens += t.tokens
        ok += t.tool_ok
        failed += t.tool_failed
    return Totals(cost, tokens, ok, failed)
