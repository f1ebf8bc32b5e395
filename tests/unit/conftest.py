"""Fixtures of the unit tests that need a real redis-server (one per session, no mocks)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from processor.store.runs import RunStore
from tests.unit.api_support import make_store, redis_server, unique_prefix


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix: each test sees an empty key space."""
    return unique_prefix()


@pytest.fixture
def store(redis: Redis, prefix: str) -> RunStore:
    return make_store(redis, prefix)
