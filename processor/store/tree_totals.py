"""Tree totals read from the live rollups: the run and every run reachable from it
through sub-agent links, each once, cycles cut, as the rollup API walks it (breadth-first,
at most ``depth_limit`` levels below it, ``children_limit`` children per run followed).

Reads only each run's total counters and children, not its whole rollup, so a tree of
100 runs costs two small replies per run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgpack  # type: ignore[import-untyped]
from redis.asyncio import Redis

from processor.domain.budgets import Totals
from processor.metrics import UsageMetrics
from processor.store.keys import Keys

#: Runs read per walk at most (whatever the limits allow, a walk stays bounded).
MAX_NODES = 20_000

# ARGV: roots (msgpack), run / children / parents key prefixes (tenant included), levels up,
# levels down, children per run, node cap. Returns, as JSON (the client decodes replies as
# text): [{run: [ct, tt, to, tf, user, ts0, children]}, children cut, the roots and their
# ancestors]. Run ids are escaped as keys.part does.
_WALK_LUA = """
local roots = cmsgpack.unpack(ARGV[1])
local run_p, kids_p, parents_p = ARGV[2], ARGV[3], ARGV[4]
local up, down, limit, cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8])
local function part(s) return (string.gsub(string.gsub(s, '%%', '%%25'), ':', '%%3A')) end
local seen, frontier, count = {}, {}, 0
for _, r in ipairs(roots) do
  if not seen[r] then seen[r] = true; frontier[#frontier + 1] = r; count = count + 1 end
end
local starts = {}
for _, r in ipairs(frontier) do starts[#starts + 1] = r end
for _ = 1, up do
  if #frontier == 0 or count >= cap then break end
  local nxt = {}
  for _, r in ipairs(frontier) do
    for _, p in ipairs(redis.call('SMEMBERS', parents_p .. part(r))) do
      if not seen[p] then
        seen[p] = true; nxt[#nxt + 1] = p; starts[#starts + 1] = p; count = count + 1
      end
    end
  end
  frontier = nxt
end
local nodes, cut, read = {}, 0, 0
frontier = starts
for _ = 0, down do
  if #frontier == 0 or read >= cap then break end
  local nxt = {}
  for _, r in ipairs(frontier) do
    if nodes[r] == nil then
      local v = redis.call('HMGET', run_p .. part(r), 'ct', 'tt', 'to', 'tf', 'user', 'ts0')
      read = read + 1
      if v[5] or v[6] then
        local key = kids_p .. part(r)
        local children = redis.call('ZRANGE', key, 0, limit - 1)
        if #children == limit then cut = cut + redis.call('ZCARD', key) - limit end
        nodes[r] = {v[1] or '', v[2] or '', v[3] or '', v[4] or '', v[5] or '', v[6] or '',
                    children}
        for _, c in ipairs(children) do
          if nodes[c] == nil then nxt[#nxt + 1] = c end
        end
      else
        nodes[r] = false
      end
    end
  end
  frontier = nxt
end
local out = {}
for r, n in pairs(nodes) do if n then out[r] = n end end
return cjson.encode({out, cut, starts})
"""


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
        self._walk = redis.register_script(_WALK_LUA)

    async def read_graph(
        self, tenant: str, roots: Sequence[str], *, with_ancestors: bool = False
    ) -> tuple[Graph, list[str]]:
        """Children and own totals of every run within the depth limit below ``roots``
        (and, ``with_ancestors``, below every run that reaches one of them, within the
        depth limit); and the roots with those ancestors. One script call walks it
        server-side, so a tree of 100 runs costs one round trip."""
        run_p, kids_p, parents_p = self._keys.tree_alert_keys(tenant)[:3]
        reply = await self._walk(
            keys=[],
            args=[
                msgpack.packb(list(roots)),
                run_p,
                kids_p,
                parents_p,
                self._depth if with_ancestors else 0,
                self._depth,
                self._children,
                MAX_NODES,
            ],
        )
        nodes, cut, starts = json.loads(reply)
        graph: Graph = {}
        for run, (cost, tokens, ok, failed, user, started, children) in nodes.items():
            graph[run] = Node(
                children if isinstance(children, list) else [],  # cjson: {} for empty
                Totals(int(cost or 0), int(tokens or 0), int(ok or 0), int(failed or 0)),
                user or "",
                int(started) if started else None,
            )
        if cut and self._metrics is not None:
            self._metrics.children_cut.inc(cut)
        return graph, list(starts) if isinstance(starts, list) else []

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
        graph, _ = await self.read_graph(tenant, [run_id])
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
