"""Shared fixtures.

The real stack (Kafka + Redis) starts at most once per session, and only when a test asks
for it (the ``stack`` fixture, pulled in by ``settings``/``redis_client``). Unit tests never
touch it. Set ``USAGE_TEST_KAFKA_BOOTSTRAP`` and ``USAGE_TEST_REDIS_URL`` to run against
servers you already have; otherwise a LocalStack is started on free loopback ports under a
temporary directory (the Kafka jars come from the normal cache) and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from processor.settings import Settings
from processor.stack import LocalStack, StackInfo
from tests.integration.harness import stack_settings, unique_settings

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[StackInfo]:
    """The real Kafka + Redis for this session (never skipped: no stack, no test run)."""
    bootstrap = os.environ.get("USAGE_TEST_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("USAGE_TEST_REDIS_URL")
    if bootstrap and redis_url:
        yield StackInfo(kafka_bootstrap=bootstrap, redis_url=redis_url)
        return

    state_dir = Path(tempfile.gettempdir()) / f"usage-stream-test-{os.getpid()}"
    local = LocalStack(stack_settings(state_dir), prefer_default_ports=False)
    try:
        info = local.up()
    except Exception as exc:
        with_ci = " (CI)" if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else ""
        try:
            local.down()
        finally:
            pytest.fail(
                f"the real stack could not start{with_ci}; integration tests need it "
                f"(or set USAGE_TEST_KAFKA_BOOTSTRAP and USAGE_TEST_REDIS_URL); "
                f"logs under {state_dir}:\n{exc}",
                pytrace=False,
            )
    try:
        yield info
    finally:
        local.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def settings(stack: StackInfo) -> Settings:
    """Settings of one test: the session's stack, its own app id, topics, key prefix, port."""
    return unique_settings(stack.kafka_bootstrap, stack.redis_url)


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """redis.asyncio client on the test's Redis; the test's keys are deleted afterwards."""
    client = aioredis.from_url(settings.redis_url)  # type: ignore[no-untyped-call]
    try:
        yield client
    finally:
        try:
            keys = [k async for k in client.scan_iter(match=f"{settings.key_prefix}*", count=1000)]
            for start in range(0, len(keys), 500):
                await client.unlink(*keys[start : start + 500])
        finally:
            await client.aclose()
