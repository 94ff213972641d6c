"""The queue protocol between the router and the workers, over Redis, and what both ends read alike.

- A pool (one base model) has one shared stream, ``keys.pool_stream(pool)``, and each worker
  has its own, ``keys.worker_stream(pool, worker_id)`` (adapter affinity: the router places a
  job on the worker that holds its adapter). All are read through the consumer group
  ``keys.WORKER_GROUP``. An entry's field ``job`` holds a ``Job``. A worker serves its own
  stream first and the shared one when its own is empty.
- The own stream of a dead worker is adopted by a live one of the pool (``reclaim``): its
  claimed jobs after a short idle time, its unclaimed ones at once. A worker that stops hands
  its unserved jobs back to the shared stream (``hand_back``).
- A worker announces itself in each pool it serves: ``keys.worker_state(pool, worker_id)``
  (expires unless renewed) and its id in ``keys.pool_workers(pool)``. A multi-base worker serves
  several pools under one id: it reads each pool's streams, heartbeats in each, and each of its
  pools' live workers adopts its jobs there once it is dead, as for a single-base worker.
- A worker acknowledges *and deletes* an entry once the job is settled, so the ``XLEN`` of a
  pool's streams counts the jobs waiting or in hand: that is the bound the router enforces
  (429 past it).
- A job claimed by a worker that died stays in the group's pending list; a live worker takes it
  over after a lease (``reclaim``). Past ``max_deliveries`` it goes to the dead-letter stream and
  gets a failed result, so nobody waits for it forever: delivery is at least once.
- A result is a hash at ``keys.job_result`` (``meta``: ``JobResult`` JSON; ``image:0``,
  ``image:1``...: the job's images, in the order of its seeds), written once: the first writer
  wins. Then ``keys.job_done`` gets one element, which wakes the router blocked on it. A job
  delivered again once its result is written (a failover replayed it, or a router submitted it
  again) is acknowledged without being run.
- An entry's field ``images`` holds the number of images its job makes: the pool's bound counts
  images, not jobs (an entry without the field weighs 1).
- With replicas required (``common/replication.py``), the router accepts a job only once they
  hold it (else it withdraws the job: 503), and a worker settles a job (result and
  acknowledgement) only once they hold both, writing them again after a failover if not. A
  router waiting on a job that Redis no longer knows (lost with its primary) submits it again
  under the same id, once.

The worker's end (``WorkerQueue``) is synchronous and lets redis-py's ``ConnectionError`` and
``TimeoutError`` through (the worker loop backs off on them). The router's end (``JobQueue``)
is asyncio and turns them into ``RedisUnavailable`` (503 with ``Retry-After``). The atomic
steps are the scripts of ``common/scripts.py``; the clients come from ``common/connections.py``.
"""

from __future__ import annotations

from typing import Any

import redis

from common import keys
from common.schemas import JobResult, JobStatus


def text(value: Any) -> str:
    """A Redis reply value as text (replies are bytes unless the client decodes them)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def terminal_status(result: JobResult) -> JobStatus:
    """The job's final status, as its result tells it."""
    return JobStatus(
        job_id=result.job_id,
        state=result.status,
        worker_id=result.worker_id,
        error=result.error,
        error_type=result.error_type,
    )


def image_field(index: int) -> str:
    """The field of a result hash that holds image ``index`` (from 0)."""
    return f"image:{index}"


def read_result(raw: dict[Any, Any]) -> tuple[JobResult, list[bytes]] | None:
    """The result and images of a ``keys.job_result`` hash (HGETALL), or None while none is written.

    A job that made no image (failed, cancelled) has an empty list.
    """
    meta = raw.get(b"meta")
    if meta is None:
        return None
    images: list[bytes] = []
    while (image := raw.get(image_field(len(images)).encode())) is not None:
        images.append(image)
    return JobResult.model_validate_json(meta), images


def unclaimed_start(groups: Any) -> str:
    """Where a stream's first unclaimed entry is looked for: the start to pass XRANGE.

    ``groups`` is the stream's XINFO GROUPS reply. The entries past the workers' group's
    last-delivered id wait (exclusive start ``(id``); without that group nobody has read the
    stream yet, so every entry waits (``-``).
    """
    last = next((text(g["last-delivered-id"]) for g in groups if text(g["name"]) == keys.WORKER_GROUP), None)
    return "-" if last is None or last == "0-0" else f"({last}"


def no_stream(exc: redis.ResponseError) -> bool:
    """Whether XINFO failed because the stream does not exist (then no entry waits on it)."""
    return "no such key" in str(exc).lower()
