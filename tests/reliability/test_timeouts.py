"""Past the wait bound: 504 and the job is cancelled; a client that hangs up cancels its queued job."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from lorafarm.farm import Farm
from tests.polling import busy_workers
from tests.reliability.conftest import farm_with, restarted_router
from tests.reliability.figures import Figures
from tests.reliability.tools import (
    SDXL,
    SLOW_STEPS,
    assert_clean,
    assert_error,
    body,
    post,
    ran,
    redis_client,
    running_workers,
    wait_until,
)

pytestmark = pytest.mark.slow


def find_job(client: redis.Redis, prompt: str) -> str | None:
    """The id of the job with this prompt, while it is on a stream."""
    for key in client.scan_iter("lorafarm:stream:*", count=1000):
        for _id, fields in client.xrange(key):
            job = json.loads(fields[b"job"])
            if job["prompt"] == prompt:
                return str(job["id"])
    return None


def job_view(farm: Farm, job_id: str) -> dict:
    return httpx.get(f"{farm.router_url}/jobs/{job_id}", timeout=10).json()


#: Jobs go to the shared stream, one to each free worker: N slow jobs make N busy workers, which
#: adapter affinity (stacking same-adapter jobs on one worker) would not promise.
NO_AFFINITY = {"LORAFARM_AFFINITY": "false"}


@pytest.fixture
def spread(farm: Farm) -> Iterator[Farm]:
    with restarted_router(farm_with(farm, 1), NO_AFFINITY):
        yield farm


@pytest.mark.timeout(120)
def test_client_that_hangs_up_cancels_its_queued_job(spread: Farm, figures: Figures) -> None:
    farm = spread
    client = redis_client(farm)
    workers = len(running_workers(farm))
    prompt = f"nobody waits for me {uuid.uuid4().hex}"
    with ThreadPoolExecutor(workers + 1) as pool:
        # Long enough that no worker frees up before the hang-up (2 s) is noticed (1 s poll).
        busy = [pool.submit(post, farm, SDXL, body(steps=2 * SLOW_STEPS, seed=50 + i)) for i in range(workers)]
        wait_until(lambda: len(busy_workers(farm)) == workers, 20, what="every worker busy")
        # This client gives up after two seconds and closes its connection.
        gone = pool.submit(post, farm, SDXL, body(prompt=prompt, seed=59), timeout=2.0)
        job_id = wait_until(lambda: find_job(client, prompt), 5, what="the job on a stream")
        with pytest.raises(httpx.ReadTimeout):
            gone.result()
        hung_up = time.monotonic()
        wait_until(lambda: job_view(farm, job_id)["status"] == "cancelled", 5, what="the job cancelled")
        cancelled_s = time.monotonic() - hung_up
        assert [f.result(timeout=60).status_code for f in busy] == [200] * workers
    # The workers went on to other things and never ran the cancelled job.
    assert post(farm, SDXL).status_code == 200
    assert ran(farm, job_id) == []
    assert_clean(client)
    figures(cancelled_after_hang_up_s=round(cancelled_s, 2))


@pytest.fixture(scope="module")
def short_bound(farm: Farm) -> Iterator[Farm]:
    """The router restarted with a 3 s wait bound (the job API keeps its own, long one)."""
    with restarted_router(farm, {"LORAFARM_REQUEST_TIMEOUT_S": "3", **NO_AFFINITY}):
        yield farm


def submit_job(farm: Farm, payload: dict) -> str:
    resp = httpx.post(f"{farm.router_url}/jobs", json={"model": SDXL, **payload}, timeout=30)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


@pytest.mark.timeout(120)
def test_queued_past_the_wait_bound_504_and_never_run(short_bound: Farm) -> None:
    farm = farm_with(short_bound, 1)
    client = redis_client(farm)
    workers = len(running_workers(farm))
    # Every worker busy for several seconds with jobs of the job API (not bound by the 3 s).
    hogs = [submit_job(farm, body(steps=100, seed=60 + i)) for i in range(workers)]
    wait_until(lambda: len(busy_workers(farm)) == workers, 20, what="every worker busy")
    resp = post(farm, SDXL, body(seed=69))
    assert_error(resp, 504, "timeout")
    job_id = resp.headers["x-request-id"]
    assert job_view(farm, job_id)["status"] == "cancelled"
    # The workers finish what they had, then idle: the cancelled job is never run for nobody.
    wait_until(lambda: all(job_view(farm, h)["status"] == "done" for h in hogs), 60, interval=0.2, what="hogs done")
    wait_until(lambda: not busy_workers(farm), 10, what="workers idle")
    assert ran(farm, job_id) == []
    assert job_view(farm, job_id)["status"] == "cancelled"
    assert_clean(client)


@pytest.mark.timeout(60)
def test_running_past_the_wait_bound_504_and_the_worker_stops_it(short_bound: Farm, figures: Figures) -> None:
    farm = farm_with(short_bound, 1)
    resp = post(farm, SDXL, body(steps=150, seed=70))  # about 9 s of work for a 3 s bound
    timed_out = time.monotonic()
    assert_error(resp, 504, "timeout")
    job_id = resp.headers["x-request-id"]
    # The worker stops the job at its next step instead of finishing it for nobody.
    wait_until(lambda: not busy_workers(farm), 10, what="workers free again")
    freed_s = time.monotonic() - timed_out
    wait_until(lambda: job_view(farm, job_id)["status"] == "cancelled", 5, what="the job cancelled")
    assert ran(farm, job_id) == []
    assert post(farm, SDXL).status_code == 200  # a quick job still fits the bound
    assert_clean(redis_client(farm))
    figures(worker_free_after_504_s=round(freed_s, 2))
