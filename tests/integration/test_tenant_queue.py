"""A key's limits and fair share as the scripts keep them, on a real redis-server: the rate bucket
refills, a settle releases concurrency and moves the oldest parked job up (once), a cancel of a
parked or streamed job releases it, a lost settle expires, and an anonymous job counts nowhere."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from common import errors, keys
from common.schemas import Job
from common.shares import Quota
from common.tenants import TakeToken
from router.queue import JobQueue
from router.tracker import JobTracker
from tests.integration.queues import PNG, done, job, worker

pytestmark = pytest.mark.anyio

#: Two jobs of a key on the streams, at most five of its jobs in the pool, no concurrency limit.
FAIR = Quota(concurrency=0, share=2, pool_cap=5)


def tenant(pool: str, letter: str) -> str:
    """A key name of this test's own: a key's concurrency count spans pools, and tests share Redis."""
    return f"{letter}-{pool.rsplit('-', 1)[-1]}"


def shared_ids(sync_redis: redis.Redis, pool: str) -> list[str]:
    """Job ids on the pool's shared stream, in stream order."""
    return [Job.from_fields(f).id for _, f in sync_redis.xrange(keys.pool_stream(pool))]


def parked_ids(sync_redis: redis.Redis, pool: str) -> list[str]:
    return [Job.from_fields(f).id for _, f in sync_redis.xrange(keys.pool_parked(pool))]


async def submit_all(q: JobQueue, pool: str, letter: str, n: int, quota: Quota = FAIR) -> list[Job]:
    jobs = [job(pool) for _ in range(n)]
    for j in jobs:
        await q.submit(j, tenant=tenant(pool, letter), quota=quota)
    return jobs


async def test_the_bucket_refuses_past_its_capacity_and_refills(aio_redis: aioredis.Redis, pool: str) -> None:
    take = TakeToken(aio_redis)
    bucket = keys.tenant_bucket(tenant(pool, "t"))
    answers = [await take(bucket=bucket, rate_per_s=4.0, capacity=3) for _ in range(4)]
    assert [taken for taken, _ in answers] == [True, True, True, False]
    assert answers[3][1] < 1.0
    await asyncio.sleep(0.3)  # 4 tokens a second: one more by now
    taken, tokens = await take(bucket=bucket, rate_per_s=4.0, capacity=3)
    assert taken and tokens < 1.0
    # An idle bucket expires once it would be full: nothing is kept for a key that stopped.
    assert 0 < await aio_redis.pttl(bucket) <= 1000 + 3 / 4 * 1000


async def test_past_its_share_a_key_parks_and_a_settle_moves_its_oldest_parked_job_up(
    aio_redis: aioredis.Redis, sync_redis: redis.Redis, pool: str
) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=20)
    a = await submit_all(q, pool, "a", 4)
    [b] = await submit_all(q, pool, "b", 1)
    # Two of a's on the stream, then b's: a's other two wait parked, and count in the pool's depth.
    assert shared_ids(sync_redis, pool) == [a[0].id, a[1].id, b.id]
    assert parked_ids(sync_redis, pool) == [a[2].id, a[3].id]
    assert await q.depth(pool) == 5
    tracker = JobTracker(aio_redis, aio_redis, scan_max=20)
    assert [await tracker.position(j.id) for j in a] == [0, 1, 2, 3]  # parked: a's own jobs ahead

    [first] = w.claim(block_ms=10)
    assert first.job.id == a[0].id and first.job.tenant == tenant(pool, "a")
    assert w.publish_result(done(first.job.id), [PNG], first.job) is True
    w.ack(first.entry_id, first.stream)
    # a's oldest parked job goes behind b's: b waited behind two of a's, not four.
    assert shared_ids(sync_redis, pool) == [a[1].id, b.id, a[2].id]
    assert parked_ids(sync_redis, pool) == [a[3].id]
    assert await tracker.position(a[2].id) == 2
    # A second result for the same job releases nothing more.
    assert w.publish_result(done(first.job.id), [PNG], first.job) is False
    assert parked_ids(sync_redis, pool) == [a[3].id]
    # Where a moved job is: its entry follows it, so a cancel finds it.
    stream, _ = sync_redis.hmget(keys.job_entry(a[2].id), ["stream", "entry_id"])
    assert stream == keys.pool_stream(pool).encode()


async def test_a_cancel_settles_a_parked_job_and_a_streamed_one(
    aio_redis: aioredis.Redis, sync_redis: redis.Redis, pool: str
) -> None:
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=20)
    worker(sync_redis, pool, "w1")
    a = await submit_all(q, pool, "a", 5, Quota(concurrency=5, share=2, pool_cap=5))
    assert await q.cancel(a[3].id) is True  # parked: removed from where it waited
    assert parked_ids(sync_redis, pool) == [a[2].id, a[4].id]
    assert await q.cancel(a[0].id) is True  # on the stream, unclaimed: a's oldest parked job moves up
    assert shared_ids(sync_redis, pool) == [a[1].id, a[2].id]
    assert parked_ids(sync_redis, pool) == [a[4].id]
    status = await q.status(a[3].id)
    assert status is not None and status.state == "cancelled"
    # Both cancelled jobs gave their concurrency back: two more fit under 5.
    await submit_all(q, pool, "a", 2, Quota(concurrency=5, share=2, pool_cap=0))
    with pytest.raises(errors.ConcurrencyLimited) as refused:
        await q.submit(job(pool), tenant=tenant(pool, "a"), quota=Quota(concurrency=5, share=2, pool_cap=0))
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1


