"""Redis clients for both ends of the queue, and what a Redis outage means to the router.

Redis is either one server at a URL or, with sentinels, a primary that the sentinels name and
that may change (a failover). Both kinds of client come from here, sync and asyncio, with the
same timeouts and bounded pools. With sentinels, redis-py's Sentinel-managed pools ask the
sentinels for the primary whenever they connect, and treat a ``READONLY`` answer (a primary
demoted to replica) as a lost connection, so router and workers follow a failover without
restarting. The URL's password, database and TLS options apply to the primary either way.

The worker's client is synchronous and lets the ``OUTAGES`` through (the worker loop backs off
on them). The router's is asyncio, and ``redis_errors`` turns them into ``RedisUnavailable``
(503 with ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry

from common import errors

#: Seconds a client is told to wait when Redis is down.
REDIS_RETRY_AFTER_S = 5.0

#: What a Redis outage looks like to a client: no connection, no answer in time, or a write
#: refused by a server that is (now) a replica.
OUTAGES: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)

#: Timeouts of a question to a sentinel (which primary?): short, the next sentinel is asked after it.
_SENTINEL_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: the server at ``url``, or the primary that ``sentinels`` name ``master_name``.

    With sentinels, ``url`` gives only the primary's password, database and TLS options.
    """

    url: str = field(repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = "lorafarm"
    sentinel_password: str | None = field(default=None, repr=False)


def sync_client(target: RedisTarget | str, *, socket_timeout: float = 10.0, max_connections: int = 8) -> redis.Redis:
    """A worker-side client: bounded pool, socket timeouts (``socket_timeout`` > the claim block)."""
    target = _target(target)
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
        "max_connections": max_connections,
    }
    if not target.sentinels:
        return redis.Redis.from_url(target.url, **options)
    sentinel = redis.sentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=_sentinel_options(target), **_primary_options(target.url)
    )
    return sentinel.master_for(target.master_name, **options)


def async_client(
    target: RedisTarget | str,
    *,
    max_connections: int = 64,
    socket_timeout: float = 5.0,
    pool_timeout: float = 5.0,
) -> aioredis.Redis:
    """A router-side client: a bounded blocking pool and short timeouts, so an outage fails fast."""
    target = _target(target)
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": pool_timeout,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 30,
        # One quick retry heals a connection dropped by a Redis restart; more would only delay the 503.
        "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=1),
    }
    if not target.sentinels:
        return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(target.url, **options))
    sentinel = aiosentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=_sentinel_options(target), **_primary_options(target.url)
    )
    return sentinel.master_for(target.master_name, connection_pool_class=BlockingSentinelPool, **options)


class BlockingSentinelPool(aiosentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection (up to ``timeout``) instead of failing."""


@asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Turn a Redis outage into ``RedisUnavailable`` (503 with ``Retry-After``)."""
    try:
        yield
    except OUTAGES as exc:
        raise errors.RedisUnavailable(
            "the job queue is unavailable, try again shortly", retry_after=REDIS_RETRY_AFTER_S
        ) from exc


def _target(target: RedisTarget | str) -> RedisTarget:
    return RedisTarget(url=target) if isinstance(target, str) else target


def _primary_options(url: str) -> dict[str, Any]:
    """The URL's connection options without its address (the sentinels give that): password, db, TLS."""
    options = parse_url(url)
    if options.get("connection_class") not in (None, SSLConnection):
        raise ValueError("with sentinels, LORAFARM_REDIS_URL must be redis:// or rediss://")
    for key in ("host", "port"):
        options.pop(key, None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return options


def _sentinel_options(target: RedisTarget) -> dict[str, Any]:
    """How to reach the sentinels: their own password, and TLS as the URL asks for the primary."""
    options: dict[str, Any] = {
        "socket_timeout": _SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
    }
    if target.sentinel_password:
        options["password"] = target.sentinel_password
    primary = _primary_options(target.url)
    if primary.get("ssl"):
        options.update({k: v for k, v in primary.items() if k == "ssl" or k.startswith("ssl_")})
    return options
