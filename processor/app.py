"""The Faust application: one worker runs the ingest consumer and the HTTP API.

Faust supplies the worker: service lifecycle and signals, the embedded web server, its
sensors, and the leader-only invoice crontab (its leader election is the one thing Faust's
own consumer group is kept for; docs/decisions.md). The hot ingest path is an aiokafka consumer
group service (processor/consumer.py) applying one atomic Lua call per batch to Redis;
docs/decisions.md has the measurements behind that split.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from processor.api.context import ApiContext, Readiness
from processor.api.operations_server import OperationsServer
from processor.batch_pipeline import IngestPipeline, retention_of
from processor.connections import faust_broker_credentials, kafka_options, redis_client
from processor.consumer import IngestConsumer
from processor.domain.alert_rules import load_rules
from processor.domain.pricing import load_catalog
from processor.health import DependencyMonitor
from processor.invoicing import SCHEDULE, catch_up, generate_period, previous_period
from processor.metrics import UsageMetrics
from processor.outbox import Entry as OutboxEntry
from processor.outbox import OutboxRelay
from processor.publisher import Publisher
from processor.settings import Settings
from processor.store.alert_queries import AlertQueries
from processor.store.budget_queries import BudgetQueries
from processor.store.invoices import InvoiceStore
from processor.store.keys import Keys
from processor.store.run_queries import RunQueries
from processor.store.runs import ALERTS_OUTBOX, INVOICES_OUTBOX, RunStore
from processor.store.user_queries import UserQueries

log = logging.getLogger(__name__)


class UsageApp(faust.App):  # type: ignore[misc]
    """faust.App plus the services and state every view shares."""

    settings: Settings
    api_context: ApiContext | None = None
    extra_services: list[Any] = []

    def on_init_dependencies(self) -> Any:
        # The publisher starts before the consumer, so dead letters always have a way out.
        return [*super().on_init_dependencies(), *self.extra_services]

    def on_webserver_init(self, web: Any) -> None:
        if self.api_context is not None:
            from processor.api.ops import metrics_handler
            from processor.api.routes import setup_routes

            apart = self.settings.operations_apart
            setup_routes(web.web_app, self.api_context, operations=not apart)
            if not apart:
                web.web_app.router.add_get("/metrics", metrics_handler)


def create_app(settings: Settings) -> UsageApp:
    # Faust insists on a data directory; the worker has no tables, so nothing is kept
    # there: a throw-away one per process, removed at exit, leaves nothing behind.
    datadir = Path(tempfile.mkdtemp(prefix=f"usage-stream-{settings.app_id}-"))
    atexit.register(shutil.rmtree, datadir, ignore_errors=True)
    app = UsageApp(
        settings.app_id,
        broker=[f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap.split(",")],
        # Faust's own consumer and producer (group membership, leader election) need the
        # same TLS / SASL as every other Kafka client of the worker
        broker_credentials=faust_broker_credentials(settings),
        # Faust's only topic is the leader election's (one partition, created by the worker)
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        web_enabled=True,
        # only our API and /metrics on the port: Faust's own debug pages (routing, table
        # contents, graph, stats) would expose other tenants' data without a key
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_bind=settings.api_host,
        web_port=settings.api_port,
        web_host=settings.api_host,
        datadir=str(datadir),
        # how soon a dead leader's crontab and outbox relays move to another worker
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout_ms / 3000),
    )
    app.settings = settings

    registry = CollectorRegistry()
    # Faust's Prometheus sensor without its /metrics page (setup_prometheus_sensors would
    # add that page to the API port): the worker mounts /metrics itself, on the API port
    # or on USAGE_METRICS_PORT.
    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, "faust"))
    metrics = UsageMetrics(registry=registry, label_cap=settings.label_cap)

    redis = redis_client(settings, decode_responses=True)
    rules = load_rules(settings.alert_rules_file)
    metrics.alert_rules((rule.name, (level for level, _ in rule.levels)) for rule in rules)
    runs = RunStore(
        redis,
        Keys(settings.key_prefix),
        dedup_ttl_s=settings.dedup_retention_seconds,
        entry_ttl_s=settings.entry_retention_seconds,
        retention=retention_of(settings),
        rules=rules,
        alert_retention_s=settings.alert_retention_seconds,
        depth_limit=settings.subagent_depth_limit,
        children_limit=settings.subagent_children_limit,
    )
    catalog = load_catalog(settings.prices_file)

    publisher = Publisher(settings)
    pipeline = IngestPipeline(
        settings=settings,
        catalog=catalog,
        runs=runs,
        metrics=metrics,
        publish_dead_letters=lambda letters: publisher.publish(settings.topic_dlq, letters),
    )
    ingest = IngestConsumer(settings, pipeline, runs, metrics)
    monitor = DependencyMonitor(
        settings.kafka_bootstrap, redis, metrics=metrics, kafka_options=kafka_options(settings)
    )
    # Invoices and adjustments decided in Redis reach Kafka through the outbox, relayed by
    # the leader only (two relays would fence each other's transactions in turn).
    relay = OutboxRelay(
        settings, redis, INVOICES_OUTBOX, settings.topic_invoices, active=lambda: app.is_leader()
    )
    alerts_relay = OutboxRelay(
        settings,
        redis,
        ALERTS_OUTBOX,
        settings.topic_notifications,
        active=lambda: app.is_leader(),
        on_published=lambda sent: metrics.alerts_published(
            map(_alert_labels, sent), time.time_ns() // 1_000_000
        ),
    )
    metrics.alerts_pending.set_function(alerts_relay.pending)
    app.extra_services = [monitor, publisher, ingest, relay, alerts_relay]

    async def readiness() -> Readiness:
        details = [f"{name} unreachable" for name in ("kafka", "redis") if not monitor.up(name)]
        partitions_ok = ingest.joined.is_set()
        if not partitions_ok:
            details.append("waiting for partition assignment")
        stalled = ingest.failures.stalled_for()
        if stalled:
            details.append(
                f"a batch has failed to apply for {stalled:.0f} s "
                f"({ingest.failures.attempts} attempts, last error {ingest.failures.last_error})"
            )
        return Readiness(
            kafka=monitor.up("kafka"),
            redis=monitor.up("redis"),
            partitions_assigned=partitions_ok,
            applying=not stalled,
            detail="; ".join(details),
        )

    invoices = InvoiceStore(redis, Keys(settings.key_prefix))
    queries = RunQueries(
        redis,
        Keys(settings.key_prefix),
        children_limit=settings.subagent_children_limit,
        metrics=metrics,
    )
    app.api_context = ApiContext(
        settings=settings,
        runs=queries,
        registry=registry,
        readiness=readiness,
        publish=publisher.publish,
        metrics=metrics,
        kafka_up=lambda: monitor.up("kafka"),
        users=UserQueries(redis, Keys(settings.key_prefix)),
        invoices=invoices,
        alerts=AlertQueries(redis, Keys(settings.key_prefix)),
        budgets=BudgetQueries(
            redis,
            Keys(settings.key_prefix),
            rules,
            depth_limit=settings.subagent_depth_limit,
            children_limit=settings.subagent_children_limit,
        ),
    )
    if settings.operations_apart:
        from processor.api.routes import operations_app

        # First of the worker's own services: it stops after the ingest consumer, so the
        # probes and a last scrape still answer while the batch in flight drains.
        app.extra_services.insert(
            0,
            OperationsServer(
                operations_app(app.api_context), settings.api_host, settings.operations_port
            ),
        )
    _schedule_invoices(app, redis, Keys(settings.key_prefix), invoices, metrics, settings)
    return app


def _alert_labels(entry: OutboxEntry) -> tuple[str, str, int]:
    alert = json.loads(entry.value)
    return str(alert["rule"]), str(alert["level"]), int(alert["triggeredAt"])


def _schedule_invoices(
    app: UsageApp,
    redis: Redis,
    keys: Keys,
    invoices: InvoiceStore,
    metrics: UsageMetrics,
    settings: Settings,
) -> None:
    """The previous month's invoices on day 2, 00:00 UTC, on the leader only (Faust's
    crontab and leader election); and at start-up, the due period if no run finished it."""

    @app.crontab(SCHEDULE, timezone=UTC, on_leader=True)
    async def generate_due_invoices() -> None:
        period = previous_period(datetime.now(UTC))
        try:
            await generate_period(redis, keys, invoices, period, metrics=metrics)
        except Exception:
            # the catch-up of the next start, or the operator command, finishes it
            log.exception("scheduled invoice generation of %s failed", period)

    @app.task  # type: ignore[untyped-decorator]
    async def catch_up_invoices() -> None:
        delay = 1.0
        while True:
            try:
                await catch_up(redis, keys, invoices, metrics=metrics)
                return
            except Exception as exc:
                log.warning("invoice catch-up failed, retrying in %.0f s: %r", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(settings.retry_max_seconds, 1.0))
