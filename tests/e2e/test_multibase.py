"""A multi-base worker process end to end: ``make run``'s plan (SDXL's own worker, one worker for
SD 1.5 and FLUX.1), requests alternating between its pools, and its death mid-job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.connections import async_client
from common.schemas import Job
from lorafarm.cli import DEFAULT_POOLS, worker_plan
from lorafarm.farm import Farm, FarmConfig
from router.queue import JobQueue
from tests.polling import busy_workers, live_workers, status, wait_until

pytestmark = pytest.mark.slow

SDXL, SD15, FLUX = DEFAULT_POOLS
BODY = {"inputs": "an elephant", "parameters": {"num_inference_steps": 2, "seed": 7}}


@pytest.fixture(scope="module")
def farm(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(
        FarmConfig(
            state_dir=tmp_path_factory.mktemp("farm-multibase"),
            zoo_dir=zoo_dir,
            pools=list(DEFAULT_POOLS),
            workers=worker_plan(list(DEFAULT_POOLS), 1),
            env={"LORAFARM_DEFAULT_STEPS": "2", "LORAFARM_HEARTBEAT_S": "0.3", "LORAFARM_WORKER_TTL_S": "3"},
            worker_env={"LORAFARM_LEASE_S": "2", "LORAFARM_BLOCK_MS": "200"},
        )
    )
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()


def post(farm: Farm, repo: str) -> httpx.Response:
    return httpx.post(f"{farm.router_url}/models/{repo}", json=BODY, timeout=120)


def test_make_run_gives_the_long_tail_one_multi_base_worker(farm: Farm) -> None:
    assert farm.worker_specs == [[SDXL], [SD15, FLUX]]
    pools = {p["pool"]: p for p in status(farm)["pools"]}
    # worker-2 is in both small pools' /status, with its bases' tiers; the families are right.
    assert [w["worker_id"] for w in pools[SD15]["workers"]] == ["worker-2"]
    assert [w["worker_id"] for w in pools[FLUX]["workers"]] == ["worker-2"]
    assert (pools[SD15]["family"], pools[FLUX]["family"]) == ("sd15", "flux")
    tiers = {pool: pools[pool]["workers"][0]["base_tier"] for pool in (SD15, FLUX)}
    assert sorted(tiers.values()) == ["active", "warm"]


def test_requests_alternating_between_its_pools_all_succeed_with_the_same_bytes(farm: Farm) -> None:
    repos = ["tiny/sd15-lora", "tiny/flux-lora-a", "tiny/sd15-base", "tiny/flux-lora-kohya"] * 2
    answers = [post(farm, repo) for repo in repos]
    assert [r.status_code for r in answers] == [200] * len(repos), [r.text for r in answers]
    assert {r.headers["x-worker-id"] for r in answers} == {"worker-2"}
    assert [r.headers["x-base-switch"] for r in answers][1:] == ["warm"] * (len(repos) - 1)
    assert [r.content for r in answers[:4]] == [r.content for r in answers[4:]]
    # The SDXL pool is its own worker's: no switch there.
    sdxl = post(farm, "tiny/sdxl-lora-a")
    assert sdxl.headers["x-worker-id"] == "worker-1" and sdxl.headers["x-base-switch"] == "none"
    metrics = httpx.get(f"{farm.router_url}/metrics", timeout=10).text
    assert 'lorafarm_workers{pool="tiny/flux-base"' in metrics


def submit_on(farm: Farm, worker_id: str, jobs: list[Job]) -> None:
    """Place jobs on a worker's own streams as the router does after choosing it."""

    async def go() -> None:
        client = async_client(farm.redis_url)
        try:
            queue = JobQueue(client, worker_ttl_s=3, queue_max=100)
            for job in jobs:
                await queue.submit(job, worker_id=worker_id)
        finally:
            await client.aclose()

    asyncio.run(go())


def job_view(farm: Farm, job_id: str) -> dict[str, Any] | None:
    view = httpx.get(f"{farm.router_url}/jobs/{job_id}", timeout=10).json()
    return view if view.get("status") in ("done", "failed", "cancelled") else None


def ran(farm: Farm, job_id: str) -> list[str]:
    return [n for n in farm.procs if n.startswith("worker-") and f"event=job_done job={job_id}" in log(farm, n)]


def log(farm: Farm, name: str) -> str:
    return (farm.logs / f"{name}.log").read_text(errors="replace")


@pytest.mark.timeout(240)
def test_killed_mid_job_its_jobs_of_every_pool_are_adopted(farm: Farm) -> None:
    spare = farm.start_worker([SD15, FLUX])
    wait_until(
        lambda: {w["worker_id"] for w in live_workers(farm) if w["status"] == "ready"} >= {"worker-2", spare},
        120,
        what="the second multi-base worker ready",
    )
    slow = Job(pool=SD15, prompt="slow", seed=1, num_inference_steps=80)
    other = Job(pool=FLUX, prompt="queued behind it", seed=2, num_inference_steps=2)
    submit_on(farm, "worker-2", [slow])
    wait_until(lambda: busy_workers(farm).get("worker-2") == slow.id, 30, what="worker-2 busy with the slow job")
    submit_on(farm, "worker-2", [other])  # waits on worker-2's own stream of the FLUX.1 pool
    farm.kill("worker-2")  # SIGKILL: no chance to hand anything back
    killed = time.monotonic()
    views = [wait_until(lambda j=j: job_view(farm, j.id), 120, interval=0.3, what=j.id) for j in (slow, other)]
    assert [v["status"] for v in views] == ["done", "done"], views
    # Adopted by the live worker of each pool, and generated once.
    assert [ran(farm, j.id) for j in (slow, other)] == [[spare], [spare]]
    print(f"adopted_and_done_s={time.monotonic() - killed:.1f}")