async def test_concurrency_is_released_when_the_job_settles_and_other_keys_are_admitted(
    aio_redis: aioredis.Redis, sync_redis: redis.Redis, pool: str
) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=20)
    limit = Quota(concurrency=2, share=0, pool_cap=0)
    await submit_all(q, pool, "a", 2, limit)
    with pytest.raises(errors.ConcurrencyLimited, match="has 2 unfinished jobs"):
        await q.submit(job(pool), tenant=tenant(pool, "a"), quota=limit)
    await submit_all(q, pool, "b", 2, limit)  # another key is not held back by a's limit
    [first] = w.claim(block_ms=10)
    w.publish_result(done(first.job.id), [PNG], first.job)
    w.ack(first.entry_id, first.stream)
    await submit_all(q, pool, "a", 1, limit)


async def test_a_key_may_fill_only_its_share_of_the_pool_queue(
    aio_redis: aioredis.Redis, sync_redis: redis.Redis, pool: str
) -> None:
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=6)
    worker(sync_redis, pool, "w1")
    cap = Quota(concurrency=0, share=2, pool_cap=3)
    await submit_all(q, pool, "a", 3, cap)
    with pytest.raises(errors.KeyQueueFull, match="holds 3 jobs"):
        await q.submit(job(pool), tenant=tenant(pool, "a"), quota=cap)
    await submit_all(q, pool, "b", 3, cap)
    with pytest.raises(errors.QueueFull):  # the pool's own bound still holds: 6 jobs
        await q.submit(job(pool), tenant=tenant(pool, "c"), quota=cap)


async def test_a_settle_that_never_comes_expires(aio_redis: aioredis.Redis, sync_redis: redis.Redis, pool: str) -> None:
    """The safety net: a count whose job was lost forgets it past the job's deadline plus the slack."""
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=20)
    worker(sync_redis, pool, "w1")
    one = Quota(concurrency=1, share=1, pool_cap=0)
    lost = job(pool, deadline=time.time() - keys.TENANT_SLOT_SLACK_S - 5)
    await q.submit(lost, tenant=tenant(pool, "a"), quota=one)
    await q.submit(job(pool), tenant=tenant(pool, "a"), quota=one)  # admitted: the lost job no longer counts
    assert await aio_redis.zcard(keys.tenant_jobs(tenant(pool, "a"))) == 1


async def test_a_dead_lettered_job_releases_its_key(
    aio_redis: aioredis.Redis, sync_redis: redis.Redis, pool: str
) -> None:
    w = worker(sync_redis, pool, "w1", max_deliveries=1)
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=20)
    one = Quota(concurrency=1, share=1, pool_cap=0)
    await q.submit(job(pool), tenant=tenant(pool, "a"), quota=one)
    [delivery] = w.claim(block_ms=10)
    assert w.retry(delivery) is None  # past max_deliveries: dead-lettered with a failed result
    await q.submit(job(pool), tenant=tenant(pool, "a"), quota=one)


async def test_a_handed_back_job_keeps_its_place(aio_redis: aioredis.Redis, sync_redis: redis.Redis, pool: str) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=20)
    a = await submit_all(q, pool, "a", 2, Quota(concurrency=0, share=1, pool_cap=0))
    w.hand_back(w.claim(block_ms=10))  # a worker that stops gives the job back: it is still a's one
    assert shared_ids(sync_redis, pool) == [a[0].id]
    assert parked_ids(sync_redis, pool) == [a[1].id]


async def test_an_anonymous_job_counts_for_no_key(
    aio_redis: aioredis.Redis, sync_redis: redis.Redis, pool: str
) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=20)
    anonymous = job(pool)
    await q.submit(anonymous)
    [delivery] = w.claim(block_ms=10)
    assert delivery.job.tenant is None
    entry: Any = sync_redis.hgetall(keys.job_entry(anonymous.id))
    assert set(entry) == {b"stream", b"entry_id"}
    assert not sync_redis.exists(keys.pool_share(pool), keys.pool_parked(pool))


async def test_a_parked_job_of_several_images_keeps_its_weight_in_the_bound(
    aio_redis: aioredis.Redis, sync_redis: redis.Redis, pool: str
) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=9)
    one = Quota(concurrency=0, share=1, pool_cap=0)
    first, parked = job(pool, images=3), job(pool, images=3)
    for j in (first, parked):
        await q.submit(j, tenant=tenant(pool, "a"), quota=one)
    assert parked_ids(sync_redis, pool) == [parked.id]
    # 6 images counted, parked ones too: a 4-image job of another key would pass the bound of 9.
    with pytest.raises(errors.QueueFull, match="9 images"):
        await q.submit(job(pool, images=4), tenant=tenant(pool, "b"), quota=one)
    [delivery] = w.claim(block_ms=10)
    w.publish_result(done(delivery.job.id), [PNG] * 3, delivery.job)
    w.ack(delivery.entry_id, delivery.stream)
    # Moved up onto the shared stream with its weight: 3 images there, room for 6 more.
    [(_, fields)] = sync_redis.xrange(keys.pool_stream(pool))
    assert Job.from_fields(fields).id == parked.id and fields[b"images"] == b"3"
    await q.submit(job(pool, images=6), tenant=tenant(pool, "b"), quota=one)
