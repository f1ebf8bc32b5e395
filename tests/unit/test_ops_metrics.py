"""The operational metrics the alerting rules read: dependencies up (what /readyz reports),
consumer lag per partition, zero series of the configured alert rules; and the README's
metrics table names every usage_* metric."""

from __future__ import annotations

import re
from typing import Any, cast

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from processor.consumer import IngestConsumer
from processor.health import DependencyMonitor
from processor.metrics import UsageMetrics
from tests.integration.harness import build_settings
from tests.observability import ROOT, documented_names


async def test_dependency_up_follows_every_probe() -> None:
    metrics = UsageMetrics(CollectorRegistry())
    monitor = DependencyMonitor("127.0.0.1:1", cast(Any, None), metrics=metrics)
    answers = {"redis": True, "kafka": False}

    async def redis_probe() -> bool:
        return answers["redis"]

    async def kafka_probe() -> bool:
        return answers["kafka"]

    monitor._probe_redis = redis_probe  # type: ignore[method-assign]
    monitor._probe_kafka = kafka_probe  # type: ignore[method-assign]

    def up(name: str) -> float | None:
        return metrics.registry.get_sample_value("usage_dependency_up", {"dependency": name})

    assert up("redis") is None  # not probed yet: no figure rather than a false one
    await monitor.check()
    assert (up("redis"), up("kafka")) == (1, 0)
    answers.update(redis=False, kafka=True)
    await monitor.check()
    assert (up("redis"), up("kafka")) == (0, 1)
    assert not monitor.up("redis") and monitor.up("kafka")


class _FakeKafka:
    def __init__(self, ends: dict[TopicPartition, int]) -> None:
        self.ends = ends

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in partitions}


async def test_consumer_lag_per_owned_partition_and_forgotten_on_revoke() -> None:
    metrics = UsageMetrics(CollectorRegistry())
    settings = build_settings(topic_entries="t.entries")
    ingest = IngestConsumer(settings, cast(Any, None), cast(Any, None), metrics)
    p0, p1, p2 = (TopicPartition("t.entries", p) for p in range(3))
    ingest._consumer = cast(Any, _FakeKafka({p0: 1500, p1: 40, p2: 900}))
    ingest.assigned = {p0, p1, p2}
    # p2: Redis held nothing for it and no batch of it is applied yet: no figure
    ingest._held = {p0: 1000, p1: 40, p2: None}

    def lag(tp: TopicPartition) -> float | None:
        return metrics.registry.get_sample_value(
            "usage_consumer_lag", {"topic": tp.topic, "partition": str(tp.partition)}
        )

    await ingest._report_lag()
    assert (lag(p0), lag(p1), lag(p2)) == (500, 0, None)

    await ingest.on_revoked({p0})
    assert lag(p0) is None  # its new owner reports it
    assert lag(p1) == 0
    await ingest._report_lag()
    assert lag(p0) is None


def test_configured_alert_rules_have_zero_series() -> None:
    metrics = UsageMetrics(CollectorRegistry())
    metrics.alert_rules([("run-token-budget", ("warning", "critical")), ("spend", ("critical",))])
    value = metrics.registry.get_sample_value
    assert value("usage_alerts_total", {"rule": "run-token-budget", "level": "warning"}) == 0
    assert value("usage_alerts_total", {"rule": "spend", "level": "critical"}) == 0
    assert value("usage_alerts_total", {"rule": "spend", "level": "warning"}) is None
    metrics.alert("spend", "critical")
    assert value("usage_alerts_total", {"rule": "spend", "level": "critical"}) == 1


def test_readme_metrics_table_names_every_metric() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Metrics\n")
    section = readme[start : readme.index("\n## ", start + 1)]
    # the first cell of each row of the table (a cell may name several metrics)
    first_cells = re.findall(r"^\| ([^|\n]*`usage_[^|\n]*) \|", section, re.M)
    in_table = {name for cell in first_cells for name in re.findall(r"`(usage_[a-z0-9_]+)", cell)}
    names = documented_names()
    assert {"usage_dependency_up", "usage_consumer_lag"} <= names
    assert names - in_table == set(), "metrics missing from the README's Metrics table"
