"""Past the wait bound: 504 and the job is cancelled; a client that hangs up cancels its queued job."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from lorafarm.farm import Farm
from tests.reliability.conftest import restarted_router
from tests.reliability.tools import (
    SDXL,
    SLOW_STEPS,
    assert_clean,
    assert_error,
    body,
    busy_workers,
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


@pytest.mark.timeout(120)
def test_client_that_hangs_up_cancels_its_queued_job(one_worker: Farm) -> None:
    farm = one_worker
    client = redis_client(farm)
    workers = len(running_workers(farm))
    prompt = f"nobody waits for me {uuid.uuid4().hex}"
    with ThreadPoolExecutor(workers + 1) as pool:
        busy = [pool.submit(post, farm, SDXL, body(steps=SLOW_STEPS, seed=50 + i)) for i in range(workers)]
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
    print(f"cancelled_s={cancelled_s:.1f}")


@pytest.mark.timeout(150)
def test_past_the_wait_bound_504_and_the_job_never_runs(one_worker: Farm) -> None:
    farm = one_worker
    client = redis_client(farm)
    with restarted_router(farm, {"LORAFARM_REQUEST_TIMEOUT_S": "3"}):
        workers = len(running_workers(farm))
        with ThreadPoolExecutor(workers + 1) as pool:
            running = [pool.submit(post, farm, SDXL, body(steps=150, seed=60 + i)) for i in range(workers)]
            wait_until(lambda: len(busy_workers(farm)) == workers, 20, what="every worker busy")
            queued = pool.submit(post, farm, SDXL, body(seed=69))
            answers = [f.result(timeout=30) for f in [*running, queued]]
        timed_out = time.monotonic()
        for answer in answers:
            assert_error(answer, 504, "timeout")
        ids = [a.headers["x-request-id"] for a in answers]
        # The jobs in hand stop at their next step; the queued one is dropped unrun.
        wait_until(lambda: not busy_workers(farm), 10, what="workers free again")
        freed_s = time.monotonic() - timed_out
        for job_id in ids:
            assert job_view(farm, job_id)["status"] == "cancelled"
            assert ran(farm, job_id) == []
        assert post(farm, SDXL).status_code == 200
        assert_clean(client)
    print(f"workers_freed_s={freed_s:.1f}")
