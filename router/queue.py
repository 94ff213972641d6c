"""The router's end of the pools' queues (redis.asyncio): submit, wait, read, cancel, and what the pools hold.

The protocol both ends follow is described in ``common/protocol.py``. A Redis outage becomes
``RedisUnavailable`` (503 with ``Retry-After``); only ``wait`` rides one out, for a job it has
already accepted. With replicas required (``Replication``), a job is accepted only once they
hold it, and a cancel counts only once they hold it: a job they do not confirm in time is
withdrawn and refused like an outage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import redis
import redis.asyncio as aioredis
from pydantic import ValidationError

from common import errors, keys
from common.connections import REDIS_RETRY_AFTER_S, redis_errors
from common.protocol import no_stream, read_result, text, unclaimed_start
from common.replication import Replication
from common.schemas import Job, JobResult, JobStatus, WorkerState
from common.scripts import Placement, Submit, TenantJob, Unqueue, Withdraw
from common.shares import Quota, TenantKeys
from router.admission import job_time_s

log = logging.getLogger(__name__)


class JobQueue:
    """The router's end of the pools' queues (redis.asyncio).

    ``waiter`` is the client used for the blocking wait on results (one connection per waiting
    request); give it its own pool so waiters cannot starve short commands. Default: ``redis``.
    ``replication``: the replicas that must hold a job before it is accepted (default: none).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        worker_ttl_s: float,
        queue_max: int,
        waiter: aioredis.Redis | None = None,
        poll_s: float = 1.0,
        replication: Replication | None = None,
    ) -> None:
        self.redis = redis
        self.waiter = waiter or redis
        self.worker_ttl_s = worker_ttl_s
        self.queue_max = queue_max
        self.poll_s = poll_s
        self.replication = replication or Replication()
        self._submit = Submit(redis)
        self._unqueue = Unqueue(redis)
        self._withdraw = Withdraw(redis)

    async def ping(self) -> None:
        """Raise ``RedisUnavailable`` unless Redis answers."""
        async with redis_errors():
            await self.redis.ping()

    async def live_workers(self, pool: str) -> list[WorkerState]:
        """Workers of the pool whose heartbeat has not expired."""
        async with redis_errors():
            # The key's own expiry is the truth; the score window (with slack for clock skew) only prefilters.
            since = time.time() - 2 * self.worker_ttl_s
            ids: Any = await self.redis.zrangebyscore(keys.pool_workers(pool), since, "+inf")
            if not ids:
                return []
            raws = await self.redis.mget([keys.worker_state(pool, text(i)) for i in ids])
        states = []
        for raw in raws:
            if raw is None:
                continue
            try:
                states.append(WorkerState.loads(raw))
            except (ValueError, ValidationError):
                log.warning("event=bad_heartbeat pool=%s", pool)
        return states

    async def streams(self, pool: str) -> list[str]:
        """The pool's shared stream, the own streams of its workers (live or not yet adopted), and the
        stream of the jobs parked behind their key's fair share (``common/shares.py``)."""
        async with redis_errors():
            members: Any = await self.redis.zrange(keys.pool_workers(pool), 0, -1)
        own = [keys.worker_stream(pool, text(m)) for m in members]
        return [keys.pool_stream(pool), *own, keys.pool_parked(pool)]

    async def depth(self, pool: str) -> int:
        """Jobs of the pool waiting (parked too) or in hand, on all its streams."""
        streams = await self.streams(pool)
        async with redis_errors():
            pipe = self.redis.pipeline(transaction=False)
            for stream in streams:
                pipe.xlen(stream)
            return sum(int(n) for n in await pipe.execute())

    async def oldest_unclaimed(self, stream: str) -> float | None:
        """Enqueue time (epoch s) of the stream's first entry no worker took yet; None if none waits."""
        async with redis_errors():
            try:
                groups: Any = await self.redis.xinfo_groups(stream)
            except redis.ResponseError as exc:
                if no_stream(exc):
                    return None
                raise
            entries: Any = await self.redis.xrange(stream, unclaimed_start(groups), "+", count=1)
        if not entries:
            return None
        # An entry id starts with its enqueue time in milliseconds.
        return int(text(entries[0][0]).split("-")[0]) / 1000

    async def submit(
        self,
        job: Job,
        *,
        worker_id: str | None = None,
        workers: list[WorkerState] | None = None,
        tenant: str | None = None,
        quota: Quota | None = None,
    ) -> str:
        """Enqueue the job on its pool (on ``worker_id``'s own stream when given); returns the entry id.

        ``workers``: the pool's live workers if the caller has them. Raises ``NoWorker`` when no
        live worker serves the pool and ``QueueFull`` when the job's images would take the pool
        past its bound (images waiting or in hand), both with ``retry_after``; ``RedisUnavailable``
        when Redis is down, or the required replicas did not confirm the job in time (it is
        withdrawn then). With a ``quota``, the job counts for its key (``tenant``):
        ``ConcurrencyLimited`` and ``KeyQueueFull`` past it (both in jobs), and the job parks past
        the key's fair share.
        """
        if workers is None:
            workers = await self.live_workers(job.pool)
        workers = [w for w in workers if w.status != "draining"]
        if not workers:
            raise errors.NoWorker(f"no worker serves {job.pool} right now", retry_after=max(1.0, self.worker_ttl_s))
        placed = None
        if worker_id:
            placed = Placement(keys.worker_stream(job.pool, worker_id), keys.worker_state(job.pool, worker_id))
        counted = await self.streams(job.pool)
        slot = None
        if tenant is not None and quota is not None:
            job = job.model_copy(update={"tenant": tenant})
            expiry = (job.deadline or time.time() + keys.RESULT_TTL_S) + keys.TENANT_SLOT_SLACK_S
            slot = TenantJob(name=tenant, keys=TenantKeys.of(job.pool, tenant), quota=quota, expiry=expiry)
        submit = partial(
            self._submit,
            shared=keys.pool_stream(job.pool),
            status=keys.job_status(job.id),
            entry=keys.job_entry(job.id),
            counted=counted,
            placed=placed,
            tenant=slot,
            bound=self.queue_max,
            job=job,
            images=job.images,
            queued=JobStatus(job_id=job.id, state="queued").model_dump_json(),
            ttl_s=keys.RESULT_TTL_S,
        )
        async with redis_errors():
            (outcome, entry_id), replicated = await self._confirmed(submit)
            if entry_id is not None and not replicated:
                await self._withdraw_unreplicated(job.id)
        if entry_id is None:
            raise self._refusal(outcome, job, tenant, quota, workers)
        return entry_id

    def _refusal(
        self, outcome: str, job: Job, tenant: str | None, quota: Quota | None, workers: list[WorkerState]
    ) -> errors.LorafarmError:
        """The error of a submit the script refused (``outcome``: the limit it met)."""
        drain = drain_estimate(self.queue_max, workers)
        if outcome == "concurrency_limited" and quota is not None:
            retry = job_time_s([w.inference_s for w in workers])
            return errors.ConcurrencyLimited(
                f"key {tenant} has {quota.concurrency} unfinished jobs, its concurrency limit", retry_after=retry
            )
        if outcome == "key_queue_full" and quota is not None:
            return errors.KeyQueueFull(
                f"key {tenant} holds {quota.pool_cap} jobs of the queue of {job.pool}, its share; other keys "
                "still get in",
                retry_after=drain,
            )
        return errors.QueueFull(
            f"the queue of {job.pool} is full ({self.queue_max} images waiting or in hand)", retry_after=drain
        )

    async def wait(
        self,
        job_id: str,
        timeout_s: float,
        *,
        stop: Callable[[], Awaitable[bool]] | None = None,
        lost: Callable[[], Awaitable[object]] | None = None,
    ) -> tuple[JobResult, list[bytes]] | None:
        """The job's result and images, or None past ``timeout_s`` (or once ``stop()`` says so).

        A Redis outage during the wait is ridden out until the deadline: the job was accepted,
        and its result is read once Redis is back. If Redis comes back without the job (its
        primary failed over to a replica that never received it, or it restarted without its
        data), ``lost()`` is called to submit the same job again, once; lost a second time, the
        wait raises ``RedisUnavailable``.
        """
        deadline = time.monotonic() + timeout_s
        done = keys.job_done(job_id)
        resubmitted = False
        while True:
            remaining = deadline - time.monotonic()
            try:
                found, known = await self._poll(job_id)
                if found is not None or remaining <= 0:
                    return found
                if not known and lost is not None:
                    if resubmitted:
                        break
                    log.warning("event=job_lost job=%s (submitted again under the same id)", job_id)
                    await lost()
                    resubmitted = True
                    continue
                if stop is not None and await stop():
                    return None
                # Short blocks keep each read under the socket timeout and let ``stop`` be polled.
                async with redis_errors():
                    await self.waiter.blpop([done], timeout=max(0.01, min(remaining, self.poll_s)))
            except errors.RedisUnavailable:
                if remaining <= 0:
                    return None
                log.warning("event=wait_redis_down job=%s", job_id)
                await asyncio.sleep(min(remaining, self.poll_s / 2))
        raise errors.RedisUnavailable(
            "the job was lost twice with its Redis primary; submit it again", retry_after=REDIS_RETRY_AFTER_S
        )

    async def result(self, job_id: str) -> tuple[JobResult, list[bytes]] | None:
        """The job's published result and images, or None when there is none (yet)."""
        async with redis_errors():
            raw = await self.redis.hgetall(keys.job_result(job_id))
        return read_result(raw)

    async def status(self, job_id: str) -> JobStatus | None:
        """The job's latest state, or None when unknown or expired."""
        async with redis_errors():
            raw = await self.redis.get(keys.job_status(job_id))
        return None if raw is None else JobStatus.model_validate_json(raw)

    async def cancel(self, job_id: str) -> bool:
        """Cancel the job: workers drop it unrun. True when it was removed from its stream unclaimed.

        With replicas required, a cancel they do not confirm in time raises ``RedisUnavailable``.
        """
        async with redis_errors():
            removed, replicated = await self._confirmed(partial(self._cancel, job_id))
        if not replicated:
            raise errors.RedisUnavailable(
                "the cancel could not be replicated in time; send it again", retry_after=REDIS_RETRY_AFTER_S
            )
        return bool(removed)

    # --- helpers ---

    async def _confirmed(self, write: Callable[..., Awaitable[Any]]) -> tuple[Any, bool]:
        """``write()``'s reply, and whether the required replicas hold what it wrote.

        With replicas required, ``write`` runs on one connection and ``WAIT`` follows it there:
        ``WAIT`` counts the replicas that hold every write of its own connection.
        """
        if not self.replication.required:
            return await write(), True
        async with self.redis.client() as conn:
            reply = await write(client=conn)
            acknowledged = await conn.wait(self.replication.replicas, self.replication.timeout_ms)
        return reply, self.replication.counts(int(acknowledged))

    async def _cancel(self, job_id: str, *, client: Any = None) -> bool:
        client = client or self.redis
        await client.set(keys.job_cancel(job_id), "1", ex=keys.CANCEL_TTL_S)
        where = await client.hmget(keys.job_entry(job_id), ["stream", "entry_id", "pool", "tenant"])
        if where[0] is None or where[1] is None:
            return False
        return await self._unqueue(
            stream=text(where[0]),
            status=keys.job_status(job_id),
            entry_id=text(where[1]),
            job_id=job_id,
            tenant=tenant_keys(where[2], where[3]),
            cancelled=JobStatus(job_id=job_id, state="cancelled").model_dump_json(),
            ttl_s=keys.RESULT_TTL_S,
            client=client,
        )

    async def _withdraw_unreplicated(self, job_id: str) -> None:
        """Withdraw a job its replicas did not confirm (as if never submitted, ``Withdraw``), and refuse it."""
        log.warning("event=not_replicated job=%s replicas=%d (withdrawn)", job_id, self.replication.replicas)
        where = await self.redis.hmget(keys.job_entry(job_id), ["stream", "entry_id", "pool", "tenant"])
        if where[0] is not None and where[1] is not None:
            await self._withdraw(
                stream=text(where[0]),
                status=keys.job_status(job_id),
                entry=keys.job_entry(job_id),
                cancel=keys.job_cancel(job_id),
                entry_id=text(where[1]),
                job_id=job_id,
                tenant=tenant_keys(where[2], where[3]),
                ttl_s=keys.CANCEL_TTL_S,
            )
        raise errors.RedisUnavailable(
            "the job could not be replicated in time and was not accepted; try again shortly",
            retry_after=REDIS_RETRY_AFTER_S,
        )

    async def _poll(self, job_id: str) -> tuple[tuple[JobResult, list[bytes]] | None, bool]:
        """The job's result if written, and whether Redis knows the job at all (its result or status)."""
        async with redis_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(keys.job_result(job_id))
            pipe.exists(keys.job_status(job_id))
            raw, status = await pipe.execute()
        found = read_result(raw)
        return found, found is not None or bool(status)


def tenant_keys(pool: bytes | str | None, tenant: bytes | str | None) -> TenantKeys | None:
    """The key's Redis keys of a job's entry hash (``pool`` and ``tenant`` fields), or None for an anonymous job."""
    return TenantKeys.of(text(pool), text(tenant)) if pool is not None and tenant is not None else None


def drain_estimate(depth: int, workers: list[WorkerState], *, cap_s: float = 60.0) -> float:
    """Seconds until a full queue has room again, from the workers' measured inference time."""
    times = [w.inference_s for w in workers if w.inference_s]
    per_job = sum(times) / len(times) if times else 1.0
    seconds = depth * per_job / max(1, len(workers)) / 4  # a quarter drains: room for a retry
    return float(min(cap_s, max(1.0, math.ceil(seconds))))
