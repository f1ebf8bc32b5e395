"""Generating a period's invoices for every tenant: the scheduled job, its catch-up at
start-up, and the operator command all run this.

Generation is idempotent (one invoice per tenant, user and period, created only when
absent), so running it late, twice, or from several processes at once is harmless; the
``invdone`` marker only saves a restarted worker from walking a period already done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from processor.metrics import UsageMetrics
from processor.store.invoices import InvoiceStore
from processor.store.keys import Keys

log = logging.getLogger(__name__)

#: Day 2 of each month, 00:00 UTC: the previous month's invoices are due.
SCHEDULE = "0 0 2 * *"


def previous_period(now: datetime) -> str:
    """
    >>> previous_period(datetime(2024, 1, 2, tzinfo=UTC))
    '2023-12'
    """
    year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    return f"{year:04d}-{month:02d}"


def due_period(now: datetime) -> str | None:
    """The period whose invoices are due at ``now`` (the previous month from day 2 on).

    >>> due_period(datetime(2024, 3, 1, 23, 59, tzinfo=UTC)) is None
    True
    >>> due_period(datetime(2024, 3, 2, tzinfo=UTC))
    '2024-02'
    """
    return previous_period(now) if now.day >= 2 else None


@dataclass(frozen=True, slots=True)
class PeriodRun:
    period: str
    tenants: int
    invoices: int
    created: int


async def generate_period(
    redis: Redis,
    keys: Keys,
    store: InvoiceStore,
    period: str,
    *,
    metrics: UsageMetrics | None = None,
    now_ms: int | None = None,
) -> PeriodRun:
    """Invoices of ``period`` for every tenant with usage in it; marks the period done
    when there was any."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    tenants = await store.tenants_of(period)
    invoices = created = 0
    for tenant in tenants:
        got = await store.generate(tenant, period, now)
        invoices += len(got.invoices)
        created += got.created
    if metrics is not None and created:
        metrics.invoices_generated.inc(created)
    if tenants:
        # with no usage found (yet: a fresh Redis still replaying), the next start tries again
        await redis.set(keys.invoices_done(period), str(now))
    log.info(
        "invoices of %s: %d tenant(s), %d invoice(s), %d new", period, len(tenants), invoices,
        created,
    )  # fmt: skip
    return PeriodRun(period, len(tenants), invoices, created)


async def catch_up(
    redis: Redis,
    keys: Keys,
    store: InvoiceStore,
    *,
    metrics: UsageMetrics | None = None,
    now: datetime | None = None,
) -> PeriodRun | None:
    """Generate the due period unless a run already finished it (a worker that was down
    at the scheduled moment, or started after it)."""
    period = due_period(now or datetime.now(UTC))
    if period is None or await redis.exists(keys.invoices_done(period)):
        return None
    return await generate_period(redis, keys, store, period, metrics=metrics)
