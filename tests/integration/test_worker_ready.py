"""A real worker subprocess: ready, alive, exporting metrics, and stopping cleanly on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import httpx

from processor.settings import Settings
from tests.integration.harness import WorkerProcess, create_topics

#: ``mode.Worker.execute_from_commandline`` ends with ``SystemExit(EX_OK)`` after a
#: signal-initiated shutdown, and ``processor.cli`` adds nothing on top: a clean stop is 0.
CLEAN_EXIT_CODES = {0}


async def test_worker_ready_health_metrics_and_clean_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    await create_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await worker.wait_ready(timeout=90)
        async with httpx.AsyncClient(base_url=worker.url, timeout=5.0) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            body = ready.json()
            assert body["status"] == "ready"
            assert body["kafka"] is True and body["redis"] is True
            assert body["partitionsAssigned"] is True

            health = await http.get("/healthz")
            assert health.status_code == 200, health.text

            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            text = metrics.text
            assert "# TYPE usage_entries_total counter" in text
            assert 'usage_entries_total{kind="tokens",outcome="accepted"} 0.0' in text
            assert "usage_dead_letters_total" in text
    except BaseException:
        await worker.aterminate(timeout=10)
        raise

    # terminate() escalates to SIGKILL after the deadline, which would show as -9 here
    code = await worker.aterminate(timeout=30)
    log = worker.log_tail(80)
    assert code in CLEAN_EXIT_CODES, f"exit code {code} after SIGTERM\n{log}"
    assert "Traceback" not in worker.log_path.read_text(errors="replace"), log

    # nothing listens any more
    async with httpx.AsyncClient(timeout=1.0) as http:
        try:
            await http.get(worker.url + "/healthz")
        except httpx.HTTPError:
            pass
        else:  # pragma: no cover - a listener survived the worker
            raise AssertionError("the API still answers after the worker stopped")
