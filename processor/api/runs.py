"""Views of runs (CONTRACT §3.1): rollup, raw entries, run listing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from processor.api.auth import tenant_of
from processor.api.context import ApiContext
from processor.api.errors import ApiError, not_found
from processor.api.params import (
    check_range,
    get_bool,
    get_choices,
    get_int,
    get_limit,
    get_str,
)
from processor.domain.counts import CallStats
from processor.domain.fields import us_to_ms
from processor.domain.money import format_usd
from processor.domain.readback import RunRollup, custom_to_wire
from processor.domain.trees import TreeTotals, sum_tree
from processor.store.run_queries import EntryFilter

ENTRY_KINDS: Final = ("tokens", "tool", "subagent", "custom")


def call_stats_to_wire(stats: CallStats) -> dict[str, Any]:
    return {
        "calls": stats.calls,
        "successfulCalls": stats.successful,
        "failedCalls": stats.failed,
        "totalDurationMs": us_to_ms(stats.duration_us),
    }


def call_summary_to_wire(by_name: Mapping[str, CallStats], group: str) -> dict[str, Any]:
    """``{totalCalls, successfulCalls, failedCalls, totalDurationMs, <group>: {name: ...}}``."""
    total = sum(by_name.values(), CallStats())
    return {
        "totalCalls": total.calls,
        "successfulCalls": total.successful,
        "failedCalls": total.failed,
        "totalDurationMs": us_to_ms(total.duration_us),
        group: {name: call_stats_to_wire(s) for name, s in sorted(by_name.items())},
    }


def rollup_to_wire(run: RunRollup, tree: TreeTotals) -> dict[str, Any]:
    """The §3.1 rollup object; ``tree`` holds the totals including sub-agents."""
    return {
        "runId": run.run_id,
        "userId": run.user_id,
        "tenantId": run.tenant_id,
        "agentName": run.agent_name,
        "tokens": run.tokens.to_wire(),
        "tokensByModel": {m: t.to_wire() for m, t in sorted(run.tokens_by_model.items())},
        "costUsd": format_usd(run.cost_pico),
        "costByModel": {m: format_usd(c) for m, c in sorted(run.cost_by_model.items())},
        "tokensIncludingSubAgents": tree.tokens.to_wire(),
        "costIncludingSubAgentsUsd": format_usd(tree.cost_pico),
        "customIncludingSubAgents": custom_to_wire(tree.custom),
        "toolStats": call_summary_to_wire(run.tools, "byTool"),
        "subAgentStats": call_summary_to_wire(run.subagents, "byType"),
        "custom": custom_to_wire(run.custom),
        "subAgentRunIds": sorted(run.children),
        "startedAt": run.started_at,
        "lastUpdatedAt": run.last_updated_at,
        "entryCount": run.entry_count,
    }


def _run_not_found(run_id: str) -> ApiError:
    return not_found(f"run {run_id!r} not found")


class RunViews:
    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx

    async def _rollup_or_404(self, tenant: str, run_id: str) -> RunRollup:
        run = await self._ctx.runs.get_rollup(tenant, run_id)
        if run is None:
            raise _run_not_found(run_id)
        return run

    async def rollup(self, request: web.Request) -> web.Response:
        run_id = request.match_info["runId"]
        include = get_bool(request.query, "includeSubAgents", default=True)
        tenant = tenant_of(request)
        if include:
            # the walk reads the run itself as its first level
            tree = await self._ctx.runs.get_tree(
                tenant, run_id, self._ctx.settings.subagent_depth_limit
            )
            if not tree:
                raise _run_not_found(run_id)
            run, totals = tree[0], sum_tree(tree)
        else:
            run = await self._rollup_or_404(tenant, run_id)
            totals = sum_tree([run])
        return web.json_response(rollup_to_wire(run, totals))

    async def entries(self, request: web.Request) -> web.Response:
        q = request.query
        run_id = request.match_info["runId"]
        kinds = get_choices(q, "kinds", ENTRY_KINDS)
        step_min = get_int(q, "stepMin")
        step_max = get_int(q, "stepMax")
        check_range("stepMin", step_min, "stepMax", step_max)
        start = get_int(q, "start")
        end = get_int(q, "end")
        check_range("start", start, "end", end)
        limit = get_limit(q)
        offset = get_int(q, "offset", default=0)
        assert offset is not None
        where = EntryFilter(kinds=kinds, step_min=step_min, step_max=step_max, start=start, end=end)
        page = await self._ctx.runs.entries_page(
            tenant_of(request), run_id, where, offset=offset, limit=limit
        )
        if page is None:
            raise _run_not_found(run_id)
        return web.json_response({"entries": page.entries, "total": page.total})

    async def list_runs(self, request: web.Request) -> web.Response:
        q = request.query
        user_id = get_str(q, "userId")
        agent_name = get_str(q, "agentName")
        since = get_int(q, "since")
        limit = get_limit(q)
        run_ids = await self._ctx.runs.list_runs(
            tenant_of(request),
            user_id=user_id,
            agent_name=agent_name,
            since=since,
            limit=limit,
        )
        return web.json_response({"runIds": run_ids})
