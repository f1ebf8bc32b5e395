"""How a batch that keeps failing to apply shows: counted, one line per change, a stall."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from processor import consumer
from processor.consumer import ApplyFailures
from processor.metrics import UsageMetrics


def test_failures_are_counted_logged_once_and_reported_as_a_stall(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [100.0]
    monkeypatch.setattr(consumer.time, "monotonic", lambda: clock[0])
    metrics = UsageMetrics(CollectorRegistry())
    failures = ApplyFailures(metrics, stall_after_s=30)
    caplog.set_level(logging.INFO, logger="processor.consumer")
    for _ in range(5):
        failures.failed(ConnectionError("redis away"), "t[0] offsets 0-99")
        clock[0] += 5
    assert failures.stalled_for() == 0.0  # 25 s: not yet a stall
    clock[0] += 10
    failures.failed(ConnectionError("redis away"), "t[0] offsets 0-99")
    failures.failed(ConnectionError("redis away"), "t[0] offsets 0-99")
    assert failures.stalled_for() == 35.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(warnings) == 1 and len(errors) == 1
    assert "t[0] offsets 0-99" in errors[0].getMessage()
    assert metrics.registry.get_sample_value("usage_batch_apply_failures_total") == 7
    failures.succeeded()
    assert failures.stalled_for() == 0.0 and failures.attempts == 0
    assert "ingest resumed after 7 failed attempts" in caplog.records[-1].getMessage()
