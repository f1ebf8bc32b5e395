"""What every recorder shares: run defaults, ``run()`` and the custom metric registry."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from usage_client.errors import EntryValidationError, UsageRecorderError
from usage_client.ids import new_id
from usage_client.run import MetricDefinition, RunHandle

__all__ = ["RecorderBase"]

log = logging.getLogger("usage_client")


class RecorderBase:
    """Defaults of the entries (user, tenant, agent, thread) and the metric registry;
    subclasses provide ``async _submit(entry) -> entry id`` and ``async close()``."""

    def __init__(
        self,
        *,
        user_id: str,
        tenant_id: str | None = None,
        agent_name: str | None = None,
        thread_id: str | None = None,
        strict_metrics: bool = False,
    ) -> None:
        if not user_id:
            raise ValueError("userId: must be a non-empty string")
        self.user_id = user_id
        self.tenant_id = tenant_id
        self.agent_name = agent_name
        self.thread_id = thread_id
        self.strict_metrics = strict_metrics
        self._metrics: dict[str, MetricDefinition] = {}

    async def close(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        try:  # the body's exception wins; a delivery problem is only logged
            await self.close()
        except UsageRecorderError as close_error:
            log.error("usage entries lost while handling another error: %s", close_error)

    def run(
        self,
        run_id: str | None = None,
        *,
        agent_name: str | None = None,
        thread_id: str | None = None,
        parent_run_id: str | None = None,
        user_id: str | None = None,
        tenant_id: str | None = None,
    ) -> RunHandle:
        """A handle for one run; a UUIDv7 run id is generated when ``run_id`` is None."""
        return RunHandle(
            self,
            run_id=run_id or new_id(),
            user_id=user_id or self.user_id,
            tenant_id=tenant_id or self.tenant_id,
            agent_name=agent_name or self.agent_name,
            thread_id=thread_id or self.thread_id,
            parent_run_id=parent_run_id,
        )

    async def _submit(self, entry: dict[str, Any]) -> str:
        """Validate and send (or buffer) one entry; returns its id."""
        raise NotImplementedError

    def define_metric(self, type: str, description: str) -> MetricDefinition:
        """Declare a custom metric type (e.g. ``api_calls``) with a description. With
        ``strict_metrics=True`` only declared types may be recorded."""
        if not isinstance(type, str) or not 1 <= len(type) <= 200:
            raise EntryValidationError("schema", "must be a string of 1..200 characters", "type")
        definition = MetricDefinition(type, description)
        self._metrics[type] = definition
        return definition

    @property
    def metrics(self) -> Mapping[str, MetricDefinition]:
        return dict(self._metrics)

    def _metric_type(self, metric: str | MetricDefinition) -> str:
        name = metric.type if isinstance(metric, MetricDefinition) else metric
        if self.strict_metrics and name not in self._metrics:
            raise EntryValidationError(
                "schema", f"metric {name!r} is not defined; call define_metric() first", "type"
            )
        return name
