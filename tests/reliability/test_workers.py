"""Workers that die, stop, or meet a job that crashes them: nothing lost, nothing run twice, nothing stuck."""

from __future__ import annotations

import asyncio
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from common import keys
from common.connections import async_client
from common.schemas import Job
from lorafarm.farm import Farm, free_port
from router.queue import JobQueue
from tests.polling import busy_workers, live_workers
from tests.reliability.figures import Figures
from tests.reliability.tools import (
    SDXL,
    SLOW_STEPS,
    assert_clean,
    assert_error,
    body,
    log,
    post,
    ran,
    redis_client,
    running_workers,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.mark.timeout(120)
def test_worker_killed_mid_job_another_worker_finishes_it_once(two_workers: Farm, figures: Figures) -> None:
    farm = two_workers
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, farm, SDXL, body(steps=SLOW_STEPS, seed=11))
        holder, job_id = wait_until(lambda: next(iter(busy_workers(farm).items()), None), 20, what="a busy worker")
        farm.kill(holder)  # SIGKILL: no chance to hand anything back
        killed = time.monotonic()
        resp = pending.result(timeout=90)
    recovered_s = time.monotonic() - killed
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-request-id"] == job_id
    survivor = resp.headers["x-worker-id"]
    assert survivor != holder
    # Written once: only the survivor generated it, and nobody published a second result.
    wait_until(lambda: ran(farm, job_id), 5, what="the job logged as done")
    assert ran(farm, job_id) == [survivor]
    assert "event=duplicate_result" not in log(farm, survivor)
    assert_clean(redis_client(farm))
    figures(image_after_kill_s=round(recovered_s, 2))


@pytest.mark.timeout(180)
def test_sigterm_finishes_the_job_in_hand_claims_no_more_and_leaves_streams_clean(
    two_workers: Farm, figures: Figures
) -> None:
    farm = two_workers
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, farm, SDXL, body(steps=SLOW_STEPS, seed=21))
        holder, first_id = wait_until(lambda: next(iter(busy_workers(farm).items()), None), 20, what="a busy worker")
        farm.signal(holder, signal.SIGTERM)
        stopped = time.monotonic()
        second = pool.submit(post, farm, SDXL, body(steps=4, seed=22))
        first_resp, second_resp = first.result(timeout=90), second.result(timeout=90)
    exit_code = farm.procs[holder].wait(30)
    assert exit_code == 0
    # The job in hand was finished by the stopping worker, and only by it (its heartbeat went on
    # while it drained, so nobody adopted the job and ran it again).
    assert first_resp.status_code == 200, first_resp.text
    assert first_resp.headers["x-worker-id"] == holder
    wait_until(lambda: ran(farm, first_id), 5, what="the job logged as done")
    assert ran(farm, first_id) == [holder]
    # The stopping worker claimed nothing more: the next job went to the other worker.
    assert second_resp.status_code == 200, second_resp.text
    assert second_resp.headers["x-worker-id"] != holder
    assert f"event=worker_stopped worker={holder}" in log(farm, holder)
    client = redis_client(farm)
    assert_clean(client)
    assert client.get(keys.worker_state(SDXL, holder)) is None
    figures(drained_s=round(time.monotonic() - stopped, 2))


@pytest.mark.timeout(120)
def test_poison_job_is_dead_lettered_and_the_pool_keeps_serving(one_worker: Farm, figures: Figures) -> None:
    """A job that crashes its worker every time (an exception no error type covers).

    Seed 2**64 passes the job schema but no router would send it (the API caps seeds at
    2**63 - 1): torch's generator raises ValueError on every delivery. The job is put on the
    stream with the router's own queue client, as the router would, and read back through the
    router's job API.
    """
    farm = one_worker
    client = redis_client(farm)
    poison = Job(pool=SDXL, prompt="poison", seed=2**64, num_inference_steps=2)

    async def submit() -> None:
        aio = async_client(farm.redis_url)
        try:
            await JobQueue(aio, worker_ttl_s=1.5, queue_max=100).submit(poison)
        finally:
            await aio.aclose()

    started = time.monotonic()
    asyncio.run(submit())
    # The pool serves others while the poison job fails its deliveries.
    for seed in range(3):
        assert post(farm, SDXL, body(seed=seed)).status_code == 200

    def settled() -> dict | None:
        view = httpx.get(f"{farm.router_url}/jobs/{poison.id}", timeout=10).json()
        return view if view["status"] in ("failed", "done", "cancelled") else None

    view = wait_until(settled, 60, interval=0.2, what="the poison job to settle")
    dead_lettered_s = time.monotonic() - started
    assert view["status"] == "failed"
    assert view["error_type"] == "job_failed"
    result = httpx.get(f"{farm.router_url}/jobs/{poison.id}/result", timeout=10)
    assert_error(result, 500, "job_failed")
    dead = client.xrange(keys.dead_letter_stream(SDXL))
    mine = [fields for _id, fields in dead if poison.id.encode() in fields[b"job"]]
    assert len(mine) == 1
    assert mine[0][b"reason"] == b"max_deliveries"
    assert int(mine[0][b"deliveries"]) == 3  # the workers' default max_deliveries
    crashes = sum(
        text.count(f"event=job_crashed job={poison.id}")
        for text in [log(farm, n) for n in farm.procs if n.startswith("worker-")]
    )
    assert crashes == 3
    assert_clean(client)
    assert post(farm, SDXL).status_code == 200
    figures(dead_lettered_s=round(dead_lettered_s, 2))


