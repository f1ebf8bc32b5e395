"""What the HTTP views need from the running worker, passed in explicitly."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from processor.metrics import UsageMetrics
from processor.settings import Settings
from processor.store.alert_queries import AlertQueries
from processor.store.budget_queries import BudgetQueries
from processor.store.invoices import InvoiceStore
from processor.store.run_queries import RunQueries
from processor.store.user_queries import UserQueries


@dataclass(frozen=True, slots=True)
class Readiness:
    """Why the worker is or is not ready; ``ready`` only when every part answers."""

    kafka: bool
    redis: bool
    partitions_assigned: bool
    #: False while a batch has failed to apply for longer than USAGE_APPLY_STALL_SECONDS
    applying: bool = True
    detail: str = ""

    @property
    def ready(self) -> bool:
        return self.kafka and self.redis and self.partitions_assigned and self.applying


#: Epoch milliseconds now.
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


#: Publish (key, value) messages to a topic and wait until the broker acknowledged all.
Publish = Callable[[str, Sequence[tuple[bytes | None, bytes]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ApiContext:
    settings: Settings
    runs: RunQueries
    registry: CollectorRegistry
    readiness: Callable[[], Awaitable[Readiness]]
    publish: Publish | None = None
    #: The worker's metrics; HTTP ingest counts its rejections there (None: not counted).
    metrics: UsageMetrics | None = None
    #: Whether the broker answered the last probe; HTTP ingest answers 503 at once when
    #: not (None: unknown, publish and see)
    kafka_up: Callable[[], bool] | None = None
    #: Users' windows and billing pages; the user and billing-users routes are only
    #: registered when set
    users: UserQueries | None = None
    #: Invoices; the invoice routes are only registered when set
    invoices: InvoiceStore | None = None
    #: Alerts stored by the batch step; GET /v1/alerts is only registered when set
    alerts: AlertQueries | None = None
    #: The live budget check; GET /v1/budgets is only registered when set
    budgets: BudgetQueries | None = None
    #: "Now" of the dashboard's current month and of generated invoices' generatedAt
    clock: Clock = wall_clock_ms
