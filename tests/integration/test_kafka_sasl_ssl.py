"""Kafka over SASL_SSL (and SSL with a client certificate) and Redis over rediss://, the
way managed services are reached (README "Managed Kafka and Redis").

A Kafka of its own with those listeners and a TLS-only Redis with a password
(tests/integration/secure_services.py) serve a real worker configured only through the
``USAGE_KAFKA_*`` / ``USAGE_REDIS_*`` settings: SCRAM-SHA-512 for its consumers, producers,
admin, probe and Faust's own connection, the CA file for both TLS connections. Entries come
from the Python client (SCRAM-SHA-256, and over the SSL listener with an encrypted client
key) and the TypeScript client (PLAIN), and must reach the rollups; an alert must come back
through the relay's transactional producer. A wrong password stops a worker at start-up
with one line naming the settings, and both clients fail fast; an untrusted certificate is
named as such. No password may appear in a log.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr
from redis.exceptions import ConnectionError as RedisConnectionError

from processor.connections import explain_kafka_failure, kafka_options, redis_client
from processor.settings import ENV_PREFIX, Settings
from tests.integration.harness import WorkerProcess, stack_settings, unique_settings, wait_for
from tests.integration.secure_services import (
    CLIENT_KEY_PASSWORD,
    KEYSTORE_PASSWORD,
    PLAIN_USERS,
    REDIS_PASSWORD,
    SCRAM_USERS,
    Pki,
    SecureKafka,
    TlsRedis,
    make_pki,
    secure_kafka,
    tls_redis,
)
from tests.typescript_client import DIST, TS_DIR, ensure_built, node_tools
from usage_client import KafkaSecurity, UsageRecorder, UsageRecorderError

KEY = "sasl-test-key"
TENANT = "sasl-tenant"
AUTH = {"Authorization": f"Bearer {KEY}"}
WRONG_PASSWORD = "not-the-Passw0rd"
SECRETS = [*SCRAM_USERS.values(), *PLAIN_USERS.values(), REDIS_PASSWORD, CLIENT_KEY_PASSWORD]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pki, SecureKafka, TlsRedis]]:
    root = tmp_path_factory.mktemp("secure-services")
    pki = make_pki(root / "pki")
    local = stack_settings(root / "unused-stack")
    with (
        secure_kafka(root / "kafka", pki, local.cache_dir, local.kafka_version) as kafka,
        tls_redis(root / "redis", pki) as redis_server,
    ):
        yield pki, kafka, redis_server


def _worker_settings(
    pki: Pki, kafka: SecureKafka, redis_server: TlsRedis, password: str = SCRAM_USERS["alice"]
) -> Settings:
    return unique_settings(
        kafka.sasl_ssl_bootstrap,
        redis_server.url,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="alice",
        kafka_sasl_password=SecretStr(password),
        kafka_ssl_cafile=pki.ca,
        redis_password=SecretStr(REDIS_PASSWORD),
        redis_ssl_ca_file=pki.ca,
        api_keys=SecretStr(f"{KEY}:{TENANT}"),
    )


def _ts_env(pki: Pki, user: str, password: str) -> dict[str, str]:
    return {
        "USAGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "USAGE_KAFKA_SASL_MECHANISM": "PLAIN",
        "USAGE_KAFKA_SASL_USERNAME": user,
        "USAGE_KAFKA_SASL_PASSWORD": password,
        "USAGE_KAFKA_SSL_CAFILE": str(pki.ca),
    }


async def _run_roundtrip(env: dict[str, str], timeout: float = 90) -> tuple[int, str, str]:
    """``node dist/scripts/roundtrip.js`` (tests/integration/test_typescript_client.py) with
    ``env`` on top of a process environment without USAGE_* variables."""
    node, _npm = node_tools()
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    proc = await asyncio.create_subprocess_exec(
        node,
        str(DIST / "scripts" / "roundtrip.js"),
        cwd=TS_DIR,
        env={**base, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"roundtrip.js did not finish within {timeout}s", pytrace=False)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _rollup(http: httpx.AsyncClient, run: str, count: int) -> dict[str, Any] | None:
    r = await http.get(f"/v1/runs/{run}/rollup")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc if doc["entryCount"] >= count else None


async def _alerts_for(settings: Settings, run_id: str, timeout: float) -> set[str]:
    """Levels of the alerts about ``run_id`` on the notifications topic, read_committed
    over SASL_SSL, once both levels are there (or what there is at the deadline)."""
    consumer = AIOKafkaConsumer(
        **kafka_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    levels: set[str] = set()
    try:
        topic = settings.topic_notifications
        partitions = await wait_for(consumer.topics, timeout=timeout, message=f"{topic} listed")
        assert topic in partitions
        assigned = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        deadline = time.monotonic() + timeout
        while levels != {"warning", "critical"} and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    alert = json.loads(record.value)
                    if alert["subject"] == {"type": "run", "id": run_id}:
                        levels.add(alert["level"])
    finally:
        await consumer.stop()
    return levels


def _assert_no_secret(text: str, where: str) -> None:
    for secret in [*SECRETS, WRONG_PASSWORD, KEYSTORE_PASSWORD]:
        assert secret not in text, f"a password shows in {where}"


async def test_worker_and_both_clients_through_sasl_ssl_and_rediss(
    secure: tuple[Pki, SecureKafka, TlsRedis], tmp_path: Path
) -> None:
    pki, kafka, redis_server = secure
    await asyncio.to_thread(ensure_built)
    settings = _worker_settings(pki, kafka, redis_server)
    user = f"sasl-user-{uuid.uuid4().hex[:8]}"
    py_run, mtls_run = f"py-scram-{uuid.uuid4().hex}", f"py-mtls-{uuid.uuid4().hex}"
    ts_runs = {"kafka": f"ts-plain-{uuid.uuid4().hex}", "http": f"ts-http-{uuid.uuid4().hex}"}
    log_path = tmp_path / "worker.log"
    # /readyz answers 200 only once the probe reached Kafka and Redis and the ingest
    # consumer joined its group: all over SASL_SSL and rediss:// from here on
    async with (
        WorkerProcess(settings, log_path) as worker,
        httpx.AsyncClient(base_url=worker.url, timeout=30.0, headers=AUTH) as http,
    ):
        scram = KafkaSecurity(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username="bob",
            sasl_password=SecretStr(SCRAM_USERS["bob"]),
            ssl_cafile=pki.ca,
        )
        async with UsageRecorder(
            kafka.sasl_ssl_bootstrap,
            user_id=user,
            tenant_id=TENANT,
            topic=settings.topic_entries,
            security=scram,
        ) as recorder:
            run = recorder.run(py_run)
            # past the default run-token-budget (80,000 / 100,000): both alerts must come
            # back through the leader's relay (Faust's group, a transactional producer)
            await run.record_tokens("gpt-4o-mini", prompt=150_000, completion=10)
            await run.record_tool("search", duration_ms=12, success=True)
        client_cert = KafkaSecurity(
            security_protocol="SSL",
            ssl_cafile=pki.ca,
            ssl_certfile=pki.client_cert,
            ssl_keyfile=pki.client_key,
            ssl_key_password=SecretStr(CLIENT_KEY_PASSWORD),
        )
        async with UsageRecorder(
            kafka.ssl_bootstrap,
            user_id=user,
            tenant_id=TENANT,
            topic=settings.topic_entries,
            security=client_cert,
        ) as recorder:
            await recorder.run(mtls_run).record_tokens("gpt-4o-mini", prompt=5, completion=1)

        code, out, err = await _run_roundtrip(
            {
                **_ts_env(pki, "carol", PLAIN_USERS["carol"]),
                "USAGE_KAFKA_BOOTSTRAP": kafka.sasl_ssl_bootstrap,
                "USAGE_TOPIC_ENTRIES": settings.topic_entries,
                "USAGE_API_URL": worker.url,
                "USAGE_API_KEY": KEY,
                "RT_TENANT_ID": TENANT,
                "RT_USER_ID": user,
                "RT_RUN_ID_KAFKA": ts_runs["kafka"],
                "RT_RUN_ID_HTTP": ts_runs["http"],
            }
        )
        assert code == 0, f"roundtrip.js exited with {code}\n{out}\n{err}"
        recorded = json.loads(out.strip().splitlines()[-1])
        for transport in ("kafka", "http"):
            assert recorded[transport]["stats"]["delivered"] == 7, recorded[transport]

        expected = {py_run: 2, mtls_run: 1, ts_runs["kafka"]: 6, ts_runs["http"]: 6}
        for run_id, count in expected.items():
            rollup = await wait_for(
                functools.partial(_rollup, http, run_id, count),
                timeout=60,
                interval=0.2,
                message=f"rollup of {run_id} with {count} entries\n{worker.log_tail()}",
            )
            assert rollup["entryCount"] == count, run_id
            assert rollup["userId"] == user and rollup["tenantId"] == TENANT
        own = await _rollup(http, py_run, 2)
        assert own is not None and own["tokens"]["prompt"] == 150_000
        ts = await _rollup(http, ts_runs["kafka"], 6)
        assert ts is not None and ts["tokens"]["prompt"] == 1310  # what roundtrip.ts records

        assert await _alerts_for(settings, py_run, timeout=60) == {"warning", "critical"}

        # the worker's Redis connection verifies the certificate: the system's CAs do not
        # know the test CA, so the same URL without USAGE_REDIS_SSL_CA_FILE is refused
        untrusted = redis_client(settings.model_copy(update={"redis_ssl_ca_file": None}))
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await untrusted.ping()
        await untrusted.aclose()
    _assert_no_secret(log_path.read_text(errors="replace"), "the worker's log")


async def test_a_wrong_password_stops_the_worker_at_start_with_one_clear_line(
    secure: tuple[Pki, SecureKafka, TlsRedis], tmp_path: Path
) -> None:
    pki, kafka, redis_server = secure
    settings = _worker_settings(pki, kafka, redis_server, password=WRONG_PASSWORD)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    started = time.monotonic()
    try:
        await wait_for(lambda: worker.returncode is not None, timeout=30, message="exit")
    finally:
        await worker.aterminate(timeout=5)
    assert worker.returncode == 1
    assert time.monotonic() - started < 30  # an exit, not a retry loop
    log = worker.log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines() if line.startswith("usage-stream:")]
    assert len(lines) == 1, log
    line = lines[0]
    assert f"Kafka at {kafka.sasl_ssl_bootstrap} (USAGE_KAFKA_BOOTSTRAP) rejected the SASL" in line
    for name in ("USAGE_KAFKA_SASL_USERNAME='alice'", "USAGE_KAFKA_SASL_PASSWORD"):
        assert name in line
    assert "USAGE_KAFKA_SASL_MECHANISM=SCRAM-SHA-512" in line
    _assert_no_secret(log, "the worker's log")

    # the Python client: at once, not after start_timeout_s
    wrong = KafkaSecurity(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="bob",
        sasl_password=SecretStr(WRONG_PASSWORD),
        ssl_cafile=pki.ca,
    )
    started = time.monotonic()
    recorder = UsageRecorder(
        kafka.sasl_ssl_bootstrap, user_id="u", start_timeout_s=20, security=wrong
    )
    with pytest.raises(UsageRecorderError, match="rejected the SASL credentials") as info:
        await recorder.start()
    assert time.monotonic() - started < 10
    _assert_no_secret(str(info.value), "the client's error")

    # the TypeScript client: a non-zero exit naming the SASL failure
    await asyncio.to_thread(ensure_built)
    code, _out, err = await _run_roundtrip(
        {
            **_ts_env(pki, "carol", WRONG_PASSWORD),
            "USAGE_KAFKA_BOOTSTRAP": kafka.sasl_ssl_bootstrap,
            "USAGE_TOPIC_ENTRIES": "sasl.wrong.entries",
            "USAGE_API_URL": "http://127.0.0.1:9",
            "RT_TENANT_ID": TENANT,
            "RT_USER_ID": "u",
            "RT_RUN_ID_KAFKA": "r1",
            "RT_RUN_ID_HTTP": "r2",
        },
        timeout=60,
    )
    assert code != 0
    assert "SASL" in err and "cannot connect within" in err, err
    assert "timed out" not in err, err  # failed on the answer, not at the start deadline


async def test_an_untrusted_certificate_or_a_plaintext_port_is_named(
    secure: tuple[Pki, SecureKafka, TlsRedis],
) -> None:
    pki, kafka, redis_server = secure
    settings = _worker_settings(pki, kafka, redis_server)
    from aiokafka.errors import KafkaConnectionError

    # what the worker prints when its topic check cannot bootstrap (aiokafka folds TLS
    # errors into "Unable to bootstrap"; the explanation finds the reason again)
    bootstrap_failed = KafkaConnectionError("Unable to bootstrap from [...]")
    other_ca = settings.model_copy(update={"kafka_ssl_cafile": pki.other_ca})
    line = await explain_kafka_failure(other_ca, bootstrap_failed)
    assert line.startswith(f"TLS with Kafka at {kafka.sasl_ssl_bootstrap}"), line
    assert f"USAGE_KAFKA_SSL_CAFILE={pki.other_ca}" in line and "certificate" in line
    plaintext_port = settings.model_copy(update={"kafka_bootstrap": kafka.plaintext_bootstrap})
    line = await explain_kafka_failure(plaintext_port, bootstrap_failed)
    assert "USAGE_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in line, line

    untrusted = KafkaSecurity(security_protocol="SSL", ssl_cafile=pki.other_ca)
    recorder = UsageRecorder(
        kafka.ssl_bootstrap, user_id="u", start_timeout_s=5, security=untrusted
    )
    with pytest.raises(UsageRecorderError, match=r"over SSL, CA .*other-ca\.pem"):
        await recorder.start()
