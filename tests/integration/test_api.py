"""The Inference API routes (``router/api.py``) in process, answered by real workers of the tiny zoo.

Each request goes over ASGI to the router, through the real redis-server, to a real
``worker.loop.Worker`` drained in burst mode; the jobs a worker was handed show what the router
enqueued, the answer's headers what the worker did.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.integration.inprocess import PROMPT, SD15, SDXL, AppClient, Workers, assert_error, sha_of

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("repo_id", "pool", "embeddings"),
    [
        ("tiny/sdxl-lora-diffusers", SDXL, None),
        ("tiny/sdxl-lora-peft", SDXL, None),
        ("tiny/sdxl-lora-kohya", SDXL, None),
        ("tiny/sdxl-lora-listbase", SDXL, None),
        ("tiny/sdxl-lora-pivotal", SDXL, "embeddings.safetensors"),
        ("tiny/sd15-lora", SD15, None),
    ],
)
async def test_lora_goes_to_its_base_pool_pinned_to_its_sha(
    app_client: AppClient, workers: Workers, devhub_url: str, repo_id: str, pool: str, embeddings: str | None
) -> None:
    async with app_client() as client:
        r = await workers.serve(client.post(f"/models/{repo_id}", json=PROMPT))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).format == "JPEG"
    [job] = workers[pool].jobs
    assert [w.jobs for p, w in workers.items() if p != pool] == [[]]
    assert job.id == r.headers["x-request-id"]
    assert (job.pool, job.prompt, job.seed, job.num_inference_steps) == (pool, "a photo of a cat", 3, 2)
    [adapter] = job.adapters
    assert adapter.repo_id == repo_id
    assert adapter.revision == sha_of(devhub_url, repo_id)
    assert adapter.weight_name == "pytorch_lora_weights.safetensors"
    assert adapter.embeddings_name == embeddings
    assert adapter.scale == 1.0
    assert r.headers["x-worker-id"] == workers[pool].worker_id
    assert r.headers["x-seed"] == "3"
    # The worker started on the plain base: it had to fuse the adapter, and says how long it took.
    assert r.headers["x-adapter-warm"] == "false"
    assert float(r.headers["x-swap-time"]) > 0
    assert float(r.headers["x-compute-time"]) > 0


async def test_second_request_is_warm_and_seed_is_random_when_absent(app_client: AppClient, workers: Workers) -> None:
    async with app_client() as client:
        body = {"inputs": "a cat", "parameters": {"lora_scale": 0.5}}
        first = await workers.serve(client.post("/models/tiny/sdxl-lora-a", json=body))
        second = await workers.serve(client.post("/models/tiny/sdxl-lora-a", json=body))
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["x-adapter-warm"], second.headers["x-adapter-warm"]) == ("false", "true")
    assert float(first.headers["x-swap-time"]) > 0
    assert float(second.headers["x-swap-time"]) == 0
    seeds = [job.seed for job in workers[SDXL].jobs]
    assert [str(s) for s in seeds] == [first.headers["x-seed"], second.headers["x-seed"]]
    assert [job.adapters[0].scale for job in workers[SDXL].jobs] == [0.5, 0.5]


async def test_served_base_runs_plain(app_client: AppClient, workers: Workers) -> None:
    async with app_client() as client:
        r = await workers.serve(client.post("/models/tiny/sd15-base", json=PROMPT))
    assert r.status_code == 200, r.text
    [job] = workers[SD15].jobs
    assert (job.pool, job.adapters) == (SD15, [])
    assert r.headers["x-adapter-warm"] == "true"  # the plain base is what a worker starts with


async def test_composed_adapters(app_client: AppClient, workers: Workers) -> None:
    body = {
        "inputs": "a cat",
        "parameters": {
            "adapters": [{"id": "tiny/sdxl-lora-a", "scale": 0.7}, {"id": "tiny/sdxl-lora-b", "scale": 0.3}]
        },
    }
    mixed_body = {"inputs": "a cat", "parameters": {"adapters": [{"id": "tiny/sd15-lora"}]}}
    async with app_client() as client:
        r = await workers.serve(client.post("/models/tiny/sdxl-base", json=body))
        mixed = await workers.serve(client.post("/models/tiny/sdxl-lora-c", json=mixed_body))
    assert r.status_code == 200, r.text
    [job] = workers[SDXL].jobs
    assert [(a.repo_id, a.scale) for a in job.adapters] == [("tiny/sdxl-lora-a", 0.7), ("tiny/sdxl-lora-b", 0.3)]
    assert_error(mixed, 400, "adapter_incompatible")


# --- the `POST /` shape, formats, bodies ---------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_post_root_with_lora_header(app_client: AppClient, workers: Workers, content_type: str | None) -> None:
    headers = {"lora": "tiny/sdxl-lora-kohya"}
    if content_type:
        headers["content-type"] = content_type
    raw = b'{"inputs": "a cat", "parameters": {"seed": 9}}'
    async with app_client() as client:
        r = await workers.serve(client.post("/", content=raw, headers=headers))
        plain = await workers.serve(client.post("/", content=raw, headers={"content-type": "text/plain"}))
    assert r.status_code == 200, r.text
    lora_job, plain_job = workers[SDXL].jobs
    assert [a.repo_id for a in lora_job.adapters] == ["tiny/sdxl-lora-kohya"]
    assert (plain.status_code, plain_job.pool, plain_job.adapters) == (200, SDXL, [])


async def test_post_root_default_base_setting(app_client: AppClient, workers: Workers) -> None:
    async with app_client(default_base=SD15) as client:
        r = await workers.serve(client.post("/", json=PROMPT))
        lora = await workers.serve(client.post("/", json=PROMPT, headers={"lora": "tiny/sdxl-lora-a"}))
        bad = await workers.serve(client.post("/", json=PROMPT, headers={"lora": "../etc/passwd"}))
    assert (r.status_code, lora.status_code) == (200, 200)
    assert workers[SD15].jobs[0].adapters == []
    assert workers[SDXL].jobs[0].adapters[0].repo_id == "tiny/sdxl-lora-a"  # a LoRA goes to its own base
    assert_error(bad, 422, "invalid_request")


@pytest.mark.parametrize(
    ("accept", "media", "pil"),
    [
        (None, "image/jpeg", "JPEG"),
        ("*/*", "image/jpeg", "JPEG"),
        ("image/png", "image/png", "PNG"),
        ("image/webp", "image/webp", "WEBP"),
        ("image/jpeg", "image/jpeg", "JPEG"),
        ("text/html, image/png;q=0.9", "image/png", "PNG"),
    ],
)
async def test_accept_formats(
    app_client: AppClient, workers: Workers, accept: str | None, media: str, pil: str
) -> None:
    headers = {"accept": accept} if accept else {}
    async with app_client() as client:
        r = await workers.serve(client.post("/models/tiny/sdxl-base", json=PROMPT, headers=headers))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media
    assert Image.open(io.BytesIO(r.content)).format == pil


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/models/tiny/sdxl-base", b"not json"),
        ("/models/tiny/sdxl-base", b"\xff\xfe\x00"),
        ("/models/tiny/sdxl-base", b""),
        ("/models/tiny/sdxl-base", b'{"inputs": 5}'),
        ("/models/tiny/sdxl-base", b'{"inputs": "a", "parameters": {"num_inference_steps": 10000}}'),
        ("/models/tiny/sdxl-base", b'{"inputs": "a", "parameters": {"width": 65}}'),
        ("/models/tiny/sdxl-base", b'{"inputs": "a", "parameters": {"guidance_scale": "high"}}'),
        ("/models/tiny/sdxl-base", b'{"inputs": "a", "nope": 1}'),
        ("/models/tiny/sdxl-base", b'{"inputs": "' + b"x" * 5000 + b'"}'),
        ("/models/tiny/sdxl-base", b'{"inputs": "' + b"x" * 100_000 + b'"}'),
        ("/models/tiny/sdxl-base", b'{"inputs": "a", "parameters": {"adapters": [{"id": "../x"}]}}'),
        ("/models/tiny/sdxl-base", b'{"inputs": "\\udc80"}'),
        ("/models/tiny", b'{"inputs": "a"}'),
        ("/models/a/b/c", b'{"inputs": "a"}'),
        ("/models/tiny/..%2F..%2Fetc", b'{"inputs": "a"}'),
        ("/models/tiny/a--b", b'{"inputs": "a"}'),
        ("/models/tiny/" + "x" * 97, b'{"inputs": "a"}'),
        ("/models/tiny%2Fsdxl-base%20", b'{"inputs": "a"}'),
    ],
)
async def test_invalid_requests_are_422(app_client: AppClient, workers: Workers, path: str, raw: bytes) -> None:
    async with app_client() as client:
        r = await workers.serve(client.post(path, content=raw, headers={"content-type": "application/json"}))
    body = assert_error(r, 422, "invalid_request")
    assert len(body["error"]) < 1000  # nothing echoed at length
    assert workers[SDXL].jobs == []


async def test_url_encoded_slash_in_repo_id(app_client: AppClient, workers: Workers) -> None:
    async with app_client() as client:
        r = await workers.serve(client.post("/models/tiny%2Fsdxl-lora-diffusers", json=PROMPT))
    assert r.status_code == 200, r.text
    assert [a.repo_id for a in workers[SDXL].jobs[0].adapters] == ["tiny/sdxl-lora-diffusers"]
