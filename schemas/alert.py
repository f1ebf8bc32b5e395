"""Alerts on ``usage.notifications`` (CONTRACT §4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import WireModel

__all__ = ["Alert", "AlertLevel", "AlertSubject", "AlertWindow"]

AlertLevel = Literal["warning", "critical"]


class AlertSubject(WireModel):
    """Who crossed the threshold: a user (``userId``) or a run (``runId``)."""

    type: Literal["user", "run"]
    id: str


class AlertWindow(WireModel):
    """The window the observed value covers; ``end`` is null for a run's lifetime."""

    kind: Literal["day", "month", "hour", "run"]
    start: int = Field(description="Window start, epoch ms (inclusive).")
    end: int | None = Field(description="Window end, epoch ms (exclusive); null for run.")


class Alert(WireModel):
    """One alert; exactly one per (rule, subject, window, level)."""

    alert_id: str = Field(
        description="Deterministic: the same rule + subject + window + level give the same id."
    )
    rule: str
    level: AlertLevel
    tenant_id: str
    subject: AlertSubject
    window: AlertWindow
    metric: str = Field(description="costUsd | tokens | toolFailureRate | ...")
    observed: str = Field(description="Observed value, plain decimal string.")
    threshold: str = Field(description="Threshold of this level, plain decimal string.")
    triggered_at: int = Field(description="Epoch ms.")
    entry_id: str = Field(description="The entry that crossed the threshold.")
    message: str
