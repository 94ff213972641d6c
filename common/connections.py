"""Redis clients for both ends of the queue, and what a Redis outage means to the router.

The worker's client is synchronous and lets redis-py's ``ConnectionError`` and ``TimeoutError``
through (the worker loop backs off on them). The router's is asyncio, and ``redis_errors`` turns
those into ``RedisUnavailable`` (503 with ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from common import errors

#: Seconds a client is told to wait when Redis is down.
REDIS_RETRY_AFTER_S = 5.0


def sync_client(url: str, *, socket_timeout: float = 10.0, max_connections: int = 8) -> redis.Redis:
    """A worker-side client: bounded pool, socket timeouts (``socket_timeout`` > the claim block)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        max_connections=max_connections,
    )


def async_client(
    url: str, *, max_connections: int = 64, socket_timeout: float = 5.0, pool_timeout: float = 5.0
) -> aioredis.Redis:
    """A router-side client: a bounded blocking pool and short timeouts, so an outage fails fast."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        # One quick retry heals a connection dropped by a Redis restart; more would only delay the 503.
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=1),
    )
    return aioredis.Redis.from_pool(pool)


@asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Turn a Redis outage into ``RedisUnavailable`` (503 with ``Retry-After``)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise errors.RedisUnavailable(
            "the job queue is unavailable, try again shortly", retry_after=REDIS_RETRY_AFTER_S
        ) from exc