@pytest.mark.timeout(60)
def test_a_job_its_family_refuses_fails_once_with_the_reason(one_worker: Farm) -> None:
    """Width 12 on the stream (no router sends it): the worker's family check refuses it, no crash, no retry."""
    farm = one_worker
    odd = Job(pool=SDXL, prompt="odd", seed=1, num_inference_steps=2, width=12, height=64)

    async def submit() -> None:
        aio = async_client(farm.redis_url)
        try:
            await JobQueue(aio, worker_ttl_s=1.5, queue_max=100).submit(odd)
        finally:
            await aio.aclose()

    asyncio.run(submit())

    def settled() -> dict | None:
        view = httpx.get(f"{farm.router_url}/jobs/{odd.id}", timeout=10).json()
        return view if view["status"] in ("failed", "done", "cancelled") else None

    view = wait_until(settled, 30, interval=0.2, what="the odd job to settle")
    assert (view["status"], view["error_type"]) == ("failed", "invalid_request")
    assert "multiple of 8" in view["error"]
    lines = sum(log(farm, n).count(f"job={odd.id}") for n in farm.procs if n.startswith("worker-"))
    assert lines == 1  # one event=job_failed line: delivered once, never dead-lettered
    assert not [
        f for _id, f in redis_client(farm).xrange(keys.dead_letter_stream(SDXL)) if odd.id.encode() in f[b"job"]
    ]


@pytest.mark.timeout(120)
def test_sigterm_to_the_router_drains_in_flight_requests(one_worker: Farm) -> None:
    farm = one_worker
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, farm, SDXL, body(steps=SLOW_STEPS, seed=31))
            wait_until(lambda: busy_workers(farm), 20, what="a busy worker")
            farm.signal("router", signal.SIGTERM)
            # No new connection is taken while it drains...
            wait_until(lambda: refused(f"{farm.router_url}/health"), 10, what="new connections refused")
            assert not pending.done()
            resp = pending.result(timeout=60)  # ...but the request in flight gets its image.
        assert resp.status_code == 200, resp.text
        # uvicorn ends by re-raising the SIGTERM it handled, once the drain is over.
        assert farm.procs["router"].wait(30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in log(farm, "router")
    finally:
        if farm.procs["router"].poll() is not None:
            farm.start_router()


def refused(url: str) -> bool:
    """True once nothing accepts a connection at ``url`` (other transport errors: not yet)."""
    try:
        httpx.get(url, timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        return False
    return False


@pytest.mark.timeout(180)
def test_a_job_past_max_job_s_silences_its_worker_until_it_ends(farm: Farm) -> None:
    """A worker stuck in a job (heartbeat thread still running) must look dead, not alive and idle-less.

    Its peers then take its jobs over as from a crashed worker (the SIGKILL test above proves
    that path); here the job does end, and the worker comes back.
    """
    for name in running_workers(farm):
        assert farm.terminate(name) == 0
    probe = free_port()
    overrun = {"LORAFARM_MAX_JOB_S": "0.5", "LORAFARM_WORKER_TTL_S": "1", "LORAFARM_WORKER_PORT": str(probe)}
    stuck = farm.start_worker(SDXL, overrun)
    wait_until(lambda: [w["worker_id"] for w in live_workers(farm)] == [stuck], 60, what="the worker up")
    health = f"http://127.0.0.1:{probe}"
    assert httpx.get(f"{health}/health", timeout=5).status_code == 200
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, farm, SDXL, body(steps=150, seed=71, width=128, height=128))
        wait_until(lambda: busy_workers(farm), 20, what="the job running")
        # Past max_job_s its heartbeat stops and expires (its TTL: 1 s): the pool sees no live worker...
        wait_until(lambda: not live_workers(farm), 15, what="the worker silent")
        assert not pending.done()
        # ...and the orchestrator's liveness probe would restart it.
        assert httpx.get(f"{health}/health", timeout=5).status_code == 503
        assert httpx.get(f"{health}/ready", timeout=5).status_code == 503
        resp = pending.result(timeout=90)
    assert resp.status_code == 200, resp.text
    assert "event=worker_hung" in log(farm, stuck)
    # The job ended: the worker announces itself again.
    wait_until(lambda: [w["worker_id"] for w in live_workers(farm)] == [stuck], 15, what="the worker back")
    assert httpx.get(f"{health}/health", timeout=5).status_code == 200
    assert_clean(redis_client(farm))
    assert farm.terminate(stuck) == 0
