"""Reads behind the budget check: a user's current windows and a run's tree, live."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from processor.domain.alert_rules import AlertRule
from processor.domain.budgets import Budget, Totals, budget
from processor.domain.windows import (
    DAY_MS,
    F_COST_TOTAL,
    F_TOKENS_TOTAL,
    F_TOOL_FAIL,
    F_TOOL_OK,
    HOUR_MS,
    hour_info,
)
from processor.store.keys import Keys
from processor.store.tree_totals import TreeReader

_FIELDS = (F_COST_TOTAL, F_TOKENS_TOTAL, F_TOOL_OK, F_TOOL_FAIL)


class BudgetQueries:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        rules: Sequence[AlertRule],
        *,
        depth_limit: int,
        children_limit: int,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._user_rules = [r for r in rules if r.subject == "user"]
        self._run_rules = [r for r in rules if r.subject == "run"]
        self._trees = TreeReader(
            redis, keys, depth_limit=depth_limit, children_limit=children_limit
        )

    async def user(self, tenant: str, user_id: str, now_ms: int) -> list[Budget]:
        """Every user rule on the hour, day and month containing ``now_ms`` (UTC)."""
        if not self._user_rules:
            return []
        info = hour_info(now_ms // HOUR_MS)
        k = self._keys
        windows = {
            "hour": (k.user_hour(tenant, user_id, info.hour), info.hour_end_ms - HOUR_MS,
                     info.hour_end_ms),
            "day": (k.user_day(tenant, user_id, info.day), info.day_end_ms - DAY_MS,
                    info.day_end_ms),
            "month": (k.user_month(tenant, user_id, info.month), info.month_start_ms,
                      info.month_end_ms),
        }  # fmt: skip
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, _, _ in windows.values():
                pipe.hmget(key, list(_FIELDS))
            replies = await pipe.execute()
        totals = {
            kind: Totals(*(int(v or 0) for v in reply))
            for kind, reply in zip(windows, replies, strict=True)
        }
        return [
            budget(
                rule,
                ("user", user_id),
                (rule.window, windows[rule.window][1], windows[rule.window][2]),
                totals[rule.window],
            )
            for rule in self._user_rules
        ]

    async def run(self, tenant: str, run_id: str) -> list[Budget]:
        """Every run rule on the run's tree: the run and every sub-agent run reachable from
        it, each once, cycles cut (the tree of ``tokensIncludingSubAgents``)."""
        if not self._run_rules:
            return []
        totals, node = await self._trees.totals(tenant, run_id)
        start = node.started if node is not None else None
        return [
            budget(rule, ("run", run_id), ("run", start, None), totals) for rule in self._run_rules
        ]
