"""Redis reads and writes of the async job API beyond the queue protocol.

Idempotency keys, a queued job's position, and the job's event channel (``keys.job_events``),
which the workers publish to and the events route listens on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from common import keys
from common.connections import redis_errors
from common.schemas import JobStatus

#: Seconds to wait for Redis to confirm a subscription.
SUBSCRIBE_TIMEOUT_S = 5.0

# Delete the key only while it still names this job (a retry may have bound it since).
_UNBIND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class JobTracker:
    """``redis`` serves short commands; ``events`` (a pool of its own) one pub/sub connection per stream."""

    def __init__(self, redis: aioredis.Redis, events: aioredis.Redis, *, scan_max: int) -> None:
        self.redis = redis
        self.events = events
        self.scan_max = scan_max
        self._unbind = redis.register_script(_UNBIND_LUA)

    async def lookup(self, key: str) -> str | None:
        """The job id an idempotency key names, if any."""
        async with redis_errors():
            raw = await self.redis.get(keys.idempotency(key))
        return None if raw is None else _text(raw)

    async def bind(self, key: str, job_id: str) -> str | None:
        """Bind the key to ``job_id`` unless it is bound; returns the job it already named (None: bound now)."""
        async with redis_errors():
            for _ in range(3):
                if await self.redis.set(keys.idempotency(key), job_id, nx=True, ex=keys.RESULT_TTL_S):
                    return None
                raw = await self.redis.get(keys.idempotency(key))
                if raw is not None:
                    return _text(raw)
        return None  # pragma: no cover (the key expired three times in a row)

    async def unbind(self, key: str, job_id: str) -> None:
        """Free the key when its job could not be enqueued, so a retry makes a new one."""
        async with redis_errors():
            await self._unbind(keys=[keys.idempotency(key)], args=[job_id])

    async def position(self, job_id: str) -> int | None:
        """Jobs ahead of this one on the stream it waits on (waiting or in hand); None once it left it.

        A job parked behind its key's fair share has its own key's jobs ahead of it: those on the
        pool's streams and those parked before it (it moves up as they settle).
        """
        async with redis_errors():
            found = await self.redis.hmget(keys.job_entry(job_id), ["stream", "entry_id", "pool", "tenant"])
            stream, entry_id, pool, tenant = (None if v is None else _text(v) for v in found)
            if stream is None or entry_id is None:
                return None
            if pool is not None and tenant is not None and stream == keys.pool_parked(pool):
                return await self._parked_position(pool, tenant, entry_id)
            pipe = self.redis.pipeline(transaction=False)
            # Streams are bounded (queue_max per pool), so this range is short.
            pipe.xrange(stream, "-", f"({entry_id}", count=self.scan_max)
            pipe.xrange(stream, entry_id, entry_id, count=1)
            ahead, mine = await pipe.execute()
        return len(ahead) if mine else None

    async def _parked_position(self, pool: str, tenant: str, entry_id: str) -> int | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.tenant_streamed(pool, tenant))
        pipe.lpos(keys.tenant_parked(pool, tenant), entry_id)
        streamed, index = await pipe.execute()
        return None if index is None else int(streamed) + int(index)

    async def announce(self, status: JobStatus) -> None:
        """Publish a state the router set itself (a cancel before any worker took the job)."""
        async with redis_errors():
            await self.redis.publish(keys.job_events(status.job_id), status.model_dump_json())

    @asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[PubSub]:
        """The job's event channel, subscribed (read the stored status *after* this to miss nothing)."""
        pubsub = self.events.pubsub()
        try:
            async with redis_errors():
                await pubsub.subscribe(keys.job_events(job_id))
                # Take the confirmation now: read later, it would look like a quiet second and
                # send the caller to the stored status, past messages already waiting behind it.
                await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
            pubsub.ignore_subscribe_messages = True
            yield pubsub
        finally:
            # Shielded: a client that goes away cancels the stream, and an unshielded close would
            # then stop at its first await and never give the connection back to the pool.
            with anyio.move_on_after(5, shield=True), suppress(redis.ConnectionError, redis.TimeoutError):
                await pubsub.aclose()
