"""The metrics port: ``/metrics``, ``/healthz`` and ``/readyz`` on a listener of their own.

``/metrics`` names every tenant's models, tools and custom types, so with
``USAGE_METRICS_PORT`` set the worker serves it (and the probes, which Prometheus and the
kubelet reach on the same internal port) apart from the tenant-facing API port. Faust's
web server has one listener, so this is a second plain aiohttp server, started and stopped
as a service of the worker.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from mode import Service

log = logging.getLogger(__name__)

#: How long a stopping worker lets a scrape or probe in progress finish; they answer in
#: milliseconds, and the shutdown budget (terminationGracePeriodSeconds) is short.
_SHUTDOWN_TIMEOUT_S = 2.0


class OperationsServer(Service):  # type: ignore[misc]
    def __init__(self, app: web.Application, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._app = app
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        # No access log: Prometheus and the kubelet call every few seconds, and the API
        # port (Faust's server) logs no requests either.
        runner = web.AppRunner(
            self._app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        self._runner = runner
        # A port already taken fails the start of the worker, loudly, here.
        await web.TCPSite(runner, self._host, self._port).start()
        log.info("metrics, health and readiness on http://%s:%d", self._host, self._port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
