"""A worker's end of its pool's queue (synchronous redis-py): claim, settle, hand back, announce.

The protocol both ends follow is described in ``common/protocol.py``. Redis outages
(``common.connections.OUTAGES``) go through to the caller: the worker loop backs off on them.
Taking over the jobs of dead workers is ``worker/adoption.py``'s; giving up on a job,
``worker/deadletter.py``'s. With replicas required (``Replication``), a job is settled only once
they hold its result and acknowledgement (``settle``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import redis
from pydantic import ValidationError

from common import keys
from common.protocol import no_stream, terminal_status, text, unclaimed_start
from common.replication import Replication
from common.schemas import Job, JobResult, JobStatus, WorkerState
from common.scripts import HandBack, Publish
from common.shares import TenantKeys
from worker import deadletter
from worker.adoption import Adoption
from worker.pools import PoolQueues

log = logging.getLogger(__name__)

#: Worker ids whose heartbeat is older than this are dropped from a pool's set.
_PRUNE_WORKERS_S = 3600.0


@dataclass(frozen=True)
class Delivery:
    """One job handed to this worker: its stream entry, the job, and how often it was delivered."""

    entry_id: str
    job: Job
    deliveries: int
    #: The stream the entry is on (the pool's, this worker's own, or an adopted one).
    stream: str = ""
    #: The pool whose queue handed it over (a multi-base worker serves several).
    pool: str = ""


class Standing(NamedTuple):
    """What Redis says of a job about to run: it has a result already, or it was cancelled."""

    settled: bool
    cancelled: bool


class WorkerQueue:
    """A worker's end of its pool's queue (synchronous redis-py).

    ``replication``: the replicas that must hold a result before its job counts as settled.
    """

    def __init__(
        self,
        redis: redis.Redis,
        pool: str,
        worker_id: str,
        *,
        max_deliveries: int = 3,
        replication: Replication | None = None,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.worker_id = worker_id
        self.max_deliveries = max_deliveries
        self.replication = replication or Replication()
        self.stream = keys.pool_stream(pool)
        self.own = keys.worker_stream(pool, worker_id)
        self._publish = Publish(redis)
        self._hand_back = HandBack(redis)
        self._adoption = Adoption(self)

    def ensure_group(self) -> None:
        """Create the pool's and this worker's streams and consumer groups if missing (idempotent)."""
        self.ensure_stream(self.stream)
        self.ensure_stream(self.own)

    def claim(self, block_ms: int, *, include_pool: bool = True, count: int = 32) -> list[Delivery]:
        """Jobs placed on this worker (every one waiting, up to ``count``) and, with ``include_pool``,
        the next job of the shared stream; with none placed here, waits up to ``block_ms``.

        Malformed entries are dead-lettered, not returned. If this worker's stream is gone (a peer
        forgot it while this worker's heartbeat had lapsed, or Redis lost its data), it is made
        again and nothing is returned this round. (``worker.pools.PoolQueues`` claims so from the
        queues of several pools at once; this is it with one.)
        """
        return PoolQueues([self]).claim(block_ms, include_pool=include_pool, count=count)

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
                images=d.job.images,
            )
            log.info("event=handed_back job=%s", d.job.id)

    def release(self) -> None:
        """Leave the pool: stop being placed on, and hand back what is still on the own stream."""
        self.redis.delete(keys.worker_state(self.pool, self.worker_id))
        self.ensure_stream(self.own)
        self.hand_back(self.read({self.own: ">"}, count=1000, block=None))

    def reclaim(self, min_idle_ms: int) -> list[Delivery]:
        """Take over jobs idle past ``min_idle_ms`` whose consumer is dead, and adopt dead workers' streams.

        See ``Adoption.reclaim``: a job past ``max_deliveries`` is dead-lettered instead of returned.
        """
        return self._adoption.reclaim(min_idle_ms)

    def recover(self) -> list[Delivery]:
        """Jobs a previous process with this worker id claimed and never settled (a restarted pod)."""
        return self._adoption.recover()

    def take_over(self, stream: str, entry_id: str, *, delivered: int, min_idle_ms: int) -> Delivery | None:
        """Claim one pending entry (delivered ``delivered`` times so far) for this worker.

        None if another worker took it first (it was idle less than ``min_idle_ms``), it is
        malformed, or it has been delivered too often (both are dead-lettered then).
        """
        claimed: Any = self.redis.xclaim(stream, keys.WORKER_GROUP, self.worker_id, min_idle_ms, [entry_id])
        for claimed_id, fields in claimed:
            if fields is None:
                continue
            delivery = self._delivery(stream, text(claimed_id), fields, delivered + 1)
            if delivery is None:
                continue
            if delivery.deliveries > self.max_deliveries:
                self._dead_letter_job(delivery)
                return None
            return delivery
        return None

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

    def standing(self, job_id: str) -> Standing:
        """Whether the job has a result already (delivered again: a failover, a re-submission) or was cancelled."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(keys.job_result(job_id))
        pipe.exists(keys.job_cancel(job_id))
        settled, cancelled = pipe.execute()
        return Standing(settled=bool(settled), cancelled=bool(cancelled))

    def set_status(self, status: JobStatus) -> None:
        """Record the job's latest state and publish it on the job's event channel."""
        raw = status.model_dump_json()
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.job_status(status.job_id), raw, ex=keys.RESULT_TTL_S)
        pipe.publish(keys.job_events(status.job_id), raw)
        pipe.execute()

    def publish_result(self, result: JobResult, images: list[bytes], job: Job | None = None) -> bool:
        """Write the job's result (its images, none for a job that made none) once and wake its waiter.

        False when a result was already written. ``job``: the job settled, when known; a key's job
        then gives its place back to its key (its concurrency, its fair share: ``common/shares.py``).
        """
        return self._publish(**self._publish_args(result, images, job))

    def settle(self, delivery: Delivery, result: JobResult, images: list[bytes]) -> bool:
        """Publish the job's result and acknowledge its entry; False while the replicas do not hold both.

        Without replicas required this is ``publish_result`` then ``ack``. With them, both go on one
        connection, then ``WAIT``. A settle they did not confirm is to be done again, by the same
        call (the result is written once, the acknowledgement is idempotent), until they do: after
        a failover, on the new primary, which may lack both.
        """
        if not self.replication.required:
            if not self.publish_result(result, images, delivery.job):
                log.info("event=duplicate_result job=%s", result.job_id)
            self.ack(delivery.entry_id, delivery.stream)
            return True
        key, stream = keys.job_result(result.job_id), delivery.stream or self.stream
        pipe = self.redis.pipeline(transaction=False)
        self._publish(client=pipe, **self._publish_args(result, images, delivery.job))
        # A write that always propagates: when the result was written by an earlier try, WAIT
        # after it still confirms that result (replicas receive the primary's writes in order).
        pipe.expire(key, keys.RESULT_TTL_S)
        pipe.xack(stream, keys.WORKER_GROUP, delivery.entry_id)
        pipe.xdel(stream, delivery.entry_id)
        self.replication.confirm_on(pipe)
        replies = pipe.execute()
        if not replies[0]:
            log.info("event=duplicate_result job=%s", result.job_id)
        return self.replication.confirmed(replies)

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
        pipe.set(keys.worker_state(self.pool, self.worker_id), state.dumps(), px=max(1, int(ttl_s * 1000)))
        pipe.zadd(members, {self.worker_id: now})
        pipe.zremrangebyscore(members, "-inf", now - _PRUNE_WORKERS_S)
        pipe.execute()

    def deregister(self) -> None:
        """Leave the pool now instead of waiting for the heartbeat to expire.

        The worker stays a member of the pool's set until a live worker has adopted whatever
        still reaches its own stream (a router may have placed a job on it a moment ago).
        """
        self.release()

    def ensure_stream(self, stream: str) -> None:
        """Create the stream and its workers' group if missing (idempotent)."""
        try:
            self.redis.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, streams: dict[Any, Any], *, count: int, block: int | None) -> list[Delivery]:
        """New entries of ``streams`` (``{stream: ">"}``), claimed for this worker; malformed ones dead-lettered."""
        reply: Any = self.redis.xreadgroup(keys.WORKER_GROUP, self.worker_id, streams, count=count, block=block)
        if isinstance(reply, dict):  # RESP3
            reply = list(reply.items())
        return [d for stream, entries in reply or [] for d in self.parse(text(stream), entries)]

    def parse(self, stream: str, entries: Any) -> list[Delivery]:
        """Deliveries of entries just read from ``stream``; malformed ones dead-lettered."""
        out: list[Delivery] = []
        for entry_id, fields in entries:
            delivery = self._delivery(stream, text(entry_id), fields, 1)
            if delivery is not None:
                out.append(delivery)
        return out

    # --- helpers ---

    def _publish_args(self, result: JobResult, images: list[bytes], job: Job | None) -> dict[str, Any]:
        if not isinstance(images, list):
            raise TypeError("images: a list of image bytes")
        tenant = job.tenant if job is not None else None
        return {
            "result": keys.job_result(result.job_id),
            "done": keys.job_done(result.job_id),
            "status": keys.job_status(result.job_id),
            "events": keys.job_events(result.job_id),
            "meta": result.model_dump_json(),
            "images": images,
            "final": terminal_status(result).model_dump_json(),
            "ttl_s": keys.RESULT_TTL_S,
            "job_id": result.job_id,
            "tenant": TenantKeys.of(self.pool, tenant) if tenant else None,
        }

    def _delivery(self, stream: str, entry_id: str, fields: dict[Any, Any], deliveries: int) -> Delivery | None:
        try:
            job = Job.from_fields(fields)
        except (ValueError, ValidationError) as exc:
            self._dead_letter_malformed(stream, entry_id, fields, exc)
            return None
        return Delivery(entry_id=entry_id, job=job, deliveries=deliveries, stream=stream, pool=self.pool)

    def _dead_letter_job(self, delivery: Delivery) -> None:
        job, tries = delivery.job, delivery.deliveries - 1
        log.warning("event=dead_letter job=%s deliveries=%d", job.id, tries)
        deadletter.record(
            self.redis,
            self.pool,
            entry_id=delivery.entry_id,
            raw=job.model_dump_json(),
            reason="max_deliveries",
            deliveries=tries,
            worker_id=self.worker_id,
        )
        error = f"the job failed on {tries} deliveries and was dropped"
        self.publish_result(deadletter.failed_result(job.id, error, self.worker_id), [], job)
        self.ack(delivery.entry_id, delivery.stream)

    def _dead_letter_malformed(self, stream: str, entry_id: str, fields: dict[Any, Any], exc: Exception) -> None:
        raw = fields.get(b"job", fields.get("job", b""))
        log.warning("event=dead_letter entry=%s reason=malformed error=%s", entry_id, type(exc).__name__)
        deadletter.record(
            self.redis,
            self.pool,
            entry_id=entry_id,
            raw=raw,
            reason="malformed",
            deliveries=1,
            worker_id=self.worker_id,
        )
        job_id = deadletter.salvage_job_id(raw)
        if job_id is not None:
            self.publish_result(deadletter.failed_result(job_id, "the job could not be read", self.worker_id), [])
        self.ack(entry_id, stream)
