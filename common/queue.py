"""The queue protocol between the router and the workers, over Redis. Both sides live here.

- A pool (one base model) has one stream, ``keys.pool_stream(pool)``, read by its workers
  through the consumer group ``keys.WORKER_GROUP``. An entry's field ``job`` holds a ``Job``.
- A worker acknowledges *and deletes* an entry once the job is settled, so ``XLEN`` counts the
  jobs waiting or in hand: that is the bound the router enforces (429 past it).
- A job claimed by a worker that died stays in the group's pending list; a live worker takes it
  over after a lease (``reclaim``). Past ``max_deliveries`` it goes to the dead-letter stream and
  gets a failed result, so nobody waits for it forever.
- A result is a hash at ``keys.job_result`` (``meta``: ``JobResult`` JSON, ``image``: bytes),
  written once: the first writer wins. Then ``keys.job_done`` gets one element, which wakes the
  router blocked on it.

The worker side (``WorkerQueue``) is synchronous and lets redis-py's ``ConnectionError`` and
``TimeoutError`` through (the worker loop backs off on them). The router side (``JobQueue``)
is asyncio and turns them into ``RedisUnavailable`` (503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from common import errors, keys
from common.schemas import Job, JobResult, JobStatus, WorkerState

log = logging.getLogger(__name__)

#: Dead-letter streams keep about this many entries (approximate trim).
DEAD_LETTER_MAXLEN = 10_000
#: Seconds a client is told to wait when Redis is down.
REDIS_RETRY_AFTER_S = 5.0
#: Worker ids whose heartbeat is older than this are dropped from a pool's set.
_PRUNE_WORKERS_S = 3600.0
_RECLAIM_BATCH = 16

# Atomic: refuse past the bound, else enqueue, mark queued, remember where the entry is.
_SUBMIT_LUA = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
redis.call('HSET', KEYS[3], 'pool', ARGV[5], 'entry_id', id)
redis.call('EXPIRE', KEYS[3], ARGV[4])
return id
"""

# Atomic: delete the entry only while no worker holds it (not in the group's pending list).
_UNQUEUE_LUA = """
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if ok and #pending > 0 then return 0 end
local n = redis.call('XDEL', KEYS[1], ARGV[2])
if n == 1 then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4]) end
return n
"""

# First writer wins; then wake the waiter and set the terminal status.
_PUBLISH_LUA = """
if redis.call('HSETNX', KEYS[1], 'meta', ARGV[1]) == 0 then return 0 end
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'image', ARGV[3]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('RPUSH', KEYS[2], '1')
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[4])
redis.call('PUBLISH', KEYS[4], ARGV[5])
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _terminal_status(result: JobResult) -> JobStatus:
    return JobStatus(
        job_id=result.job_id,
        state=result.status,
        worker_id=result.worker_id,
        error=result.error,
        error_type=result.error_type,
    )


def _read_result(raw: dict[Any, Any]) -> tuple[JobResult, bytes | None] | None:
    meta = raw.get(b"meta")
    if meta is None:
        return None
    return JobResult.model_validate_json(meta), raw.get(b"image")


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


# --- worker side --------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One job handed to this worker: its stream entry, the job, and how often it was delivered."""

    entry_id: str
    job: Job
    deliveries: int


