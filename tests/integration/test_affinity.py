"""Adapter affinity over a real redis-server: per-worker streams, adoption from dead workers, hand-back."""

from __future__ import annotations

import time

import pytest
import redis
import redis.asyncio as aioredis

from common import errors, keys
from common.connections import async_client
from common.schemas import AdapterRef, Job, WorkerState, adapter_set_key
from router.fleet import Fleet
from router.placement import PlacementRules
from router.queue import JobQueue
from worker.queue import WorkerQueue

pytestmark = pytest.mark.anyio

A = AdapterRef(repo_id="tiny/sdxl-lora-a", revision="a" * 40, weight_name="w.safetensors")
B = AdapterRef(repo_id="tiny/sdxl-lora-b", revision="b" * 40, weight_name="w.safetensors")


@pytest.fixture
def jobs(aio_redis: aioredis.Redis) -> JobQueue:
    return JobQueue(aio_redis, worker_ttl_s=30, queue_max=10)


def holding(name: str, pool: str, fused: list[AdapterRef]) -> WorkerState:
    """The heartbeat of a worker with ``fused`` active."""
    return WorkerState(worker_id=name, pool=pool, fused=[a.key for a in fused], fused_set=adapter_set_key(fused))


def worker(r: redis.Redis, pool: str, name: str, *, fused: list[AdapterRef] | None = None) -> WorkerQueue:
    q = WorkerQueue(r, pool, name)
    q.ensure_group()
    q.heartbeat(holding(name, pool, fused or []), ttl_s=30)
    return q


def job(pool: str, *adapters: AdapterRef) -> Job:
    return Job(pool=pool, adapters=list(adapters), prompt="p", seed=1)


async def test_placed_job_reaches_the_chosen_worker_only(sync_redis: redis.Redis, jobs: JobQueue, pool: str) -> None:
    w1 = worker(sync_redis, pool, "w1", fused=[A])
    w2 = worker(sync_redis, pool, "w2", fused=[B])
    fleet = Fleet(PlacementRules(stale_after_s=30))
    live = await jobs.live_workers(pool)
    j = job(pool, A)
    target = fleet.place(j.adapters, live, time.time(), j.id)
    assert target == "w1"
    await jobs.submit(j, worker_id=target, workers=live)
    assert w2.claim(block_ms=10) == []
    got = w1.claim(block_ms=10)
    assert [d.job.id for d in got] == [j.id]
    assert got[0].stream == keys.worker_stream(pool, "w1")
    assert await jobs.depth(pool) == 1
    w1.ack(got[0].entry_id, got[0].stream)
    assert await jobs.depth(pool) == 0


async def test_own_stream_before_the_shared_one(sync_redis: redis.Redis, jobs: JobQueue, pool: str) -> None:
    w1 = worker(sync_redis, pool, "w1")
    shared, placed = job(pool, B), job(pool, A)
    await jobs.submit(shared)
    await jobs.submit(placed, worker_id="w1")
    # Its own jobs first, and the next shared one with them, so that spilled jobs are not starved
    # while placements keep the own stream busy.
    assert [d.job.id for d in w1.claim(block_ms=10)] == [placed.id, shared.id]
    assert [d.job.id for d in w1.claim(block_ms=10)] == []
    await jobs.submit(shared2 := job(pool, B))
    assert [d.job.id for d in w1.claim(block_ms=10, include_pool=False)] == []
    assert [d.job.id for d in w1.claim(block_ms=10)] == [shared2.id]


async def test_jobs_of_a_dead_worker_are_adopted(sync_redis: redis.Redis, jobs: JobQueue, pool: str) -> None:
    dead = worker(sync_redis, pool, "dead")
    live = worker(sync_redis, pool, "live")
    claimed, unclaimed = job(pool, A), job(pool, A)
    await jobs.submit(claimed, worker_id="dead")
    assert [d.job.id for d in dead.claim(block_ms=10)] == [claimed.id]
    await jobs.submit(unclaimed, worker_id="dead")
    sync_redis.delete(keys.worker_state(pool, "dead"))  # its heartbeat expired: it died
    time.sleep(0.6)  # past the adoption idle time of claimed entries
    adopted = live.reclaim(min_idle_ms=60_000)
    assert sorted(d.job.id for d in adopted) == sorted([claimed.id, unclaimed.id])
    by_id = {d.job.id: d for d in adopted}
    assert by_id[claimed.id].deliveries == 2
    for d in adopted:
        live.ack(d.entry_id, d.stream)
    # Nothing left: the dead worker's stream and membership are forgotten on the next round.
    assert live.reclaim(min_idle_ms=60_000) == []
    assert not sync_redis.exists(keys.worker_stream(pool, "dead"))
    assert sync_redis.zscore(keys.pool_workers(pool), "dead") is None


async def test_a_job_placed_on_a_worker_that_just_died_goes_to_the_shared_stream(
    sync_redis: redis.Redis, jobs: JobQueue, pool: str
) -> None:
    dying = worker(sync_redis, pool, "dying", fused=[A])
    live = worker(sync_redis, pool, "live")
    seen = await jobs.live_workers(pool)  # the router's view: "dying" holds A
    sync_redis.delete(keys.worker_state(pool, "dying"))  # its heartbeat expires...
    assert live.reclaim(min_idle_ms=60_000) == []  # ...and a peer forgets its (empty) stream
    j = job(pool, A)
    await jobs.submit(j, worker_id="dying", workers=seen)
    assert not sync_redis.exists(keys.worker_stream(pool, "dying"))  # not recreated with nobody to read it
    got = live.claim(block_ms=10)
    assert [(d.job.id, d.stream) for d in got] == [(j.id, keys.pool_stream(pool))]
    # Had "dying" only stalled, it finds its stream gone, makes it again, and takes placements anew.
    assert dying.claim(block_ms=10) == []
    dying.heartbeat(holding("dying", pool, [A]), ttl_s=30)
    await jobs.submit(again := job(pool, A), worker_id="dying")
    assert [d.job.id for d in dying.claim(block_ms=10, include_pool=False)] == [again.id]


async def test_a_stopping_worker_hands_its_jobs_back(sync_redis: redis.Redis, jobs: JobQueue, pool: str) -> None:
    leaving = worker(sync_redis, pool, "leaving")
    staying = worker(sync_redis, pool, "staying")
    held, late = job(pool, A), job(pool, B)
    await jobs.submit(held, worker_id="leaving")
    backlog = leaving.claim(block_ms=10)
    await jobs.submit(late, worker_id="leaving")
    leaving.hand_back(backlog)
    leaving.deregister()
    got = staying.claim(block_ms=10) + staying.claim(block_ms=10)
    assert sorted(d.job.id for d in got) == sorted([held.id, late.id])
    assert all(d.stream == keys.pool_stream(pool) for d in got)
    # A cancel still finds the job where it now is.
    fresh = job(pool, A)
    await jobs.submit(fresh, worker_id="staying")
    assert await jobs.cancel(fresh.id)


async def test_queue_bound_counts_every_stream(sync_redis: redis.Redis, redis_server: str, pool: str) -> None:
    worker(sync_redis, pool, "w1")
    client = async_client(redis_server)
    small = JobQueue(client, worker_ttl_s=30, queue_max=2)
    await small.submit(job(pool, A), worker_id="w1")
    await small.submit(job(pool, B))
    with pytest.raises(errors.QueueFull):
        await small.submit(job(pool, A), worker_id="w1")
    await client.aclose()
