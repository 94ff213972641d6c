"""What the Inference API routes answer when something says no: the Hub, a worker, the queue, Redis.

Real workers (burst mode) wherever a worker answers; a stub where the test needs a scripted
failure or a worker that claims nothing, and asserts only what the router does with it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from common import keys
from lorafarm.farm import free_port, wait_port
from tests.conftest import ROOT, stop
from tests.integration.inprocess import PROMPT, SD15, SDXL, AppClient, StubWorker, Workers, assert_error

pytestmark = pytest.mark.anyio


# --- what the Hub says no to ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo_id", "status", "error_type"),
    [
        ("tiny/sdxl-lora-gated", 403, "gated_repo"),
        ("tiny/sdxl-lora-private", 403, "private_repo"),
        ("tiny/sdxl-lora-disabled", 403, "disabled_repo"),
        ("tiny/sdxl-lora-pickle", 400, "unsafe_adapter_format"),
        ("tiny/sdxl-lora-huge", 413, "adapter_too_large"),
        ("tiny/lora-unserved-base", 400, "base_not_served"),
        ("tiny/not-a-pipeline", 400, "unsupported_model"),
        ("tiny/no-such-repo", 404, "repo_not_found"),
        ("nobody/sdxl-lora-diffusers", 404, "repo_not_found"),
    ],
)
async def test_bad_repos(app_client: AppClient, workers: Workers, repo_id: str, status: int, error_type: str) -> None:
    composed = {"inputs": "a", "parameters": {"adapters": [{"id": repo_id}]}}
    async with app_client() as client:
        r = await workers.serve(client.post(f"/models/{repo_id}", json=PROMPT))
        adapter = await workers.serve(client.post("/models/tiny/sdxl-base", json=composed))
    body = assert_error(r, status, error_type)
    assert_error(adapter, status, error_type)
    if error_type == "base_not_served":
        assert "someone/unserved-base" in body["error"] and "tiny/sdxl-base, tiny/sd15-base" in body["error"]
    assert workers[SDXL].jobs == [] and workers[SD15].jobs == []


async def test_private_repo_without_token_is_not_found(app_client: AppClient) -> None:
    async with app_client(hf_token=None) as client:
        r = await client.post("/models/tiny/sdxl-lora-private", json=PROMPT)
    assert_error(r, 404, "repo_not_found")


# --- what a worker says no to ----------------------------------------------------------------


async def test_a_corrupt_adapter_fails_its_request_and_the_worker_serves_on(
    app_client: AppClient, workers: Workers
) -> None:
    async with app_client() as client:
        bad = await workers.serve(client.post("/models/tiny/sdxl-lora-nan", json=PROMPT))
        good = await workers.serve(client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT))
    body = assert_error(bad, 400, "adapter_corrupt")
    assert "nan" in body["error"].lower()
    assert bad.headers["x-request-id"] == workers[SDXL].jobs[0].id
    assert good.status_code == 200, good.text


@pytest.mark.parametrize(
    ("error_type", "status"),
    [("adapter_corrupt", 400), ("adapter_incompatible", 400), ("job_failed", 500), ("what_is_this", 500)],
)
async def test_failed_job_maps_through_the_table(
    app_client: AppClient, redis_url: str, error_type: str, status: int
) -> None:
    with StubWorker(redis_url, SDXL, "failing", mode="fail") as worker:
        worker.failure = (error_type, "it broke")
        async with app_client() as client:
            r = await client.post("/models/tiny/sdxl-lora-nan", json=PROMPT)
    body = assert_error(r, status, error_type if status != 500 or error_type == "job_failed" else "internal_error")
    assert body["error"] == "it broke"
    assert r.headers["x-request-id"] == worker.jobs[0].id


# --- capacity, time, outages ----------------------------------------------------------------


async def test_no_worker_is_503_with_retry_after(app_client: AppClient) -> None:
    async with app_client() as client:
        r = await client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT)
    assert_error(r, 503, "no_worker")
    assert int(r.headers["retry-after"]) >= 1


async def sdxl_depth(client: httpx.AsyncClient) -> int:
    status = (await client.get("/status")).json()
    return int(next(p for p in status["pools"] if p["pool"] == SDXL)["queue_depth"])


@pytest.mark.slow  # waits out its admitted requests' 5 s bound
async def test_queue_full_is_429(app_client: AppClient, redis_url: str) -> None:
    with StubWorker(redis_url, SDXL, "idle", mode="idle"):
        async with app_client(queue_max=2, request_timeout_s=5) as client:
            waiting = [asyncio.create_task(client.post("/models/tiny/sdxl-base", json=PROMPT)) for _ in range(2)]
            deadline = time.monotonic() + 4
            while await sdxl_depth(client) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            r = await client.post("/models/tiny/sdxl-base", json=PROMPT)
            timed_out = await asyncio.gather(*waiting)
    assert_error(r, 429, "queue_full")
    assert int(r.headers["retry-after"]) >= 1
    assert [t.status_code for t in timed_out] == [504, 504]


async def test_timeout_is_504_and_the_job_is_cancelled(app_client: AppClient, redis_url: str) -> None:
    client_redis = redis.Redis.from_url(redis_url)
    with StubWorker(redis_url, SDXL, "idle", mode="idle"):
        async with app_client(request_timeout_s=0.5) as client:
            start = time.monotonic()
            r = await client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT)
            elapsed = time.monotonic() - start
    assert_error(r, 504, "timeout")
    assert 0.4 < elapsed < 3
    job_id = r.headers["x-request-id"]
    assert client_redis.exists(keys.job_cancel(job_id))
    assert client_redis.xlen(keys.pool_stream(SDXL)) == 0  # removed: never run for nobody
    client_redis.close()


async def test_redis_down_is_503(app_client: AppClient) -> None:
    async with app_client(redis_url=f"redis://127.0.0.1:{free_port()}/0") as client:
        r = await client.post("/models/tiny/sdxl-base", json=PROMPT)
        ready = await client.get("/ready")
        health = await client.get("/health")
    assert_error(r, 503, "redis_unavailable")
    assert int(r.headers["retry-after"]) >= 1
    assert_error(ready, 503, "redis_unavailable")
    assert health.status_code == 200


async def test_hub_down_is_503_but_bases_still_serve(app_client: AppClient, workers: Workers) -> None:
    async with app_client(hf_endpoint=f"http://127.0.0.1:{free_port()}") as client:
        r = await workers.serve(client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT))
        base = await workers.serve(client.post("/models/tiny/sdxl-base", json=PROMPT))
    assert_error(r, 503, "hub_unavailable")
    assert int(r.headers["retry-after"]) >= 1
    assert base.status_code == 200


@pytest.fixture
def own_devhub(zoo_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A devhub this test may stop."""
    port = free_port()
    cmd = [sys.executable, "-m", "devhub", "serve", "--root", str(zoo_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    wait_port(port, proc)
    yield f"http://127.0.0.1:{port}", proc
    stop(proc)


async def test_stale_metadata_serves_while_the_hub_is_down(
    app_client: AppClient, workers: Workers, own_devhub: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, proc = own_devhub
    async with app_client(hf_endpoint=url, metadata_ttl_s=0.01) as client:
        first = await workers.serve(client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT))
        stop(proc)
        await asyncio.sleep(0.05)
        again = await workers.serve(client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT))
        start = time.monotonic()
        unknown = await workers.serve(client.post("/models/tiny/sdxl-lora-peft", json=PROMPT))
        fast = time.monotonic() - start
    assert (first.status_code, again.status_code) == (200, 200)
    revisions = [j.adapters[0].revision for j in workers[SDXL].jobs]
    assert revisions == [revisions[0]] * 2
    assert again.headers["x-adapter-warm"] == "true"  # the same adapter at the same commit
    assert_error(unknown, 503, "hub_unavailable")
    assert fast < 1.0  # the Hub is known down: no wait for a timeout
