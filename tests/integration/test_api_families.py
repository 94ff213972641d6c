"""The router's checks per pipeline family (``router/jobs.py`` ``check_family``) against real workers.

Each pool learns its family from its worker's heartbeat (the pipeline class it loaded); a request
a family does not take is refused with 422 and the reason before any worker sees it.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.integration.inprocess import FLUX, FLUX_POOLS, PROMPT, SD15, SDXL, AppClient, Workers, assert_error

pytestmark = pytest.mark.anyio


async def test_status_names_each_pools_family_from_its_workers(app_client: AppClient, flux_workers: Workers) -> None:
    async with app_client(pools=FLUX_POOLS) as client:
        status = (await client.get("/status")).json()
    pools = {p["pool"]: p for p in status["pools"]}
    assert {pool: p["family"] for pool, p in pools.items()} == {SDXL: "sdxl", SD15: "sd15", FLUX: "flux"}
    assert [w["pipeline"] for w in pools[FLUX]["workers"]] == ["FluxPipeline"]


async def test_a_flux_pool_refuses_what_its_family_does_not_take(app_client: AppClient, flux_workers: Workers) -> None:
    negative = {**PROMPT, "parameters": {**PROMPT["parameters"], "negative_prompt": "blurry"}}
    odd = {**PROMPT, "parameters": {**PROMPT["parameters"], "width": 72}}
    both = {**PROMPT, "parameters": {**negative["parameters"], "width": 72}}
    async with app_client(pools=FLUX_POOLS) as client:
        no_negative = await client.post("/models/tiny/flux-lora-diffusers", json=negative)
        no_odd = await client.post("/models/tiny/flux-lora-diffusers", json=odd)
        job = await client.post("/jobs", json={"model": "tiny/flux-base", **negative})
        sdxl = await flux_workers.serve(client.post("/models/tiny/sdxl-lora-diffusers", json=both))
    assert "distilled" in assert_error(no_negative, 422, "invalid_request")["error"]
    assert "multiple of 16" in assert_error(no_odd, 422, "invalid_request")["error"]
    assert_error(job, 422, "invalid_request")
    assert flux_workers[FLUX].jobs == []  # refused by the router, not failed by the worker
    assert sdxl.status_code == 200, sdxl.text  # SDXL takes a negative prompt and sizes of 8
    assert flux_workers[SDXL].jobs[0].negative_prompt == "blurry"


async def test_a_flux_lora_is_served_by_the_flux_worker(app_client: AppClient, flux_workers: Workers) -> None:
    async with app_client(pools=FLUX_POOLS) as client:
        lora = await flux_workers.serve(client.post("/models/tiny/flux-lora-diffusers", json=PROMPT))
        base = await flux_workers.serve(client.post("/models/tiny/flux-base", json=PROMPT))
    assert (lora.status_code, base.status_code) == (200, 200), lora.text
    assert lora.headers["x-worker-id"] == flux_workers[FLUX].worker_id
    assert Image.open(io.BytesIO(lora.content)).size == (64, 64)
    assert lora.content != base.content
    assert [j.adapters[0].repo_id for j in flux_workers[FLUX].jobs if j.adapters] == ["tiny/flux-lora-diffusers"]


async def test_a_models_pool_and_what_its_family_takes(app_client: AppClient, flux_workers: Workers) -> None:
    """``GET /models/{repo_id}``: what the widget reads to leave out the fields a family refuses."""
    async with app_client(pools=FLUX_POOLS) as client:
        flux = (await client.get("/models/tiny/flux-lora-diffusers")).json()
        sdxl = (await client.get("/models/tiny/sdxl-base")).json()
        missing = await client.get("/models/tiny/no-such-lora")
    assert (flux["pool"], flux["adapter"], flux["family"], flux["size_multiple"]) == (FLUX, True, "flux", 16)
    assert flux["negative_prompt"] is False and "guidance-distilled" in flux["negative_prompt_refused"]
    assert (sdxl["pool"], sdxl["adapter"], sdxl["family"], sdxl["negative_prompt"]) == (SDXL, False, "sdxl", True)
    assert_error(missing, 404, "repo_not_found")
    assert flux_workers[FLUX].jobs == []  # nothing was queued


async def test_a_pool_without_a_live_worker_has_no_family_yet(app_client: AppClient) -> None:
    async with app_client() as client:
        info = (await client.get("/models/tiny/sdxl-lora-diffusers")).json()
    assert (info["pool"], info["family"], info["negative_prompt"]) == (SDXL, None, True)
