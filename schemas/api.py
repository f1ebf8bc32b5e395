"""Response (and request) models of the query API (CONTRACT §3).

Costs are plain decimal strings (:data:`schemas.common.UsdStr`); token counts integers;
times epoch ms. Every model serializes with camelCase aliases (``model_dump()`` /
``model_dump_json()``); construct them by field name or alias.

Where §3 does not name the wrapper of a list, it is the plural noun: ``GET /v1/alerts``
answers ``{"alerts": [...]}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from schemas.alert import Alert, AlertSubject
from schemas.common import UsdStr, WireModel
from schemas.entry import UsageEntry
from schemas.errors import RejectionCode
from schemas.invoice import Invoice

__all__ = [
    "AgentUsage",
    "AlertList",
    "ApiError",
    "BillingUser",
    "BillingUsers",
    "CallStats",
    "CostTotals",
    "DailyUsage",
    "Dashboard",
    "DayUsage",
    "EntriesPage",
    "ErrorResponse",
    "IngestError",
    "IngestRejection",
    "IngestRequest",
    "IngestResponse",
    "InvoiceList",
    "ModelUsage",
    "MonthlyUsage",
    "Number",
    "RunList",
    "RunRollup",
    "SubAgentStats",
    "TokenCounts",
    "ToolStats",
    "UserUsage",
]

#: Custom metric values and durations: integers stay integers, fractions are floats.
Number = int | float


# The wire shape of schemas.tokens.TokenCounts (the value type the processor sums and
# serves with its to_wire()); tests/unit/test_tokens.py keeps the two field for field equal.
class TokenCounts(WireModel):
    """Token counts; ``total`` of an entry without ``total`` is prompt + completion."""

    prompt: int = 0
    completion: int = 0
    reasoning: int = 0
    cached: int = 0
    cache_write: int = 0
    total: int = 0


class CallStats(WireModel):
    """Calls of one tool or one sub-agent type."""

    calls: int = 0
    successful_calls: int = 0
    failed_calls: int = 0
    total_duration_ms: Number = 0


class ToolStats(WireModel):
    total_calls: int = 0
    successful_calls: int = 0
    failed_calls: int = 0
    total_duration_ms: Number = 0
    by_tool: dict[str, CallStats] = Field(default_factory=dict)


class SubAgentStats(WireModel):
    total_calls: int = 0
    successful_calls: int = 0
    failed_calls: int = 0
    total_duration_ms: Number = 0
    by_type: dict[str, CallStats] = Field(default_factory=dict)


class RunRollup(WireModel):
    """``GET /v1/runs/{runId}/rollup``."""

    run_id: str
    user_id: str
    tenant_id: str
    agent_name: str | None
    tokens: TokenCounts
    tokens_by_model: dict[str, TokenCounts]
    cost_usd: UsdStr
    cost_by_model: dict[str, UsdStr]
    tokens_including_sub_agents: TokenCounts
    cost_including_sub_agents_usd: UsdStr
    custom_including_sub_agents: dict[str, dict[str, Number]]
    tool_stats: ToolStats
    sub_agent_stats: SubAgentStats
    custom: dict[str, dict[str, Number]] = Field(description="{type: {name: sum of values}}")
    sub_agent_run_ids: list[str]
    started_at: int = Field(description="Smallest timestamp of the run's accepted entries.")
    last_updated_at: int = Field(description="Largest timestamp of the run's accepted entries.")
    entry_count: int


class EntriesPage(WireModel):
    """``GET /v1/runs/{runId}/entries``: raw accepted entries, as received (dump with
    ``exclude_unset=True``), plus ``costUsd`` on tokens entries; ordered by (timestamp, id)."""

    entries: list[UsageEntry]
    total: int


class RunList(WireModel):
    """``GET /v1/runs``: newest first."""

    run_ids: list[str]


class UserUsage(WireModel):
    """``GET /v1/users/{userId}/usage`` (all time)."""

    user_id: str
    tokens: TokenCounts
    cost_usd: UsdStr
    entry_count: int
    run_count: int


class ModelUsage(WireModel):
    tokens: TokenCounts
    cost_usd: UsdStr


class DayUsage(WireModel):
    date: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", description="UTC day.")
    tokens: TokenCounts
    cost_usd: UsdStr
    entry_count: int
    by_model: dict[str, ModelUsage]


class DailyUsage(WireModel):
    """``GET /v1/users/{userId}/usage/daily``: only days with usage, ascending."""

    days: list[DayUsage]


class AgentUsage(WireModel):
    agent: str = Field(description='The entries\' agentName, or "unknown".')
    tokens: TokenCounts
    cost_usd: UsdStr
    calls: int = Field(description="Number of tokens entries (LLM calls).")


class MonthlyUsage(WireModel):
    """``GET /v1/users/{userId}/usage/monthly/{YYYY-MM}``."""

    period: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")
    tokens: TokenCounts
    cost_usd: UsdStr
    entry_count: int = Field(description="Accepted entries of every kind.")
    by_model: dict[str, ModelUsage]
    by_agent: list[AgentUsage] = Field(description="Sorted by cost, descending.")


class CostTotals(WireModel):
    total_tokens: int
    cost_usd: UsdStr


class Dashboard(WireModel):
    """``GET /v1/users/{userId}/dashboard`` for the current UTC month."""

    monthly: CostTotals
    all_time: CostTotals
    average_daily_cost_usd: UsdStr = Field(
        description="Month's cost / current UTC day of month, rounded half-even to 12 places."
    )


class BillingUser(WireModel):
    user_id: str
    total_tokens: int
    cost_usd: UsdStr
    entry_count: int


class BillingUsers(WireModel):
    """``GET /v1/billing/{YYYY-MM}/users``: users with usage in the month, by ``userId``."""

    users: list[BillingUser]
    next_cursor: str | None = Field(
        description="Opaque; pass it as cursor for the next page; null on the last page."
    )


class AlertList(WireModel):
    """``GET /v1/alerts``: newest first by ``triggeredAt`` (ties by ``alertId``, descending)."""

    alerts: list[Alert]
    next_cursor: str | None = Field(
        description="Opaque; pass it as cursor for the next page; null on the last page."
    )


class InvoiceList(WireModel):
    """``POST``/``GET /v1/billing/{YYYY-MM}/invoices``."""

    invoices: list[Invoice]


class IngestRequest(WireModel):
    """``POST /v1/entries`` body: at most 1,000 entries (each validated as in §2)."""

    entries: list[Any] = Field(
        max_length=1000, description="Usage entries; each is validated on its own (§2)."
    )


class IngestError(WireModel):
    code: RejectionCode
    message: str
    field: str | None


class IngestRejection(WireModel):
    index: int
    error: IngestError


class IngestResponse(WireModel):
    """``POST /v1/entries`` response (202)."""

    accepted: int
    rejected: list[IngestRejection]


class ApiError(WireModel):
    code: str
    message: str


class ErrorResponse(WireModel):
    """Every 4xx/5xx answer: ``{"error": {"code", "message"}}``."""

    error: ApiError


class BudgetThresholds(WireModel):
    warning: str | None = Field(description="Plain decimal string; null when not configured.")
    critical: str | None = Field(description="Plain decimal string; null when not configured.")


class BudgetWindow(WireModel):
    """The user's current hour, day or month (UTC), or the run's lifetime (end null)."""

    kind: Literal["hour", "day", "month", "run"]
    start: int | None = Field(description="Epoch ms (inclusive); null for an unknown run.")
    end: int | None = Field(description="Epoch ms (exclusive); null for a run.")


class Budget(WireModel):
    """One rule on one subject: what is observed now, and what remains until critical."""

    rule: str
    subject: AlertSubject
    window: BudgetWindow
    metric: str
    observed: str = Field(description="Plain decimal string (0 for an unknown subject).")
    thresholds: BudgetThresholds
    level: Literal["ok", "warning", "critical"]
    remaining: str = Field(description="Critical (else warning) minus observed, never below 0.")


class Budgets(WireModel):
    """``GET /v1/budgets?userId=&runId=`` (CONTRACT §3.8)."""

    budgets: list[Budget]
    exceeded: bool = Field(description="True when any listed rule is at critical.")
