"""Fixtures of the integration tests: clients of the session's real redis-server, and what keeps tests apart."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from common.connections import async_client, sync_client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pool() -> str:
    """A pool name of its own for each test: tests share one redis-server."""
    return f"test/pool-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sync_redis(redis_server: str) -> Iterator[redis.Redis]:
    client = sync_client(redis_server)
    yield client
    client.close()


@pytest.fixture
async def aio_redis(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    client = async_client(redis_server)
    yield client
    await client.aclose()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A database of its own (7), emptied before each test: for tests that own every key (routers)."""
    url = redis_server.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.close()
