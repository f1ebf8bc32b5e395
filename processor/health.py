"""Is Redis there, is Kafka there: probed every second, one log line per change of state.

Readiness (`/readyz`) and HTTP ingest read the last answers instead of probing per
request, so an outage shows within a probe interval plus a probe timeout (under 5 s) and
a flood of requests does not become a flood of probes. aiokafka logs every failed
reconnect attempt; the worker keeps those below its log level (see processor.cli) and
reports outages here instead: once when a dependency goes away, once when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaClient
from mode import Service
from redis.asyncio import Redis

from processor.metrics import UsageMetrics

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0


class DependencyMonitor(Service):  # type: ignore[misc]
    def __init__(
        self,
        kafka_bootstrap: str,
        redis: Redis,
        metrics: UsageMetrics | None = None,
        kafka_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._bootstrap = kafka_bootstrap
        #: TLS / SASL keyword arguments (processor.connections.kafka_options)
        self._kafka_options = dict(kafka_options or {})
        self._redis = redis
        self._metrics = metrics
        #: dependency -> reachable at the last probe (None: not probed yet)
        self.reachable: dict[str, bool | None] = {"kafka": None, "redis": None}
        self._down_since: dict[str, float] = {}
        self._client: AIOKafkaClient | None = None

    async def on_start(self) -> None:
        await self.check()
        self.add_future(self._probe_forever())

    async def on_stop(self) -> None:
        if self._client is not None:
            await self._client.close()

    def up(self, name: str) -> bool:
        return bool(self.reachable.get(name))

    async def _probe_forever(self) -> None:
        while not self.should_stop:
            await asyncio.sleep(PROBE_INTERVAL_S)
            await self.check()

    async def check(self) -> None:
        redis_ok, kafka_ok = await asyncio.gather(self._probe_redis(), self._probe_kafka())
        self._record("redis", redis_ok)
        self._record("kafka", kafka_ok)

    def _record(self, name: str, ok: bool) -> None:
        before = self.reachable[name]
        self.reachable[name] = ok
        if self._metrics is not None:
            # every probe, not only changes: the gauge is what alerting rules read
            self._metrics.dependency(name, ok)
        if ok == before:
            return
        if not ok:
            self._down_since[name] = time.monotonic()
            log.warning("%s is unreachable; retrying quietly until it is back", name)
        elif before is False:
            down = time.monotonic() - self._down_since.pop(name, time.monotonic())
            log.info("%s is reachable again (after %.1f s)", name, down)

    async def _probe_redis(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), timeout=PROBE_TIMEOUT_S))
        except Exception:  # any failure means "not reachable"
            return False

    async def _probe_kafka(self) -> bool:
        """A metadata request on a client kept between probes (a fresh one per probe
        would open a connection every second)."""
        try:
            if self._client is None:
                self._client = AIOKafkaClient(
                    **{**self._kafka_options, "bootstrap_servers": self._bootstrap},
                    request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
                )
                await asyncio.wait_for(self._client.bootstrap(), timeout=PROBE_TIMEOUT_S)
            ok = await asyncio.wait_for(
                self._client.force_metadata_update(), timeout=PROBE_TIMEOUT_S
            )
            return bool(ok)
        except Exception:  # any failure means "not reachable"
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):  # closing a broken client may fail too
                    await client.close()
            return False
