"""The job API (``router/api_jobs.py``) in process: a job enqueued, served by a real worker (burst mode), read back.

The sync routes and the job API share the generation path (``router.generation``): the same
planning, the same image headers, the same error rebuilt from a failed result.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from tests.integration.inprocess import SDXL, AppClient, Workers, assert_error

pytestmark = pytest.mark.anyio

LORA = "tiny/sdxl-lora-diffusers"


def job_body(model: str = LORA, **parameters: Any) -> dict[str, Any]:
    return {"model": model, "inputs": "a cat", "parameters": {"num_inference_steps": 2, "seed": 4, **parameters}}


async def test_a_job_is_served_and_its_result_carries_what_the_worker_did(
    app_client: AppClient, workers: Workers
) -> None:
    async with app_client() as client:
        created = await client.post("/jobs", json=job_body(), headers={"accept": "image/png"})
        queued = (await client.get(created.headers["location"])).json()
        early = await client.get(f"/jobs/{created.json()['id']}/result")
        await workers.drain()
        view = (await client.get(created.headers["location"])).json()
        result = await client.get(f"/jobs/{created.json()['id']}/result")
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert (created.json()["model"], created.json()["seed"]) == (LORA, 4)
    assert (queued["status"], queued["position"]) == ("queued", 0)
    assert_error(early, 409, "job_not_ready")
    [job] = workers[SDXL].jobs
    assert (job.id, job.format, job.seed) == (job_id, "png", 4)
    assert view["status"] == "done" and view["worker_id"] == workers[SDXL].worker_id
    assert view["adapter_warm"] is False and view["compute_time"] > 0
    assert result.status_code == 200, result.text
    assert result.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(result.content)).format == "PNG"
    assert result.headers["x-request-id"] == job_id
    assert result.headers["x-worker-id"] == workers[SDXL].worker_id
    assert result.headers["x-adapter-warm"] == "false"
    assert float(result.headers["x-swap-time"]) > 0 and float(result.headers["x-compute-time"]) > 0
    assert "x-seed" not in result.headers  # the result does not know it; POST /jobs answered it


async def test_the_job_api_and_the_sync_route_give_the_same_image(app_client: AppClient, workers: Workers) -> None:
    async with app_client() as client:
        created = await client.post("/jobs", json=job_body(), headers={"accept": "image/png"})
        await workers.drain()
        result = await client.get(f"/jobs/{created.json()['id']}/result")
        sync_body = {"inputs": "a cat", "parameters": {"num_inference_steps": 2, "seed": 4}}
        sync = await workers.serve(client.post(f"/models/{LORA}", json=sync_body, headers={"accept": "image/png"}))
    assert (result.status_code, sync.status_code) == (200, 200)
    assert sync.content == result.content
    assert (result.headers["x-adapter-warm"], sync.headers["x-adapter-warm"]) == ("false", "true")


async def test_a_failed_job_answers_its_own_error(app_client: AppClient, workers: Workers) -> None:
    async with app_client() as client:
        created = await client.post("/jobs", json=job_body("tiny/sdxl-lora-nan"))
        await workers.drain()
        view = (await client.get(created.headers["location"])).json()
        result = await client.get(f"/jobs/{created.json()['id']}/result")
    assert (view["status"], view["error_type"]) == ("failed", "adapter_corrupt")
    assert_error(result, 400, "adapter_corrupt")
    assert result.headers["x-request-id"] == created.json()["id"]


async def test_an_idempotency_key_replays_the_job_it_made(app_client: AppClient, workers: Workers) -> None:
    key = {"idempotency-key": "order-17"}
    async with app_client() as client:
        first = await client.post("/jobs", json=job_body(), headers=key)
        again = await client.post("/jobs", json=job_body(), headers=key)
        await workers.drain()
        done = await client.post("/jobs", json=job_body(), headers=key)
    assert (first.status_code, again.status_code, done.status_code) == (202, 202, 202)
    assert again.json()["id"] == first.json()["id"] == done.json()["id"]
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    assert done.json()["status"] == "done"
    assert len(workers[SDXL].jobs) == 1


async def test_unknown_jobs_are_404(app_client: AppClient) -> None:
    async with app_client() as client:
        view = await client.get("/jobs/nope")
        result = await client.get("/jobs/nope/result")
        cancel = await client.delete("/jobs/nope")
    for answer in (view, result, cancel):
        assert_error(answer, 404, "job_not_found")
