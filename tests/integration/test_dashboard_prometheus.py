"""The Grafana dashboard's queries against a real Prometheus scraping a real worker.

A worker consumes a simulated fleet (with dead letters, an unknown model and alert rules
that fire), the Debian ``prometheus`` binary scrapes it every second with the shipped
alerting rules loaded, and every panel's PromQL goes through Prometheus' HTTP API with
Grafana's variables substituted: each must parse and return data. The alerting rules must
evaluate without error, and the ones this load trips must be active.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiokafka import AIOKafkaProducer

from processor.settings import Settings
from processor.simulate import Fleet, encode
from processor.stack.ports import pick_port
from processor.stack.process import log_tail
from tests.integration.harness import WorkerProcess, create_topics
from tests.observability import (
    DASHBOARD,
    PROMETHEUS_DIR,
    dashboard_queries,
    debian_binary,
    substitute,
)

DEADLINE_S = 60.0

#: rules that fire all along under the fleet: most runs pass 2,000 tokens in their first
#: LLM calls, so alerts keep being published and the publish-lag panel has data
ALERT_RULES = """\
rules:
  - name: run-tokens-test
    subject: run
    window: run
    metric: tokens
    thresholds: {warning: "2000", critical: "8000"}
  - name: user-hourly-tokens-test
    subject: user
    window: hour
    metric: tokens
    thresholds: {warning: "20000"}
"""

#: what the load must have produced, beyond series existing (a panel of zeros passes)
LOAD_CHECKS = {
    "accepted entries": 'sum(usage_entries_total{outcome="accepted"}) > 0',
    "dead letters": "sum(usage_dead_letters_total) > 0",
    "unpriced tokens": "sum(usage_unpriced_tokens_total) > 0",
    "alerts published": "sum(usage_alerts_total) > 0",
    "cost": "sum(usage_cost_usd_total) > 0",
    "dependencies up": "min(usage_dependency_up) == 1",
    "consumer lag reported": "count(usage_consumer_lag) > 0",
}
#: alerting rules this load trips (``for: 0``): they must be active in Prometheus
EXPECTED_ACTIVE = {"UsageDeadLetters", "UsageUnpricedTokens"}


def _scrape_job() -> dict[str, Any]:
    """The shipped scrape job (its name is what the rules' up{job=...} expects)."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job: dict[str, Any] = config["scrape_configs"][0]
    return job


@contextlib.contextmanager
def prometheus(tmp_path: Path, worker_port: int) -> Iterator[str]:
    job = _scrape_job()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": job["job_name"],
                "metrics_path": job.get("metrics_path", "/metrics"),
                "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
            }
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = pick_port()
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                debian_binary("prometheus"),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode in (0, -15), f"prometheus exited with {proc.returncode}\n" + log_tail(
        log_path, 40
    )


def _unpriced_entry(n: int) -> tuple[bytes, bytes]:
    entry = {
        "id": str(uuid.uuid4()),
        "kind": "tokens",
        "runId": f"unpriced-run-{n}",
        "userId": "unpriced-user",
        "timestamp": time.time_ns() // 1_000_000,
        "model": "usage-stream-test-unpriced",
        "tokens": {"prompt": 120, "completion": 30},
    }
    return encode(entry)


#: one of each dead-letter flavour the panels group by
_INVALID = [b"{not json", b'{"kind": "tokens", "runId": 42}']


@contextlib.asynccontextmanager
async def load(settings: Settings) -> AsyncIterator[list[int]]:
    """Produce fleet entries (about 300/s), dead letters and unpriced entries until the
    block ends; yields [messages sent so far]."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)
    await producer.start()
    sent = [0]
    fleet = Fleet(
        seed=11, run_prefix=f"dash-{uuid.uuid4().hex[:6]}", start_ms=time.time_ns() // 1_000_000
    )

    async def produce_forever() -> None:
        n = 0
        while True:
            n += 1
            batch = [encode(e) for e in fleet.entries(30)]
            batch.append(_unpriced_entry(n))
            batch.append((b"bad", _INVALID[n % len(_INVALID)]))
            for key, value in batch:
                await producer.send(settings.topic_entries, value=value, key=key)
            sent[0] += len(batch)
            # pacing the offered load, not waiting for anything to happen
            await asyncio.sleep(0.1)

    task = asyncio.create_task(produce_forever())
    try:
        yield sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await producer.stop()


async def _query(http: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    response = await http.get("/api/v1/query", params={"query": expr})
    body = response.json()
    # a parse error is a 400 with errorType bad_data: fail at once, no retrying
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


async def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    settings: Settings, tmp_path: Path
) -> None:
    debian_binary("prometheus")
    rules_file = tmp_path / "alert-rules.yml"
    rules_file.write_text(ALERT_RULES)
    settings = settings.model_copy(update={"alert_rules_file": rules_file})
    dashboard = json.loads(DASHBOARD.read_text())
    job_name = _scrape_job()["job_name"]
    variables = {
        "job": job_name,
        "instance": ".*",  # the "All" value of the multi-value variable
        "__rate_interval": "1m",
        "__range": "5m",
    }
    queries = {title: substitute(expr, variables) for title, expr in dashboard_queries(dashboard)}
    assert len(queries) >= 10, queries

    await create_topics(settings)
    started = time.monotonic()
    async with (
        WorkerProcess(settings, tmp_path / "worker.log") as worker,
        load(settings) as sent,
    ):
        with prometheus(tmp_path, settings.api_port) as prom_url:
            async with httpx.AsyncClient(base_url=prom_url, timeout=5.0) as http:
                deadline = started + DEADLINE_S
                pending = {**queries, **LOAD_CHECKS}
                last: dict[str, object] = {}
                while pending:
                    try:
                        ready = (await http.get("/-/ready")).status_code == 200
                    except httpx.HTTPError as exc:
                        ready, last["prometheus"] = False, repr(exc)
                    if ready:
                        last.pop("prometheus", None)
                        for title, expr in list(pending.items()):
                            result = await _query(http, expr)
                            if result and _has_number(result):
                                del pending[title]
                            else:
                                last[title] = result
                    if pending and time.monotonic() > deadline:
                        failed = {t: (pending[t], last.get(t)) for t in pending}
                        raise AssertionError(
                            f"no data within {DEADLINE_S:.0f} s ({sent[0]} messages sent) for "
                            f"{json.dumps(failed, indent=1, default=str)}\n{worker.log_tail(30)}"
                        )
                    if pending:
                        await asyncio.sleep(0.5)

                async def rules_state() -> tuple[list[str], set[str]]:
                    groups = (await http.get("/api/v1/rules")).json()["data"]["groups"]
                    rules = [r for g in groups for r in g["rules"]]
                    unhealthy = [
                        f"{r['name']}: {r['health']} {r.get('lastError', '')}"
                        for r in rules
                        if r["health"] != "ok"
                    ]
                    active = {r["name"] for r in rules if r.get("state") in ("pending", "firing")}
                    return unhealthy, active

                # every rule evaluated without error, and the ones this load trips fire
                while True:
                    unhealthy, active = await rules_state()
                    if not unhealthy and active >= EXPECTED_ACTIVE:
                        break
                    assert time.monotonic() < deadline + 15, (unhealthy, active)
                    await asyncio.sleep(0.5)
                # the worker is up and both dependencies answer: none of those may fire
                assert not active & {
                    "UsageWorkerDown",
                    "UsageNoWorkerUp",
                    "UsageRedisUnreachable",
                    "UsageKafkaUnreachable",
                }, active
