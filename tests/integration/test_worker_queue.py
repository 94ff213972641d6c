"""The worker's end of the queue (publish, reclaim, dead letters) against a real redis-server.

Jobs come in through the router's ``JobQueue``.
"""

from __future__ import annotations

import time

import pytest
import redis
import redis.asyncio as aioredis

from common import keys
from common.schemas import Job, JobResult
from router.queue import JobQueue
from tests.integration.queues import PNG, done, job, worker

pytestmark = pytest.mark.anyio


async def test_publish_is_idempotent(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8)
    j = job(pool)
    assert w.publish_result(done(j.id, "first"), [PNG]) is True
    assert w.publish_result(done(j.id, "second"), [b"other"]) is False
    result, images = await q.result(j.id)  # type: ignore[misc]
    assert (result.worker_id, images) == ("first", [PNG])
    assert await aio_redis.llen(keys.job_done(j.id)) == 1  # the waiter is woken once


async def test_failed_result_has_no_image(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8)
    failed = JobResult(job_id="j1" + pool, status="failed", error="bad", error_type="adapter_corrupt")
    w.publish_result(failed, [])
    result, images = await q.wait(failed.job_id, timeout_s=1)  # type: ignore[misc]
    assert (result.error_type, images) == ("adapter_corrupt", [])
    assert (await q.status(failed.job_id)).error_type == "adapter_corrupt"  # type: ignore[union-attr]


async def test_reclaim_from_dead_consumer(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    dead = worker(sync_redis, pool, "dead", live=False)
    alive = worker(sync_redis, pool, "alive")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8)
    j = job(pool)
    await q.submit(j)
    [first] = dead.claim(block_ms=100)  # claimed, never acknowledged: the worker "died"
    assert alive.reclaim(min_idle_ms=60_000) == []  # not idle long enough yet
    time.sleep(0.08)
    [again] = alive.reclaim(min_idle_ms=50)
    assert (again.job, again.entry_id, again.deliveries) == (j, first.entry_id, 2)
    third = worker(sync_redis, pool, "third")
    assert third.reclaim(min_idle_ms=0) == []  # now in the hands of a live worker
    alive.publish_result(done(j.id, "alive"), [PNG])
    alive.ack(again.entry_id)
    assert (await q.wait(j.id, timeout_s=2))[0].worker_id == "alive"  # type: ignore[index]
    assert await q.depth(pool) == 0
    assert alive.reclaim(min_idle_ms=0) == []  # nothing pending: the dead consumer is forgotten
    names = {c["name"] for c in sync_redis.xinfo_consumers(keys.pool_stream(pool), keys.WORKER_GROUP)}
    assert names == {b"alive"}  # "third" never read the stream: it is no consumer


async def test_live_consumer_keeps_its_job(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    slow = worker(sync_redis, pool, "slow")
    other = worker(sync_redis, pool, "other")
    await JobQueue(aio_redis, worker_ttl_s=10, queue_max=8).submit(job(pool))
    assert len(slow.claim(block_ms=100)) == 1
    time.sleep(0.06)
    assert other.reclaim(min_idle_ms=50) == []  # slow's heartbeat is alive: no double run


async def test_dead_letter_after_max_deliveries(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8)
    a = worker(sync_redis, pool, "a", live=False, max_deliveries=2)
    b = worker(sync_redis, pool, "b", live=False, max_deliveries=2)
    c = worker(sync_redis, pool, "c", max_deliveries=2)
    j = job(pool)
    await q.submit(j)
    assert len(a.claim(block_ms=100)) == 1  # delivery 1: crashes
    time.sleep(0.03)
    [second] = b.reclaim(min_idle_ms=20)  # delivery 2: crashes too
    assert second.deliveries == 2
    time.sleep(0.03)
    assert c.reclaim(min_idle_ms=20) == []  # a third delivery would pass max_deliveries=2

    result, images = await q.wait(j.id, timeout_s=2)  # type: ignore[misc]
    assert (result.status, result.error_type, images) == ("failed", "job_failed", [])
    assert "2 deliveries" in (result.error or "")
    assert await q.depth(pool) == 0
    [(_, fields)] = sync_redis.xrange(keys.dead_letter_stream(pool))
    assert fields[b"reason"] == b"max_deliveries"
    assert Job.model_validate_json(fields[b"job"]).id == j.id
    assert sync_redis.xpending(keys.pool_stream(pool), keys.WORKER_GROUP)["pending"] == 0


async def test_malformed_entry_is_dead_lettered(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8)
    stream = keys.pool_stream(pool)
    sync_redis.xadd(stream, {"job": "{not json"})
    sync_redis.xadd(stream, {"job": '{"id": "salvaged-' + pool + '", "prompt": 3}'})
    sync_redis.xadd(stream, {"other": "field"})
    good = job(pool)
    await q.submit(good)
    claimed = [d for _ in range(4) for d in w.claim(block_ms=50)]
    assert [d.job.id for d in claimed] == [good.id]
    reasons = [f[b"reason"] for _, f in sync_redis.xrange(keys.dead_letter_stream(pool))]
    assert reasons == [b"malformed"] * 3
    result, _ = await q.wait("salvaged-" + pool, timeout_s=1)  # type: ignore[misc]
    assert result.error_type == "job_failed"
    w.ack(claimed[0].entry_id)
    assert await q.depth(pool) == 0
