"""Acknowledge only what is replicated: the router's and the worker's writes against a real primary
and its replica (``ReplicaPair``), with the replica in step or stopped.

A stopped replica (SIGSTOP) receives nothing and confirms nothing, as one that is down or cut off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from common import errors, keys
from common.connections import OUTAGES, async_client, sync_client
from common.protocol import image_field
from common.replication import Replication
from common.schemas import WorkerState
from common.shares import Quota
from router.queue import JobQueue
from tests.integration.inprocess import SDXL, AppClient, assert_error
from tests.integration.queues import PNG, done, job, worker
from tests.integration.replicas import ReplicaPair
from worker.queue import WorkerQueue

pytestmark = pytest.mark.anyio

ONE = Replication(replicas=1, timeout_ms=300)


@pytest.fixture
async def primary(replicas: ReplicaPair) -> AsyncIterator[aioredis.Redis]:
    client = async_client(replicas.primary_url)
    yield client
    await client.aclose()


@pytest.fixture
def sync_primary(replicas: ReplicaPair) -> redis.Redis:
    return sync_client(replicas.primary_url)


@pytest.fixture
def replica(replicas: ReplicaPair) -> redis.Redis:
    return redis.Redis.from_url(replicas.replica_url, socket_timeout=5)


async def test_a_job_is_accepted_once_the_replica_holds_it(
    replicas: ReplicaPair, primary: aioredis.Redis, sync_primary: redis.Redis, replica: redis.Redis, pool: str
) -> None:
    worker(sync_primary, pool, "w1")
    q = JobQueue(primary, worker_ttl_s=10, queue_max=8, replication=Replication(replicas=1, timeout_ms=5000))
    j = job(pool)
    with replicas.silent_replica():
        submitting = asyncio.create_task(q.submit(j))
        await asyncio.sleep(0.5)
        assert not submitting.done()  # written on the primary, not accepted while the replica lacks it
    await submitting  # the replica resumed and confirmed it
    assert replica.xlen(keys.pool_stream(pool)) == 1
    assert replica.exists(keys.job_status(j.id), keys.job_entry(j.id)) == 2


async def test_with_the_replica_silent_the_job_is_withdrawn_and_refused(
    replicas: ReplicaPair, primary: aioredis.Redis, sync_primary: redis.Redis, replica: redis.Redis, pool: str
) -> None:
    worker(sync_primary, pool, "w1")
    q = JobQueue(primary, worker_ttl_s=10, queue_max=8, replication=ONE)
    j = job(pool)
    with replicas.silent_replica():
        start = time.monotonic()
        with pytest.raises(errors.RedisUnavailable) as refused:
            await q.submit(j)
        waited = time.monotonic() - start
    assert refused.value.retry_after and refused.value.retry_after >= 1
    assert waited >= ONE.timeout_ms / 1000
    # Withdrawn: as if never submitted, on the primary and (once it caught up) on the replica.
    for client in (sync_primary, replica):
        assert client.xlen(keys.pool_stream(pool)) == 0
        assert client.exists(keys.job_status(j.id), keys.job_entry(j.id)) == 0
    assert await q.status(j.id) is None
    assert await q.depth(pool) == 0


async def test_a_withdrawn_job_of_a_key_gives_the_keys_place_back(
    replicas: ReplicaPair, primary: aioredis.Redis, sync_primary: redis.Redis, pool: str
) -> None:
    worker(sync_primary, pool, "w1")
    q = JobQueue(primary, worker_ttl_s=10, queue_max=8, replication=ONE)
    one = Quota(concurrency=1, share=1, pool_cap=0)
    name = f"k-{pool.rsplit('-', 1)[-1]}"
    with replicas.silent_replica(), pytest.raises(errors.RedisUnavailable):
        await q.submit(job(pool), tenant=name, quota=one)
    # Never accepted, so it holds nothing of its key's concurrency: the next job gets in.
    assert sync_primary.zcard(keys.tenant_jobs(name)) == 0
    await q.submit(job(pool), tenant=name, quota=one)
    assert sync_primary.zcard(keys.tenant_jobs(name)) == 1


async def test_a_withdrawn_job_a_worker_claimed_meanwhile_is_dropped_unrun(
    replicas: ReplicaPair, primary: aioredis.Redis, sync_primary: redis.Redis, pool: str
) -> None:
    w = worker(sync_primary, pool, "w1")
    q = JobQueue(primary, worker_ttl_s=10, queue_max=8, replication=ONE)
    j = job(pool)
    with replicas.silent_replica():
        # The worker blocks on its streams and takes the job the moment it is written, before the WAIT ends.
        claiming = asyncio.create_task(asyncio.to_thread(w.claim, 3000))
        await asyncio.sleep(0.2)
        with pytest.raises(errors.RedisUnavailable):
            await q.submit(j)
        [delivery] = await claiming
    assert delivery.job.id == j.id
    assert w.standing(j.id).cancelled  # so the worker drops it unrun
    assert await q.status(j.id) is None


async def test_a_result_the_replica_did_not_confirm_is_settled_again(
    replicas: ReplicaPair, primary: aioredis.Redis, sync_primary: redis.Redis, replica: redis.Redis, pool: str
) -> None:
    w = worker(sync_primary, pool, "w1", replication=ONE)
    q = JobQueue(primary, worker_ttl_s=10, queue_max=8, replication=ONE)
    j = job(pool)
    await q.submit(j)
    [delivery] = w.claim(block_ms=100)
    with replicas.silent_replica():
        assert w.settle(delivery, done(j.id), [PNG]) is False
    # The replica caught up meanwhile, but only a settle confirmed by WAIT counts: the same call again.
    assert w.settle(delivery, done(j.id, "second try"), [b"other"]) is True
    meta = replica.hget(keys.job_result(j.id), "meta")
    assert meta is not None and b'"worker_id":"w1"' in meta  # written once, by the first try
    assert replica.hget(keys.job_result(j.id), image_field(0)) == PNG
    assert replica.xlen(keys.pool_stream(pool)) == 0  # acknowledged and deleted there too
    result, images = await q.wait(j.id, timeout_s=1)  # type: ignore[misc]
    assert (result.worker_id, images) == ("w1", [PNG])


async def test_a_cancel_the_replica_did_not_confirm_is_refused(
    replicas: ReplicaPair, primary: aioredis.Redis, sync_primary: redis.Redis, pool: str
) -> None:
    worker(sync_primary, pool, "w1")
    q = JobQueue(primary, worker_ttl_s=10, queue_max=8, replication=ONE)
    j = job(pool)
    await q.submit(j)
    with replicas.silent_replica(), pytest.raises(errors.RedisUnavailable):
        await q.cancel(j.id)
    assert await q.cancel(j.id) is False  # sent again: confirmed (removed the first time already)
    assert (await q.status(j.id)).state == "cancelled"  # type: ignore[union-attr]


async def test_writes_on_a_replica_are_an_outage_not_a_crash(replicas: ReplicaPair, pool: str) -> None:
    """A client left on a demoted primary gets READONLY: the router answers 503, the worker backs off."""
    client = async_client(replicas.replica_url)
    q = JobQueue(client, worker_ttl_s=10, queue_max=8)
    state = WorkerState(worker_id="w1", pool=pool)
    with pytest.raises(errors.RedisUnavailable):
        await q.submit(job(pool), workers=[state])
    await client.aclose()
    on_replica = WorkerQueue(sync_client(replicas.replica_url), pool, "w1")
    with pytest.raises(OUTAGES):  # what the worker loop backs off on
        on_replica.ensure_group()


async def test_the_router_answers_503_with_retry_after_when_the_replica_is_silent(
    replicas: ReplicaPair, sync_primary: redis.Redis, app_client: AppClient
) -> None:
    sync_primary.flushdb()
    worker(sync_primary, SDXL, "w1")
    with replicas.silent_replica():
        async with app_client(redis_url=replicas.primary_url, redis_min_replicas=1, redis_replica_timeout_ms=300) as c:
            answer = await c.post("/jobs", json={"inputs": "a cat", "model": SDXL})
    assert_error(answer, 503, "redis_unavailable")
    assert int(answer.headers["retry-after"]) >= 1
    assert sync_primary.xlen(keys.pool_stream(SDXL)) == 0
