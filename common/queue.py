"""Both ends of the queue protocol (described in ``common/protocol.py``): ``WorkerQueue`` and ``JobQueue``."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import redis
import redis.asyncio as aioredis
from pydantic import ValidationError

from common import errors, keys
from common.connections import redis_errors
from common.protocol import no_stream, read_result, terminal_status, text, unclaimed_start
from common.schemas import Job, JobResult, JobStatus, WorkerState
from common.scripts import Forget, HandBack, Placement, Publish, Submit, Unqueue

log = logging.getLogger(__name__)

#: Dead-letter streams keep about this many entries (approximate trim).
DEAD_LETTER_MAXLEN = 10_000
#: Worker ids whose heartbeat is older than this are dropped from a pool's set.
_PRUNE_WORKERS_S = 3600.0
_RECLAIM_BATCH = 16
#: Claimed entries of a dead worker's own stream idle at least this long are adopted.
_ADOPT_MIN_IDLE_MS = 500


# --- worker side --------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One job handed to this worker: its stream entry, the job, and how often it was delivered."""

    entry_id: str
    job: Job
    deliveries: int
    #: The stream the entry is on (the pool's, this worker's own, or an adopted one).
    stream: str = ""


class WorkerQueue:
    """A worker's end of its pool's queue (synchronous redis-py)."""

    def __init__(self, redis: redis.Redis, pool: str, worker_id: str, *, max_deliveries: int = 3) -> None:
        self.redis = redis
        self.pool = pool
        self.worker_id = worker_id
        self.max_deliveries = max_deliveries
        self.stream = keys.pool_stream(pool)
        self.own = keys.worker_stream(pool, worker_id)
        self._publish = Publish(redis)
        self._hand_back = HandBack(redis)
        self._forget = Forget(redis)

    def ensure_group(self) -> None:
        """Create the pool's and this worker's streams and consumer groups if missing (idempotent)."""
        self._ensure_group(self.stream)
        self._ensure_group(self.own)

    def claim(self, block_ms: int, *, include_pool: bool = True, count: int = 32) -> list[Delivery]:
        """Jobs placed on this worker (every one waiting, up to ``count``) and, with ``include_pool``,
        the next job of the shared stream; with none placed here, waits up to ``block_ms``.

        Malformed entries are dead-lettered, not returned. If this worker's stream is gone (a peer
        forgot it while this worker's heartbeat had lapsed, or Redis lost its data), it is made
        again and nothing is returned this round.
        """
        try:
            return self._claim(block_ms, include_pool=include_pool, count=count)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            log.warning("event=stream_recreated worker=%s error=%s", self.worker_id, exc)
            self.ensure_group()
            return []

    def _claim(self, block_ms: int, *, include_pool: bool, count: int) -> list[Delivery]:
        own = self._read({self.own: ">"}, count=count, block=None)
        if not include_pool:
            return own
        if own:
            # One shared job as well: while placements keep the own streams from running dry, the
            # jobs that spilled to the shared stream would otherwise wait behind all of them.
            return own + self._read({self.stream: ">"}, count=1, block=None)
        return self._read({self.own: ">", self.stream: ">"}, count=1, block=block_ms)

    def peek(self) -> Job | None:
        """The next job of the shared stream that no worker has claimed yet (for prefetch)."""
        try:
            groups: Any = self.redis.xinfo_groups(self.stream)
        except redis.ResponseError as exc:
            if no_stream(exc):
                return None
            raise
        entries: Any = self.redis.xrange(self.stream, min=unclaimed_start(groups), max="+", count=1)
        for _entry_id, fields in entries:
            try:
                return Job.from_fields(fields)
            except (ValueError, ValidationError):
                return None
        return None

    def queued(self) -> list[Job]:
        """Jobs on this worker's own stream (claimed or not), oldest first."""
        entries: Any = self.redis.xrange(self.own, count=1000)
        out = []
        for _entry_id, fields in entries:
            try:
                out.append(Job.from_fields(fields))
            except (ValueError, ValidationError):
                continue
        return out

    def hand_back(self, deliveries: list[Delivery]) -> None:
        """Put jobs this worker holds but will not serve back on the shared stream (on shutdown)."""
        for d in deliveries:
            self._hand_back(
                held=d.stream or self.stream,
                shared=self.stream,
                entry=keys.job_entry(d.job.id),
                entry_id=d.entry_id,
                job=d.job.model_dump_json(),
            )
            log.info("event=handed_back job=%s", d.job.id)

    def release(self) -> None:
        """Leave the pool: stop being placed on, and hand back what is still on the own stream."""
        self.redis.delete(keys.worker_state(self.worker_id))
        self._ensure_group(self.own)
        self.hand_back(self._read({self.own: ">"}, count=1000, block=None))

    def reclaim(self, min_idle_ms: int) -> list[Delivery]:
        """Take over jobs idle past ``min_idle_ms`` whose consumer is dead (no heartbeat).

        Entries this worker holds itself are left alone (``recover`` takes those of an earlier
        process with the same id, once at start). A job delivered more than ``max_deliveries`` times is
        dead-lettered with a failed result instead of being returned. Dead consumers left with
        nothing pending are removed from the group.
        """
        adopted = self._adopt_orphans()
        pending: Any = self.redis.xpending_range(
            self.stream, keys.WORKER_GROUP, min="-", max="+", count=_RECLAIM_BATCH, idle=min_idle_ms
        )
        if not pending:
            self._forget_dead_consumers(min_idle_ms)
            return adopted
        consumers = {text(p["consumer"]) for p in pending} - {self.worker_id}
        alive = self._alive(sorted(consumers))
        out: list[Delivery] = adopted
        for p in pending:
            if text(p["consumer"]) in alive or text(p["consumer"]) == self.worker_id:
                continue
            # min_idle_ms again: of two workers reclaiming the same entry, only the first gets it.
            delivery = self._take_over(self.stream, p, min_idle_ms)
            if delivery is not None:
                log.info(
                    "event=reclaimed job=%s from=%s deliveries=%d",
                    delivery.job.id,
                    text(p["consumer"]),
                    delivery.deliveries,
                )
                out.append(delivery)
        return out

    def _take_over(self, stream: str, pending: Any, min_idle_ms: int) -> Delivery | None:
        """Claim one pending entry for this worker: its delivery, or None if another worker took it
        first, it is malformed, or it has been delivered too often (it is dead-lettered then)."""
        claimed: Any = self.redis.xclaim(
            stream, keys.WORKER_GROUP, self.worker_id, min_idle_ms, [text(pending["message_id"])]
        )
        for claimed_id, fields in claimed:
            if fields is None:
                continue
            delivery = self._delivery(stream, text(claimed_id), fields, int(pending["times_delivered"]) + 1)
            if delivery is None:
                continue
            if delivery.deliveries > self.max_deliveries:
                self._dead_letter_job(delivery)
                return None
            return delivery
        return None

    def recover(self) -> list[Delivery]:
        """Jobs a previous process with this worker id claimed and never settled (a restarted pod)."""
        out: list[Delivery] = []
        for stream in (self.stream, self.own):
            pending: Any = self.redis.xpending_range(
                stream, keys.WORKER_GROUP, min="-", max="+", count=1000, consumername=self.worker_id
            )
            for p in pending:
                delivery = self._take_over(stream, p, 0)
                if delivery is not None:
                    out.append(delivery)
        return out

    def retry(self, delivery: Delivery) -> Delivery | None:
        """Deliver again, to this worker, a job that crashed it; past ``max_deliveries`` it is
        dead-lettered with a failed result instead, and None is returned."""
        again = replace(delivery, deliveries=delivery.deliveries + 1)
        if again.deliveries > self.max_deliveries:
            self._dead_letter_job(again)
            return None
        # Claimed again by itself: Redis counts the delivery, as a worker adopting the job would see.
        self.redis.xclaim(again.stream or self.stream, keys.WORKER_GROUP, self.worker_id, 0, [again.entry_id])
        return again

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
        return self._publish(
            result=keys.job_result(result.job_id),
            done=keys.job_done(result.job_id),
            status=keys.job_status(result.job_id),
            events=keys.job_events(result.job_id),
            meta=result.model_dump_json(),
            image=image,
            final=terminal_status(result).model_dump_json(),
            ttl_s=keys.RESULT_TTL_S,
        )

    def ack(self, entry_id: str, stream: str | None = None) -> None:
        """Settle an entry: acknowledge and delete it, so the stream length counts live jobs only."""
        stream = stream or self.stream
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(stream, keys.WORKER_GROUP, entry_id)
        pipe.xdel(stream, entry_id)
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
        """Leave the pool now instead of waiting for the heartbeat to expire.

        The worker stays a member of the pool's set until a live worker has adopted whatever
        still reaches its own stream (a router may have placed a job on it a moment ago).
        """
        self.release()

    # --- helpers ---

    def _ensure_group(self, stream: str) -> None:
        try:
            self.redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self, streams: dict[Any, Any], *, count: int, block: int | None) -> list[Delivery]:
        reply: Any = self.redis.xreadgroup(keys.WORKER_GROUP, self.worker_id, streams, count=count, block=block)
        if isinstance(reply, dict):  # RESP3
            reply = list(reply.items())
        out: list[Delivery] = []
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                delivery = self._delivery(text(stream), text(entry_id), fields, 1)
                if delivery is not None:
                    out.append(delivery)
        return out

    def _adopt_orphans(self) -> list[Delivery]:
        """Jobs on the own streams of dead workers of the pool: claimed ones and unclaimed ones."""
        members = keys.pool_workers(self.pool)
        others = [m for m in map(text, self.redis.zrange(members, 0, -1)) if m != self.worker_id]
        alive = self._alive(others)
        out: list[Delivery] = []
        for worker_id in others:
            if worker_id in alive:
                continue
            stream = keys.worker_stream(self.pool, worker_id)
            if self._forget(
                stream=stream, members=members, heartbeat=keys.worker_state(worker_id), worker_id=worker_id
            ):
                continue
            self._ensure_group(stream)
            out.extend(self._adopt_claimed(stream, worker_id))
            out.extend(self._read({stream: ">"}, count=_RECLAIM_BATCH, block=None))
        return out

    def _adopt_claimed(self, stream: str, dead: str) -> list[Delivery]:
        pending: Any = self.redis.xpending_range(stream, keys.WORKER_GROUP, min="-", max="+", count=_RECLAIM_BATCH)
        holders = {text(p["consumer"]) for p in pending} - {self.worker_id}
        alive = self._alive(sorted(holders))
        out: list[Delivery] = []
        for p in pending:
            if text(p["consumer"]) in alive or text(p["consumer"]) == self.worker_id:
                continue  # adopted already by a live worker (or by this one, in its backlog)
            # A short min-idle: of two workers adopting the same entry, only the first gets it.
            delivery = self._take_over(stream, p, _ADOPT_MIN_IDLE_MS)
            if delivery is not None:
                log.info("event=adopted job=%s from=%s", delivery.job.id, dead)
                out.append(delivery)
        return out

    def _forget_dead_consumers(self, min_idle_ms: int) -> None:
        # Worker ids change with every process; without this the group's consumer list only grows.
        consumers: Any = self.redis.xinfo_consumers(self.stream, keys.WORKER_GROUP)
        idle = [
            text(c["name"])
            for c in consumers
            if int(c["pending"]) == 0 and int(c["idle"]) >= min_idle_ms and text(c["name"]) != self.worker_id
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

    def _delivery(self, stream: str, entry_id: str, fields: dict[Any, Any], deliveries: int) -> Delivery | None:
        try:
            job = Job.from_fields(fields)
        except (ValueError, ValidationError) as exc:
            self._dead_letter_malformed(stream, entry_id, fields, exc)
            return None
        return Delivery(entry_id=entry_id, job=job, deliveries=deliveries, stream=stream)

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
        self.ack(delivery.entry_id, delivery.stream)

    def _dead_letter_malformed(self, stream: str, entry_id: str, fields: dict[Any, Any], exc: Exception) -> None:
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
        self.ack(entry_id, stream)


def _salvage_job_id(raw: bytes | str) -> str | None:
    """The ``id`` of a job that fails validation, so its waiter learns of the failure."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    job_id = data.get("id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= 64 else None


# --- router side --------------------------------------------------------------------------


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
        self._submit = Submit(redis)
        self._unqueue = Unqueue(redis)

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
            raws = await self.redis.mget([keys.worker_state(text(i)) for i in ids])
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
        """The pool's shared stream and the own streams of its workers (live or not yet adopted)."""
        async with redis_errors():
            members: Any = await self.redis.zrange(keys.pool_workers(pool), 0, -1)
        return [keys.pool_stream(pool), *(keys.worker_stream(pool, text(m)) for m in members)]

    async def depth(self, pool: str) -> int:
        """Jobs of the pool waiting or in hand, on all its streams."""
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

    async def submit(self, job: Job, *, worker_id: str | None = None, workers: list[WorkerState] | None = None) -> str:
        """Enqueue the job on its pool (on ``worker_id``'s own stream when given); returns the entry id.

        ``workers``: the pool's live workers if the caller has them. Raises ``NoWorker`` when no
        live worker serves the pool and ``QueueFull`` at the bound, both with ``retry_after``.
        """
        if workers is None:
            workers = await self.live_workers(job.pool)
        workers = [w for w in workers if w.status != "draining"]
        if not workers:
            raise errors.NoWorker(f"no worker serves {job.pool} right now", retry_after=max(1.0, self.worker_ttl_s))
        placed = Placement(keys.worker_stream(job.pool, worker_id), keys.worker_state(worker_id)) if worker_id else None
        counted = await self.streams(job.pool)
        async with redis_errors():
            entry_id = await self._submit(
                shared=keys.pool_stream(job.pool),
                status=keys.job_status(job.id),
                entry=keys.job_entry(job.id),
                counted=counted,
                placed=placed,
                bound=self.queue_max,
                job=job.model_dump_json(),
                queued=JobStatus(job_id=job.id, state="queued").model_dump_json(),
                ttl_s=keys.RESULT_TTL_S,
            )
        if entry_id is None:
            raise errors.QueueFull(
                f"the queue of {job.pool} is full ({self.queue_max} jobs)",
                retry_after=drain_estimate(self.queue_max, workers),
            )
        return text(entry_id)

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
                async with redis_errors():
                    await self.waiter.blpop([done], timeout=max(0.01, min(remaining, self.poll_s)))
            except errors.RedisUnavailable:
                if remaining <= 0:
                    return None
                log.warning("event=wait_redis_down job=%s", job_id)
                await asyncio.sleep(min(remaining, self.poll_s / 2))

    async def result(self, job_id: str) -> tuple[JobResult, bytes | None] | None:
        """The job's published result and image, or None when there is none (yet)."""
        async with redis_errors():
            raw = await self.redis.hgetall(keys.job_result(job_id))
        return read_result(raw)

    async def status(self, job_id: str) -> JobStatus | None:
        """The job's latest state, or None when unknown or expired."""
        async with redis_errors():
            raw = await self.redis.get(keys.job_status(job_id))
        return None if raw is None else JobStatus.model_validate_json(raw)

    async def cancel(self, job_id: str) -> bool:
        """Cancel the job: workers drop it unrun. True when it was removed from its stream unclaimed."""
        async with redis_errors():
            await self.redis.set(keys.job_cancel(job_id), "1", ex=keys.CANCEL_TTL_S)
            where = await self.redis.hmget(keys.job_entry(job_id), ["stream", "entry_id"])
            if where[0] is None or where[1] is None:
                return False
            return await self._unqueue(
                stream=text(where[0]),
                status=keys.job_status(job_id),
                entry_id=text(where[1]),
                cancelled=JobStatus(job_id=job_id, state="cancelled").model_dump_json(),
                ttl_s=keys.RESULT_TTL_S,
            )


def drain_estimate(depth: int, workers: list[WorkerState], *, cap_s: float = 60.0) -> float:
    """Seconds until a full queue has room again, from the workers' measured inference time."""
    times = [w.inference_s for w in workers if w.inference_s]
    per_job = sum(times) / len(times) if times else 1.0
    seconds = depth * per_job / max(1, len(workers)) / 4  # a quarter drains: room for a retry
    return float(min(cap_s, max(1.0, math.ceil(seconds))))