class WorkerQueue:
    """A worker's end of its pool's queue (synchronous redis-py)."""

    def __init__(self, redis: redis.Redis, pool: str, worker_id: str, *, max_deliveries: int = 3) -> None:
        self.redis = redis
        self.pool = pool
        self.worker_id = worker_id
        self.max_deliveries = max_deliveries
        self.stream = keys.pool_stream(pool)
        self._publish = redis.register_script(_PUBLISH_LUA)

    def ensure_group(self) -> None:
        """Create the pool's stream and consumer group if missing (idempotent)."""
        try:
            self.redis.xgroup_create(self.stream, keys.WORKER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def claim(self, block_ms: int) -> list[Delivery]:
        """Take the next new job, waiting up to ``block_ms``; malformed entries are dead-lettered."""
        reply: Any = self.redis.xreadgroup(
            keys.WORKER_GROUP, self.worker_id, {self.stream: ">"}, count=1, block=block_ms
        )
        out: list[Delivery] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                delivery = self._delivery(_text(entry_id), fields, 1)
                if delivery is not None:
                    out.append(delivery)
        return out

    def reclaim(self, min_idle_ms: int) -> list[Delivery]:
        """Take over jobs idle past ``min_idle_ms`` whose consumer is dead (no heartbeat).

        Call it between jobs: this worker's own pending entries count as orphans of an earlier
        process with the same id. A job delivered more than ``max_deliveries`` times is
        dead-lettered with a failed result instead of being returned. Dead consumers left with
        nothing pending are removed from the group.
        """
        pending: Any = self.redis.xpending_range(
            self.stream, keys.WORKER_GROUP, min="-", max="+", count=_RECLAIM_BATCH, idle=min_idle_ms
        )
        if not pending:
            self._forget_dead_consumers(min_idle_ms)
            return []
        consumers = {_text(p["consumer"]) for p in pending} - {self.worker_id}
        alive = self._alive(sorted(consumers))
        out: list[Delivery] = []
        for p in pending:
            if _text(p["consumer"]) in alive:
                continue
            entry_id = _text(p["message_id"])
            # min_idle_ms again: of two workers reclaiming the same entry, only the first gets it.
            claimed: Any = self.redis.xclaim(
                self.stream, keys.WORKER_GROUP, self.worker_id, min_idle_ms, [entry_id]
            )
            for claimed_id, fields in claimed:
                if fields is None:
                    continue
                deliveries = int(p["times_delivered"]) + 1
                delivery = self._delivery(_text(claimed_id), fields, deliveries)
                if delivery is None:
                    continue
                if deliveries > self.max_deliveries:
                    self._dead_letter_job(delivery)
                else:
                    log.info(
                        "event=reclaimed job=%s from=%s deliveries=%d",
                        delivery.job.id,
                        _text(p["consumer"]),
                        deliveries,
                    )
                    out.append(delivery)
        return out

    def is_cancelled(self, job_id: str) -> bool:
        """Whether the router cancelled the job (nobody waits for it any more)."""
        return bool(self.redis.exists(keys.job_cancel(job_id)))

    def set_status(self, status: JobStatus) -> None:
        """Record the job's latest state and publish it on the job's event channel."""
        raw = status.model_dump_json()
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.job_status(status.job_id), raw, ex=keys.RESULT_TTL_S)
        pipe.publish(keys.job_events(status.job_id), raw)
        pipe.execute()

    def publish_result(self, result: JobResult, image: bytes | None) -> bool:
        """Write the job's result once and wake its waiter; False when a result was already written."""
        status = _terminal_status(result).model_dump_json()
        written = self._publish(
            keys=[
                keys.job_result(result.job_id),
                keys.job_done(result.job_id),
                keys.job_status(result.job_id),
                keys.job_events(result.job_id),
            ],
            args=[
                result.model_dump_json(),
                "1" if image is not None else "0",
                image or b"",
                keys.RESULT_TTL_S,
                status,
            ],
        )
        return bool(written)

    def ack(self, entry_id: str) -> None:
        """Settle an entry: acknowledge and delete it, so the stream length counts live jobs only."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(self.stream, keys.WORKER_GROUP, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()

    def heartbeat(self, state: WorkerState, ttl_s: float) -> None:
        """Announce this worker: its state expires after ``ttl_s`` unless renewed."""
        now = time.time()
        members = keys.pool_workers(self.pool)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.worker_state(self.worker_id), state.dumps(), px=max(1, int(ttl_s * 1000)))
        pipe.zadd(members, {self.worker_id: now})
        pipe.zremrangebyscore(members, "-inf", now - _PRUNE_WORKERS_S)
        pipe.execute()

    def deregister(self) -> None:
        """Leave the pool now instead of waiting for the heartbeat to expire."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.worker_state(self.worker_id))
        pipe.zrem(keys.pool_workers(self.pool), self.worker_id)
        pipe.execute()

    # --- helpers ---

    def _forget_dead_consumers(self, min_idle_ms: int) -> None:
        # Worker ids change with every process; without this the group's consumer list only grows.
        consumers: Any = self.redis.xinfo_consumers(self.stream, keys.WORKER_GROUP)
        idle = [
            _text(c["name"])
            for c in consumers
            if int(c["pending"]) == 0 and int(c["idle"]) >= min_idle_ms and _text(c["name"]) != self.worker_id
        ]
        alive = self._alive(idle)
        for name in idle:
            if name not in alive:
                self.redis.xgroup_delconsumer(self.stream, keys.WORKER_GROUP, name)

    def _alive(self, worker_ids: list[str]) -> set[str]:
        if not worker_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in worker_ids:
            pipe.exists(keys.worker_state(worker_id))
        return {w for w, n in zip(worker_ids, pipe.execute(), strict=True) if n}

    def _delivery(self, entry_id: str, fields: dict[Any, Any], deliveries: int) -> Delivery | None:
        try:
            job = Job.from_fields(fields)
        except (ValueError, ValidationError) as exc:
            self._dead_letter_malformed(entry_id, fields, exc)
            return None
        return Delivery(entry_id=entry_id, job=job, deliveries=deliveries)

    def _dead_letter(self, entry_id: str, raw: bytes | str, reason: str, deliveries: int) -> None:
        self.redis.xadd(
            keys.dead_letter_stream(self.pool),
            {
                "job": raw,
                "entry_id": entry_id,
                "reason": reason,
                "deliveries": deliveries,
                "worker_id": self.worker_id,
                "at": time.time(),
            },
            maxlen=DEAD_LETTER_MAXLEN,
            approximate=True,
        )

    def _dead_letter_job(self, delivery: Delivery) -> None:
        job = delivery.job
        message = f"the job failed on {delivery.deliveries - 1} deliveries and was dropped"
        log.warning("event=dead_letter job=%s deliveries=%d", job.id, delivery.deliveries - 1)
        self._dead_letter(delivery.entry_id, job.model_dump_json(), "max_deliveries", delivery.deliveries - 1)
        self.publish_result(
            JobResult(
                job_id=job.id,
                status="failed",
                error=message,
                error_type=errors.JobFailed.error_type,
                worker_id=self.worker_id,
            ),
            None,
        )
        self.ack(delivery.entry_id)

    def _dead_letter_malformed(self, entry_id: str, fields: dict[Any, Any], exc: Exception) -> None:
        raw = fields.get(b"job", fields.get("job", b""))
        log.warning("event=dead_letter entry=%s reason=malformed error=%s", entry_id, type(exc).__name__)
        self._dead_letter(entry_id, raw, "malformed", 1)
        job_id = _salvage_job_id(raw)
        if job_id is not None:
            self.publish_result(
                JobResult(
                    job_id=job_id,
                    status="failed",
                    error="the job could not be read",
                    error_type=errors.JobFailed.error_type,
                    worker_id=self.worker_id,
                ),
                None,
            )
        self.ack(entry_id)


