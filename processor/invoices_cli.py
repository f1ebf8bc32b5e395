"""`usage-stream invoices generate YYYY-MM`: what the scheduled job does, from the shell.

Creates the period's missing invoices for every tenant with usage in it (or one tenant),
then publishes what waits in the invoices outbox, so it also works with no worker
running; with workers running, whichever relay is active publishes each message once.
"""

from __future__ import annotations

import asyncio
import sys

from aiokafka.errors import KafkaError

from processor.connections import explain_kafka_failure, redis_client
from processor.domain.windows import parse_month
from processor.invoicing import generate_period
from processor.outbox import drain
from processor.settings import Settings
from processor.store.invoices import InvoiceStore
from processor.store.keys import Keys
from processor.store.runs import INVOICES_OUTBOX
from processor.topics import ensure_topics


async def _generate(settings: Settings, period: str, publish_timeout_s: float) -> int:
    await ensure_topics(settings)
    redis = redis_client(settings, decode_responses=True)
    keys = Keys(settings.key_prefix)
    try:
        run = await generate_period(redis, keys, InvoiceStore(redis, keys), period)
        print(f"{period}: {run.invoices} invoice(s) for {run.tenants} tenant(s), {run.created} new")
        published = await drain(
            settings, redis, INVOICES_OUTBOX, settings.topic_invoices, publish_timeout_s
        )
        print(f"published {published} message(s) on {settings.topic_invoices}")
    finally:
        await redis.aclose()
    return 0


def generate_invoices(settings: Settings, period: str, publish_timeout_s: float = 60.0) -> int:
    try:
        parse_month(period)
    except ValueError as exc:
        print(f"usage-stream invoices generate: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_generate(settings, period, publish_timeout_s))
    except Exception as exc:
        reason = repr(exc)
        if isinstance(exc, KafkaError):  # rejected credentials, TLS: name the settings
            reason = asyncio.run(explain_kafka_failure(settings, exc))
        print(f"usage-stream invoices generate: failed: {reason}", file=sys.stderr)
        return 1
