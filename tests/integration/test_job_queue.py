"""The router's end of the queue (submit, wait, cancel, bounds, outages) against a real redis-server.

Real ``WorkerQueue``s serve the jobs.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from common import errors, keys
from common.connections import async_client, sync_client
from common.protocol import text
from common.schemas import WorkerState
from lorafarm.farm import free_port, wait_port
from router.queue import JobQueue
from tests.conftest import stop
from tests.integration.queues import PNG, done, job, worker
from worker.queue import WorkerQueue

pytestmark = pytest.mark.anyio


async def test_submit_claim_publish_wait(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8)
    j = job(pool)
    await q.submit(j)
    assert (await q.status(j.id)).state == "queued"  # type: ignore[union-attr]
    assert await q.depth(pool) == 1

    [delivery] = w.claim(block_ms=100)
    assert delivery.job == j and delivery.deliveries == 1
    assert await q.depth(pool) == 1  # in hand still counts
    assert w.publish_result(done(j.id), [PNG]) is True
    w.ack(delivery.entry_id)

    found = await q.wait(j.id, timeout_s=5)
    assert found is not None
    result, images = found
    assert (result.status, result.worker_id, images) == ("done", "w1", [PNG])
    assert await q.depth(pool) == 0
    assert (await q.status(j.id)).state == "done"  # type: ignore[union-attr]
    assert 0 < await aio_redis.ttl(keys.job_result(j.id)) <= keys.RESULT_TTL_S
    assert w.claim(block_ms=10) == []


async def test_first_unclaimed_entry(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    """The worker's prefetch and the router's queue-wait gauge read the same entry: the first nobody took."""
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8)
    stream = keys.pool_stream(pool)
    assert await q.oldest_unclaimed(stream) is None  # no stream yet
    unread = text(sync_redis.xadd(stream, {"job": job(pool).model_dump_json()}))
    # Before the workers' group exists nobody has read the stream: its first entry waits.
    assert await q.oldest_unclaimed(stream) == int(unread.split("-")[0]) / 1000
    sync_redis.delete(stream)
    w = worker(sync_redis, pool, "w1")
    assert w.peek() is None and await q.oldest_unclaimed(stream) is None  # an empty stream
    first, second = job(pool), job(pool)
    await q.submit(first)
    await q.submit(second)
    assert w.peek() == first
    before = await q.oldest_unclaimed(stream)
    [delivery] = w.claim(block_ms=100)
    assert delivery.job == first
    assert w.peek() == second  # the claimed one is no longer waiting
    after = await q.oldest_unclaimed(stream)
    assert before is not None and after is not None and before <= after <= time.time() + 1
    assert len(w.claim(block_ms=100)) == 1
    assert w.peek() is None and await q.oldest_unclaimed(stream) is None


async def test_cancel_unclaimed_job_removes_it(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8)
    j = job(pool)
    await q.submit(j)
    assert await q.cancel(j.id) is True
    assert await q.depth(pool) == 0
    assert w.claim(block_ms=50) == []  # never run for nobody
    assert w.is_cancelled(j.id)
    assert (await q.status(j.id)).state == "cancelled"  # type: ignore[union-attr]


async def test_cancel_claimed_job_marks_it(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8)
    j = job(pool)
    await q.submit(j)
    [delivery] = w.claim(block_ms=100)
    assert not w.is_cancelled(j.id)
    assert await q.cancel(j.id) is False  # in a worker's hands: the worker drops it
    assert w.is_cancelled(j.id)
    assert await q.depth(pool) == 1
    w.ack(delivery.entry_id)
    assert await q.cancel("no-such-job") is False


async def test_queue_bound(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    w = worker(sync_redis, pool, "w1")
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=2)
    await q.submit(job(pool))
    await q.submit(job(pool))
    with pytest.raises(errors.QueueFull) as info:
        await q.submit(job(pool))
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    assert await q.depth(pool) == 2
    [delivery] = w.claim(block_ms=100)
    w.ack(delivery.entry_id)
    await q.submit(job(pool))  # room again once one is settled


async def test_no_live_worker(sync_redis: redis.Redis, aio_redis: aioredis.Redis, pool: str) -> None:
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8)
    with pytest.raises(errors.NoWorker) as info:
        await q.submit(job(pool))
    assert info.value.retry_after
    assert await q.depth(pool) == 0

    short = WorkerQueue(sync_redis, pool, "short")
    short.heartbeat(WorkerState(worker_id="short", pool=pool, fused=["x@1"]), ttl_s=1.0)
    [state] = await q.live_workers(pool)
    assert state.fused == ["x@1"]
    deadline = time.monotonic() + 10
    while await q.live_workers(pool) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await q.live_workers(pool) == []  # its heartbeat expired

    draining = WorkerQueue(sync_redis, pool, "draining")
    draining.heartbeat(WorkerState(worker_id="draining", pool=pool, status="draining"), ttl_s=10)
    with pytest.raises(errors.NoWorker):
        await q.submit(job(pool))
    draining.deregister()
    assert await q.live_workers(pool) == []


async def test_wait_times_out_and_can_stop(aio_redis: aioredis.Redis) -> None:
    q = JobQueue(aio_redis, worker_ttl_s=10, queue_max=8, poll_s=0.05)
    start = time.monotonic()
    assert await q.wait("never", timeout_s=0.2) is None
    assert 0.15 < time.monotonic() - start < 1.5

    calls = 0

    async def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 2

    start = time.monotonic()
    assert await q.wait("never", timeout_s=30, stop=stop) is None
    assert time.monotonic() - start < 1.0


async def test_redis_down_is_unavailable() -> None:
    client = async_client(f"redis://127.0.0.1:{free_port()}/0")
    q = JobQueue(client, worker_ttl_s=10, queue_max=8)
    start = time.monotonic()
    for call in (q.ping(), q.depth("p"), q.live_workers("p"), q.status("j"), q.cancel("j")):
        with pytest.raises(errors.RedisUnavailable) as info:
            await call
        assert info.value.retry_after
    assert time.monotonic() - start < 5
    await client.aclose()


async def test_wait_rides_out_a_redis_restart(tmp_path: Path) -> None:
    """A job accepted before Redis went down is answered once Redis is back (append-only file)."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
           "--appendfsync", "always", "--dir", str(tmp_path)]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    wait_port(port, server)
    url = f"redis://127.0.0.1:{port}/0"
    client, sync = async_client(url), sync_client(url)
    try:
        w = worker(sync, "p", "w1")
        q = JobQueue(client, worker_ttl_s=10, queue_max=8, poll_s=0.2)
        j = job("p")
        await q.submit(j)
        waiting = asyncio.create_task(q.wait(j.id, timeout_s=20))
        await asyncio.sleep(0.3)
        stop(server)
        await asyncio.sleep(0.5)
        assert not waiting.done()  # the outage does not fail the wait
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        wait_port(port, server)
        [delivery] = w.claim(block_ms=1000)  # the job survived the restart
        w.publish_result(done(j.id), [PNG])
        w.ack(delivery.entry_id)
        result, images = await asyncio.wait_for(waiting, 10)  # type: ignore[misc]
        assert (result.status, images) == ("done", [PNG])
    finally:
        await client.aclose()
        sync.close()
        stop(server)
