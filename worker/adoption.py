"""Taking over the jobs that nobody alive holds: those of dead workers, and of this worker's earlier process.

- ``reclaim``: a job of the shared stream claimed by a worker whose heartbeat expired is taken
  over once idle past the lease. The own stream of a dead worker is adopted as well: its claimed
  jobs after a short idle time, its unclaimed ones at once; once empty, the dead worker is
  forgotten (its stream deleted, its id dropped from the pool).
- ``recover``: the jobs an earlier process with this worker id claimed and never settled.

Each taken-over job counts one more delivery; past ``max_deliveries`` it is dead-lettered
instead (``WorkerQueue.take_over``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from common import keys
from common.protocol import text
from common.scripts import Forget

if TYPE_CHECKING:
    from worker.queue import Delivery, WorkerQueue

log = logging.getLogger(__name__)

#: Pending entries looked at per stream and round.
_RECLAIM_BATCH = 16
#: Claimed entries of a dead worker's own stream idle at least this long are adopted.
_ADOPT_MIN_IDLE_MS = 500


class Adoption:
    """The takeovers of one worker's queue (synchronous redis-py)."""

    def __init__(self, queue: WorkerQueue) -> None:
        self.queue = queue
        self.redis = queue.redis
        self._forget = Forget(queue.redis)

    def reclaim(self, min_idle_ms: int) -> list[Delivery]:
        """Take over jobs idle past ``min_idle_ms`` whose consumer is dead (no heartbeat).

        Entries this worker holds itself are left alone (``recover`` takes those of an earlier
        process with the same id, once at start). A job delivered more than ``max_deliveries`` times is
        dead-lettered with a failed result instead of being returned. Dead consumers left with
        nothing pending are removed from the group.
        """
        q = self.queue
        adopted = self._adopt_orphans()
        pending: Any = self.redis.xpending_range(
            q.stream, keys.WORKER_GROUP, min="-", max="+", count=_RECLAIM_BATCH, idle=min_idle_ms
        )
        if not pending:
            self._forget_dead_consumers(min_idle_ms)
            return adopted
        consumers = {text(p["consumer"]) for p in pending} - {q.worker_id}
        alive = self._alive(sorted(consumers))
        out: list[Delivery] = adopted
        for p in pending:
            if text(p["consumer"]) in alive or text(p["consumer"]) == q.worker_id:
                continue
            # min_idle_ms again: of two workers reclaiming the same entry, only the first gets it.
            delivery = self._take_over(q.stream, p, min_idle_ms)
            if delivery is not None:
                log.info(
                    "event=reclaimed job=%s from=%s deliveries=%d",
                    delivery.job.id,
                    text(p["consumer"]),
                    delivery.deliveries,
                )
                out.append(delivery)
        return out

    def recover(self) -> list[Delivery]:
        """Jobs a previous process with this worker id claimed and never settled (a restarted pod)."""
        q = self.queue
        out: list[Delivery] = []
        for stream in (q.stream, q.own):
            pending: Any = self.redis.xpending_range(
                stream, keys.WORKER_GROUP, min="-", max="+", count=1000, consumername=q.worker_id
            )
            for p in pending:
                delivery = self._take_over(stream, p, 0)
                if delivery is not None:
                    out.append(delivery)
        return out

    def _take_over(self, stream: str, pending: Any, min_idle_ms: int) -> Delivery | None:
        """``WorkerQueue.take_over`` of one entry of an XPENDING reply."""
        entry_id, delivered = text(pending["message_id"]), int(pending["times_delivered"])
        return self.queue.take_over(stream, entry_id, delivered=delivered, min_idle_ms=min_idle_ms)

    def _adopt_orphans(self) -> list[Delivery]:
        """Jobs on the own streams of dead workers of the pool: claimed ones and unclaimed ones."""
        q = self.queue
        members = keys.pool_workers(q.pool)
        others = [m for m in map(text, self.redis.zrange(members, 0, -1)) if m != q.worker_id]
        alive = self._alive(others)
        out: list[Delivery] = []
        for worker_id in others:
            if worker_id in alive:
                continue
            stream = keys.worker_stream(q.pool, worker_id)
            if self._forget(
                stream=stream, members=members, heartbeat=keys.worker_state(q.pool, worker_id), worker_id=worker_id
            ):
                continue
            q.ensure_stream(stream)
            out.extend(self._adopt_claimed(stream, worker_id))
            out.extend(q.read({stream: ">"}, count=_RECLAIM_BATCH, block=None))
        return out

    def _adopt_claimed(self, stream: str, dead: str) -> list[Delivery]:
        me = self.queue.worker_id
        pending: Any = self.redis.xpending_range(stream, keys.WORKER_GROUP, min="-", max="+", count=_RECLAIM_BATCH)
        holders = {text(p["consumer"]) for p in pending} - {me}
        alive = self._alive(sorted(holders))
        out: list[Delivery] = []
        for p in pending:
            if text(p["consumer"]) in alive or text(p["consumer"]) == me:
                continue  # adopted already by a live worker (or by this one, in its backlog)
            # A short min-idle: of two workers adopting the same entry, only the first gets it.
            delivery = self._take_over(stream, p, _ADOPT_MIN_IDLE_MS)
            if delivery is not None:
                log.info("event=adopted job=%s from=%s", delivery.job.id, dead)
                out.append(delivery)
        return out

    def _forget_dead_consumers(self, min_idle_ms: int) -> None:
        # Worker ids change with every process; without this the group's consumer list only grows.
        stream, me = self.queue.stream, self.queue.worker_id
        consumers: Any = self.redis.xinfo_consumers(stream, keys.WORKER_GROUP)
        idle = [
            text(c["name"])
            for c in consumers
            if int(c["pending"]) == 0 and int(c["idle"]) >= min_idle_ms and text(c["name"]) != me
        ]
        alive = self._alive(idle)
        for name in idle:
            if name not in alive:
                self.redis.xgroup_delconsumer(stream, keys.WORKER_GROUP, name)

    def _alive(self, worker_ids: list[str]) -> set[str]:
        """Those of ``worker_ids`` whose heartbeat has not expired."""
        if not worker_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in worker_ids:
            pipe.exists(keys.worker_state(self.queue.pool, worker_id))
        return {w for w, n in zip(worker_ids, pipe.execute(), strict=True) if n}