def _salvage_job_id(raw: bytes | str) -> str | None:
    """The ``id`` of a job that fails validation, so its waiter learns of the failure."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    job_id = data.get("id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= 64 else None


# --- router side --------------------------------------------------------------------------


@asynccontextmanager
async def _redis_errors() -> AsyncIterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise errors.RedisUnavailable(
            "the job queue is unavailable, try again shortly", retry_after=REDIS_RETRY_AFTER_S
        ) from exc


class JobQueue:
    """The router's end of the pools' queues (redis.asyncio).

    ``waiter`` is the client used for the blocking wait on results (one connection per waiting
    request); give it its own pool so waiters cannot starve short commands. Default: ``redis``.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        worker_ttl_s: float,
        queue_max: int,
        waiter: aioredis.Redis | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.redis = redis
        self.waiter = waiter or redis
        self.worker_ttl_s = worker_ttl_s
        self.queue_max = queue_max
        self.poll_s = poll_s
        self._submit = redis.register_script(_SUBMIT_LUA)
        self._unqueue = redis.register_script(_UNQUEUE_LUA)

    async def ping(self) -> None:
        """Raise ``RedisUnavailable`` unless Redis answers."""
        async with _redis_errors():
            await self.redis.ping()

    async def live_workers(self, pool: str) -> list[WorkerState]:
        """Workers of the pool whose heartbeat has not expired."""
        async with _redis_errors():
            # The key's own expiry is the truth; the score window (with slack for clock skew) only prefilters.
            since = time.time() - 2 * self.worker_ttl_s
            ids: Any = await self.redis.zrangebyscore(keys.pool_workers(pool), since, "+inf")
            if not ids:
                return []
            raws = await self.redis.mget([keys.worker_state(_text(i)) for i in ids])
        states = []
        for raw in raws:
            if raw is None:
                continue
            try:
                states.append(WorkerState.loads(raw))
            except (ValueError, ValidationError):
                log.warning("event=bad_heartbeat pool=%s", pool)
        return states

    async def depth(self, pool: str) -> int:
        """Jobs of the pool waiting or in hand."""
        async with _redis_errors():
            return int(await self.redis.xlen(keys.pool_stream(pool)))

    async def submit(self, job: Job) -> str:
        """Enqueue the job on its pool; returns the stream entry id.

        Raises ``NoWorker`` when no live worker serves the pool and ``QueueFull`` at the bound,
        both with ``retry_after``.
        """
        workers = [w for w in await self.live_workers(job.pool) if w.status != "draining"]
        if not workers:
            raise errors.NoWorker(
                f"no worker serves {job.pool} right now", retry_after=max(1.0, self.worker_ttl_s)
            )
        queued = JobStatus(job_id=job.id, state="queued").model_dump_json()
        async with _redis_errors():
            entry_id = await self._submit(
                keys=[keys.pool_stream(job.pool), keys.job_status(job.id), keys.job_entry(job.id)],
                args=[self.queue_max, job.model_dump_json(), queued, keys.RESULT_TTL_S, job.pool],
            )
        if entry_id is None:
            raise errors.QueueFull(
                f"the queue of {job.pool} is full ({self.queue_max} jobs)",
                retry_after=drain_estimate(self.queue_max, workers),
            )
        return _text(entry_id)

    async def wait(
        self,
        job_id: str,
        timeout_s: float,
        *,
        stop: Callable[[], Awaitable[bool]] | None = None,
    ) -> tuple[JobResult, bytes | None] | None:
        """The job's result and image, or None past ``timeout_s`` (or once ``stop()`` says so).

        A Redis outage during the wait is ridden out until the deadline: the job was accepted,
        and its result is read once Redis is back.
        """
        deadline = time.monotonic() + timeout_s
        done = keys.job_done(job_id)
        while True:
            remaining = deadline - time.monotonic()
            try:
                found = await self.result(job_id)
                if found is not None or remaining <= 0:
                    return found
                if stop is not None and await stop():
                    return None
                # Short blocks keep each read under the socket timeout and let ``stop`` be polled.
                async with _redis_errors():
                    await self.waiter.blpop([done], timeout=max(0.01, min(remaining, self.poll_s)))
            except errors.RedisUnavailable:
                if remaining <= 0:
                    return None
                log.warning("event=wait_redis_down job=%s", job_id)
                await asyncio.sleep(min(remaining, self.poll_s / 2))

    async def result(self, job_id: str) -> tuple[JobResult, bytes | None] | None:
        """The job's published result and image, or None when there is none (yet)."""
        async with _redis_errors():
            raw = await self.redis.hgetall(keys.job_result(job_id))
        return _read_result(raw)

    async def status(self, job_id: str) -> JobStatus | None:
        """The job's latest state, or None when unknown or expired."""
        async with _redis_errors():
            raw = await self.redis.get(keys.job_status(job_id))
        return None if raw is None else JobStatus.model_validate_json(raw)

    async def cancel(self, job_id: str) -> bool:
        """Cancel the job: workers drop it unrun. True when it was removed from its stream unclaimed."""
        async with _redis_errors():
            await self.redis.set(keys.job_cancel(job_id), "1", ex=keys.CANCEL_TTL_S)
            where = await self.redis.hmget(keys.job_entry(job_id), ["pool", "entry_id"])
            if where[0] is None or where[1] is None:
                return False
            cancelled = JobStatus(job_id=job_id, state="cancelled").model_dump_json()
            removed = await self._unqueue(
                keys=[keys.pool_stream(_text(where[0])), keys.job_status(job_id)],
                args=[keys.WORKER_GROUP, _text(where[1]), cancelled, keys.RESULT_TTL_S],
            )
        return bool(removed)


def drain_estimate(depth: int, workers: list[WorkerState], *, cap_s: float = 60.0) -> float:
    """Seconds until a full queue has room again, from the workers' measured inference time."""
    times = [w.inference_s for w in workers if w.inference_s]
    per_job = sum(times) / len(times) if times else 1.0
    seconds = depth * per_job / max(1, len(workers)) / 4  # a quarter drains: room for a retry
    return float(min(cap_s, max(1.0, math.ceil(seconds))))
