"""A real worker with USAGE_METRICS_PORT set: /metrics, /healthz and /readyz answer on the
metrics port only, the API only on the API port, and both listeners close on SIGTERM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from processor.batch_pipeline import now_ms
from processor.settings import Settings
from processor.stack.ports import pick_port
from tests.integration.harness import WorkerProcess, create_topics, produce, wait_for

OPERATIONS = ("/metrics", "/healthz", "/readyz")
_ACCEPTED = re.compile(r'^usage_entries_total\{kind="tokens",outcome="accepted"\} (\S+)$', re.M)


async def test_operations_endpoints_answer_on_the_metrics_port_only(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(
        update={"metrics_port": pick_port(exclude={settings.api_port}), "api_keys": None}
    )
    assert settings.operations_apart
    await create_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await worker.wait_ready(timeout=90)  # polls /readyz on the metrics port
        async with (
            httpx.AsyncClient(base_url=worker.url, timeout=5.0) as api,
            httpx.AsyncClient(base_url=worker.ops_url, timeout=5.0) as ops,
        ):
            for path in OPERATIONS:
                answer = await api.get(path)
                assert answer.status_code == 404, (path, answer.text)
            assert (await ops.get("/healthz")).status_code == 200
            ready = await ops.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
            assert (await ops.get("/v1/runs")).status_code == 404

            # the metrics port shows the worker's live registry: entries applied now count
            run = f"{settings.app_id}-r"
            entry = {"id": f"{run}-1", "kind": "tokens", "runId": run, "userId": "u",
                     "timestamp": now_ms() - 1000, "model": "gpt-4o-mini",
                     "tokens": {"prompt": 10, "completion": 5}}  # fmt: skip
            await produce(
                settings, settings.topic_entries, [(run.encode(), json.dumps(entry).encode())]
            )

            async def accepted() -> float:
                found = _ACCEPTED.search((await ops.get("/metrics")).text)
                return float(found.group(1)) if found else 0.0

            assert await wait_for(accepted, timeout=30, message="entry counted") == 1.0
            rollup = await api.get(f"/v1/runs/{run}/rollup")
            assert rollup.status_code == 200 and rollup.json()["entryCount"] == 1
    except BaseException:
        await worker.aterminate(timeout=10)
        raise

    code = await worker.aterminate(timeout=30)
    assert code == 0, f"exit code {code} after SIGTERM\n{worker.log_tail(80)}"
    for url in (worker.url, worker.ops_url):
        async with httpx.AsyncClient(timeout=1.0) as http:
            try:
                await http.get(url + "/")
            except httpx.HTTPError:
                continue
        raise AssertionError(f"{url} still answers after the worker stopped")
