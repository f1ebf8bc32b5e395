"""Python client of usage-stream: record usage entries onto Kafka, read rollups over HTTP.

The usage-stream-client distribution: needs only aiokafka and pydantic (plus
usage-stream-schemas, for local validation); it never imports Faust or the processor.

    async with UsageRecorder("localhost:9092", user_id="user-1", agent_name="planner") as rec:
        run = rec.run()
        await run.record_usage("gpt-4o-mini", response.usage, provider="openai")
        async with run.tool("web_search"):
            ...
"""

from usage_client.adapters import (
    TokenUsage,
    from_ai_sdk,
    from_anthropic,
    from_gemini,
    from_openai_chat,
    from_openai_responses,
    to_token_usage,
)
from usage_client.errors import (
    EntryValidationError,
    RunNotFoundError,
    UsageApiError,
    UsageRecorderError,
)
from usage_client.http_transport import HttpUsageRecorder, IngestResult, post_entries
from usage_client.ids import new_id, uuid7, uuid7_time_ms
from usage_client.reader import Budget, BudgetLevel, Budgets, EntriesPage, UsageReader
from usage_client.recorder import RecorderStats, UsageRecorder
from usage_client.run import MetricDefinition, RunHandle, ToolTimer
from usage_client.security import KafkaSecurity

__all__ = [
    "Budget",
    "BudgetLevel",
    "Budgets",
    "EntriesPage",
    "EntryValidationError",
    "HttpUsageRecorder",
    "IngestResult",
    "KafkaSecurity",
    "MetricDefinition",
    "RecorderStats",
    "RunHandle",
    "RunNotFoundError",
    "TokenUsage",
    "ToolTimer",
    "UsageApiError",
    "UsageReader",
    "UsageRecorder",
    "UsageRecorderError",
    "from_ai_sdk",
    "from_anthropic",
    "from_gemini",
    "from_openai_chat",
    "from_openai_responses",
    "new_id",
    "post_entries",
    "to_token_usage",
    "uuid7",
    "uuid7_time_ms",
]
