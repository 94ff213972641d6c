"""The clients of ``common/connections.py`` behind real sentinels, with a password and TLS on every
server and sentinel: they find the primary, confirm writes on its replica, and follow a failover.

The replicated Redis is the farm's (``lorafarm/replicated.py``), without the rest of a farm.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import errors
from common.connections import async_client, sync_client
from common.replication import Replication
from common.schemas import WorkerState
from lorafarm.farm import Farm, FarmConfig
from router.queue import JobQueue
from tests.integration.queues import done, job, worker

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    state = tmp_path_factory.mktemp("sentinels")
    farm = Farm(FarmConfig(state_dir=state, zoo_dir=Path(state), redis_ha=True, redis_password="pw-9", redis_tls=True))
    try:
        farm.start_redis()
        yield farm
    finally:
        farm.stop()


async def test_clients_follow_a_failover_over_tls(replicated: Farm, pool: str) -> None:
    farm, ha = replicated, replicated.replicated
    assert ha is not None
    assert farm.redis_url.startswith("rediss://")
    target = farm.redis_target()
    sync, aio = sync_client(target), async_client(target)
    w = worker(sync, pool, "w1", replication=Replication(1, 2000))
    q = JobQueue(aio, worker_ttl_s=30, queue_max=8, replication=Replication(1, 2000))
    live = [WorkerState(worker_id="w1", pool=pool)]
    before = job(pool)
    await q.submit(before, workers=live)  # confirmed by the replica

    old = ha.primary()
    farm.kill(old)
    killed = time.monotonic()
    while True:  # the router's end: 503 until the sentinels name the replica the primary
        try:
            await q.live_workers(pool)
            break
        except errors.RedisUnavailable:
            assert time.monotonic() - killed < 30, "no new primary"
            await asyncio.sleep(0.05)
    assert ha.primary() != old
    # The job accepted before the kill is on the new primary; the worker's end follows too.
    [delivery] = w.claim(block_ms=1000)
    assert delivery.job == before
    farm.restart(old)  # back as a replica, so the new primary can confirm writes again
    ha.wait_replicated()
    assert w.settle(delivery, done(before.id), [b"image"]) is True
    found = await q.wait(before.id, timeout_s=5)
    assert found is not None and found[1] == [b"image"]
    await q.submit(job(pool), workers=live)
    await aio.aclose()
    sync.close()
