"""Alerts of run trees: after a batch is applied, every run it touched and every ancestor
of those runs is a subject whose tree total may have grown; each is evaluated against
the run rules from the live rollups, and what holds fires once.

Why after the batch step and not inside it: a run's tree total is the sum over every run
reachable from it, each once, cycles cut; keeping that sum inside the step would mean
maintaining, per run, the membership of every tree that contains it. Reading the trees
after the step is bounded by the depth and fan-out limits instead. It is still exactly
once: firing is one script that checks the alert's marker and writes the marker, the
alert record and its outbox message together; and it is never lost, because the batch's
partitions move on (their offsets are written) only after this evaluation: a worker that
dies in between replays the batch, and the replay evaluates the same runs again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal

import msgpack  # type: ignore[import-untyped]
from redis.asyncio import Redis

from processor.domain.alert_rules import AlertRule
from processor.domain.alerts import alert_id
from processor.domain.budgets import Totals, level_of, observed, plain
from processor.domain.rollup import AcceptedEntry
from processor.metrics import UsageMetrics
from processor.store.keys import Keys
from processor.store.runs import ALERTS_OUTBOX
from processor.store.tree_totals import Node, TreeReader, sum_totals

_RANK = {"ok": 0, "warning": 1, "critical": 2}


_FIRE_LUA = """
local fired, known = {}, {}
for i, a in ipairs(cmsgpack.unpack(ARGV[1])) do
  local marker, record, text, id, at = a[1], a[2], a[3], a[4], a[5]
  if redis.call('EXISTS', marker) == 1 then
    known[#known + 1] = id
  else
    redis.call('SET', marker, '1')
    redis.call('SET', record, text, 'PX', a[6])
    for _, index in ipairs(a[7]) do
      redis.call('ZADD', index, at, id)
      redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. string.format('%d', at - a[6]))
    end
    redis.call('XADD', a[8], '*', 'k', a[9], 'v', text, 'id', id, 'at', string.format('%d', at))
    fired[#fired + 1] = id
  end
end
return {fired, known}
"""


# A run's window is its lifetime: its id must not depend on startedAt, which an entry
# arriving late with an earlier timestamp moves (the message still carries it).
class RunAlerts:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        rules: Sequence[AlertRule],
        *,
        depth_limit: int,
        children_limit: int,
        alert_retention_s: int,
        metrics: UsageMetrics | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.rules = [r for r in rules if r.subject == "run"]
        self._depth = depth_limit
        self._trees = TreeReader(
            redis, keys, depth_limit=depth_limit, children_limit=children_limit, metrics=metrics
        )
        self._ttl_ms = alert_retention_s * 1000
        self._metrics = metrics
        self._fire = redis.register_script(_FIRE_LUA)
        # (tenant, run) whose every level of every rule has fired: nothing left to decide
        self._done: set[tuple[str, str]] = set()
        # alert ids known to have fired (their marker is set): not asked again
        self._fired: set[str] = set()

    async def evaluate(
        self, entries: Sequence[AcceptedEntry], accepted: set[str], now_ms: int
    ) -> int:
        """Evaluate the run rules on every run ``entries`` touched and their ancestors;
        ``accepted`` holds the ids applied by this batch (not duplicates). Returns how
        many alerts fired."""
        if not self.rules or not entries:
            return 0
        fired = 0
        by_tenant: dict[str, list[AcceptedEntry]] = {}
        for e in entries:
            by_tenant.setdefault(e.tenant_id, []).append(e)
        for tenant, batch in by_tenant.items():
            fired += await self._evaluate_tenant(tenant, batch, accepted, now_ms)
        return fired

    async def _evaluate_tenant(
        self, tenant: str, batch: list[AcceptedEntry], accepted: set[str], now_ms: int
    ) -> int:
        touched = list(dict.fromkeys(e.run_id for e in batch))
        graph, starts = await self._trees.read_graph(tenant, touched, with_ancestors=True)
        subjects = [r for r in starts if (tenant, r) not in self._done]
        if not subjects:
            return 0
        by_run: dict[str, list[tuple[int, AcceptedEntry]]] = {}
        for i, e in enumerate(batch):
            by_run.setdefault(e.run_id, []).append((i, e))
        alerts = []
        for run in subjects:
            node = graph.get(run)
            if node is None:
                continue
            members = self._trees.members(run, graph)
            totals = sum_totals(graph[m].totals for m in members)
            all_fired = True
            for rule in self.rules:
                reached = _RANK[level_of(rule, totals)]
                for lv, threshold in rule.levels:
                    if reached < _RANK[lv]:
                        all_fired = False
                        continue
                    aid = alert_id(tenant, rule.name, "run", run, "run", 0, lv)
                    if aid in self._fired:
                        continue
                    mine = sorted(
                        (pair for m in members for pair in by_run.get(m, ())),
                        key=lambda pair: pair[0],
                    )
                    alerts.append(
                        self._alert(tenant, run, node, rule, lv, threshold, totals,
                                    [e for _, e in mine] or batch[-1:], accepted, now_ms)
                    )  # fmt: skip
            if all_fired:
                self._done.add((tenant, run))
        if not alerts:
            return 0
        fired, known = await self._fire(keys=[], args=[msgpack.packb(alerts)])
        if len(self._fired) > 100_000:
            self._fired.clear()
        self._fired.update(fired)
        self._fired.update(known)
        return len(fired)

    def _alert(
        self,
        tenant: str,
        run: str,
        node: Node,
        rule: AlertRule,
        level: str,
        threshold: Decimal,
        totals: Totals,
        mine: list[AcceptedEntry],
        accepted: set[str],
        now_ms: int,
    ) -> list[object]:
        entry_id, value = _crossing(rule, level, totals, mine, accepted)
        aid = alert_id(tenant, rule.name, "run", run, "run", 0, level)
        text = plain(value) or "0"
        alert = {
            "alertId": aid,
            "rule": rule.name,
            "level": level,
            "tenantId": tenant,
            "subject": {"type": "run", "id": run},
            "window": {"kind": "run", "start": node.started or 0, "end": None},
            "metric": rule.metric,
            "observed": text,
            "threshold": plain(threshold),
            "triggeredAt": now_ms,
            "entryId": entry_id,
            "message": f"{rule.name}: run {run} (with its sub-agents) reached {text} "
            f"{rule.metric} ({level} threshold {plain(threshold)})",
        }
        k = self._keys
        indexes = [k.alerts(tenant), k.alerts_by_run(tenant, run)]
        if node.user:
            indexes.append(k.alerts_by_user(tenant, node.user))
        return [
            k.alert_marker(tenant, aid),
            k.alert(tenant, aid),
            json.dumps(alert),
            aid,
            now_ms,
            self._ttl_ms,
            indexes,
            k.outbox(ALERTS_OUTBOX),
            run,
        ]


def _crossing(
    rule: AlertRule,
    level: str,
    after: Totals,
    mine: list[AcceptedEntry],
    accepted: set[str],
) -> tuple[str, Decimal]:
    """The entry of the batch (in batch order) whose application made ``level`` hold, and
    the tree's value right after it: the tree's total before the batch is its total now
    minus what the batch's applied entries in it added. When that does not add up (the
    batch linked a sub-tree in, or another worker wrote to the tree meanwhile, or this is
    a replay), the batch's last entry in the tree and the value now. ``mine`` is the
    batch's entries in the tree, in batch order (never empty)."""
    added = [e for e in mine if e.entry_id in accepted]
    cost = sum(e.cost_pico for e in added)
    tokens = sum(e.tokens.total for e in added if e.tokens is not None)
    ok = sum(1 for e in added if e.kind == "tool" and e.success)
    failed = sum(1 for e in added if e.kind == "tool" and not e.success)
    before = Totals(
        after.cost_pico - cost,
        after.tokens - tokens,
        after.tool_ok - ok,
        after.tool_failed - failed,
    )
    target = _RANK[level]
    running = before
    for e in added:
        running = Totals(
            running.cost_pico + e.cost_pico,
            running.tokens + (e.tokens.total if e.tokens is not None else 0),
            running.tool_ok + (1 if e.kind == "tool" and e.success else 0),
            running.tool_failed + (1 if e.kind == "tool" and not e.success else 0),
        )
        if _RANK[level_of(rule, running)] >= target > _RANK[level_of(rule, before)]:
            return e.entry_id, observed(rule, running)
    return mine[-1].entry_id, observed(rule, after)
