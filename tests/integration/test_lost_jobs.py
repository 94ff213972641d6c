"""Jobs Redis loses or delivers twice: a waiting router submits a lost job again under its id, once,
and a worker does not run a job whose result is written already.

Redis losing a job is what a failover to a replica that never received it looks like (or a
restart without its data): the job's entry and status are gone while the router still waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis
import redis.asyncio as aioredis

from common import errors, keys
from common.connections import async_client
from common.schemas import Job
from router.queue import JobQueue
from tests.integration.inprocess import SDXL, Workers
from tests.integration.queues import PNG, done, job, worker

pytestmark = pytest.mark.anyio


def lose(client: redis.Redis, j: Job) -> None:
    """Redis forgets the job: its stream entry, status and entry hash (nothing else changes)."""
    where = client.hmget(keys.job_entry(j.id), ["stream", "entry_id"])
    if where[0] is not None and where[1] is not None:
        client.xdel(where[0], where[1])
    client.delete(keys.job_status(j.id), keys.job_entry(j.id))


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.02)


async def test_a_job_lost_while_waited_for_is_submitted_again_once(
    sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str
) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8, poll_s=0.1)
    j = job(pool)
    await q.submit(j)
    submitted_again: list[str] = []

    async def lost() -> None:
        submitted_again.append(await q.submit(j))

    waiting = asyncio.create_task(q.wait(j.id, timeout_s=10, lost=lost))
    await asyncio.sleep(0.15)
    lose(sync_redis, j)
    await until(lambda: submitted_again)
    [delivery] = w.claim(block_ms=1000)
    assert delivery.job == j  # the same job, the same id
    w.settle(delivery, done(j.id), [PNG])
    found = await waiting
    assert found is not None and found[1] == [PNG]
    assert len(submitted_again) == 1


async def test_a_job_lost_twice_is_refused(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8, poll_s=0.1)
    j = job(pool)
    await q.submit(j)
    lost_count = 0

    async def lost() -> None:
        nonlocal lost_count
        lost_count += 1
        await q.submit(j)
        lose(sync_redis, j)  # and gone again at once

    lose(sync_redis, j)
    with pytest.raises(errors.RedisUnavailable) as refused:
        await q.wait(j.id, timeout_s=10, lost=lost)
    assert lost_count == 1
    assert refused.value.retry_after and refused.value.retry_after >= 1


async def test_without_a_resubmit_a_lost_job_is_waited_for_until_the_bound(
    sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str
) -> None:
    """``lost`` is the caller's choice: without it the wait does not look for the job (as before)."""
    worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8, poll_s=0.1)
    j = job(pool)
    await q.submit(j)
    lose(sync_redis, j)
    assert await q.wait(j.id, timeout_s=0.5) is None


async def test_a_job_delivered_again_after_its_result_is_not_run_again(workers: Workers, redis_url: str) -> None:
    """Twice on the stream under one id (a failover replayed it, or the router submitted it again)."""
    client = async_client(redis_url)
    q = JobQueue(client, worker_ttl_s=60, queue_max=8)
    sdxl = workers[SDXL]
    j = Job(pool=SDXL, prompt="a cat", seed=1, num_inference_steps=2)
    await q.submit(j)
    await workers.drain()
    first = await q.result(j.id)
    await q.submit(j)
    await workers.drain()
    assert [d.id for d in sdxl.jobs] == [j.id, j.id]  # handed over twice
    assert sdxl.worker.jobs_done == 1  # run once
    assert await q.result(j.id) == first
    assert await q.depth(SDXL) == 0  # the second delivery was acknowledged all the same
    await client.aclose()
