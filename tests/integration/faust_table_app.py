"""A tiny Faust app counting events by key in a table stored in Redis.

Run as a real worker by ``test_faust_redis_recovery.py`` (and ``scripts``-style by
``bench_faust_redis_store.py``)::

    python -m faust -A tests.integration.faust_table_app worker -l info --web-port N

Configured from the environment:
``FTA_APP_ID``, ``FTA_BROKER`` (host:port), ``FTA_TOPIC``, ``FTA_PARTITIONS``,
``FTA_STORE`` (e.g. ``redis://127.0.0.1:6379/0?prefix=x&flush_interval_ms=50`` or
``memory://``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable

import faust

APP_ID = os.environ.get("FTA_APP_ID", "faust-table-app")
TOPIC = os.environ.get("FTA_TOPIC", "fta-events")
PARTITIONS = int(os.environ.get("FTA_PARTITIONS", "4"))
STORE = os.environ.get("FTA_STORE", "redis://127.0.0.1:6379/0")

app = faust.App(
    APP_ID,
    broker=f"kafka://{os.environ.get('FTA_BROKER', '127.0.0.1:9092')}",
    store="memory://",
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    table_standby_replicas=0,
    broker_commit_interval=1.0,
    web_enabled=os.environ.get("FTA_WEB", "0") == "1",
)
events = app.topic(
    TOPIC,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=PARTITIONS,
)
counts = app.Table("counts", default=int, store=STORE, partitions=PARTITIONS)


@app.agent(events)
async def count(stream: AsyncIterable[bytes]) -> None:
    async for key, _value in stream.items():  # type: ignore[attr-defined]
        counts[key.decode()] += 1
