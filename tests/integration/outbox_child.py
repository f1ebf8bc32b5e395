"""One outbox relay in a process of its own, for the SIGKILL test.

``python -m tests.integration.outbox_child OUTBOX TOPIC``; settings from ``USAGE_*``.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import redis.asyncio as aioredis

from processor.outbox import OutboxRelay
from processor.settings import load_settings


async def main(outbox: str, topic: str) -> None:
    settings = load_settings()
    redis = aioredis.from_url(settings.redis_url)  # type: ignore[no-untyped-call]
    relay = OutboxRelay(settings, redis, outbox, topic, batch=50)
    await relay.start()
    await relay.wait_until_stopped()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
