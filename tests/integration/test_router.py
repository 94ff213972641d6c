"""The router in process (ASGI) against a real redis-server and a real devhub serving the tiny zoo.

A stand-in worker thread claims jobs with the real ``WorkerQueue`` and answers a small image
(the real worker is exercised by the e2e tests); it records the jobs it saw.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from common import keys
from common.queue import WorkerQueue, sync_client
from common.schemas import Job, JobResult, WorkerState
from lorafarm.farm import free_port, wait_port
from router.app import create_app
from router.jobs import MEDIA_TYPES
from router.settings import RouterSettings
from tests.conftest import ROOT, stop

pytestmark = pytest.mark.anyio

SDXL, SD15 = "tiny/sdxl-base", "tiny/sd15-base"
PROMPT = {"inputs": "a photo of a cat", "parameters": {"seed": 3, "num_inference_steps": 2}}


class StubWorker:
    """Claims jobs of one pool and answers a tiny image in the asked format (or a scripted failure)."""

    def __init__(self, redis_url: str, pool: str, worker_id: str, mode: str = "image") -> None:
        self.client = sync_client(redis_url)
        self.queue = WorkerQueue(self.client, pool, worker_id)
        self.pool, self.worker_id, self.mode = pool, worker_id, mode
        self.failure = ("adapter_corrupt", "the adapter holds NaN values")
        self.jobs: list[Job] = []
        self.fused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stub-{worker_id}", daemon=True)
        self.queue.ensure_group()
        self._beat()

    def _beat(self) -> None:
        state = WorkerState(worker_id=self.worker_id, pool=self.pool, fused=self.fused, inference_s=0.5)
        self.queue.heartbeat(state, ttl_s=3)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last > 0.3:
                self._beat()
                last = time.monotonic()
            if self.mode == "idle":  # alive, claims nothing
                self._stop.wait(0.05)
                continue
            for delivery in self.queue.claim(block_ms=50):
                self._answer(delivery.job)
                self.queue.ack(delivery.entry_id, delivery.stream)

    def _answer(self, job: Job) -> None:
        self.jobs.append(job)
        if self.mode == "slow":
            time.sleep(1.0)
        if self.mode == "fail":
            error_type, message = self.failure
            result = JobResult(job_id=job.id, status="failed", error=message, error_type=error_type)
            self.queue.publish_result(result, None)
            return
        warm = self.fused == [a.key for a in job.adapters]
        self.fused = [a.key for a in job.adapters]
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format=job.format.upper())
        result = JobResult(
            job_id=job.id,
            status="done",
            content_type=MEDIA_TYPES[job.format],
            worker_id=self.worker_id,
            warm=warm,
            compute_s=0.25,
        )
        self.queue.publish_result(result, buf.getvalue())

    def __enter__(self) -> StubWorker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.queue.deregister()
        self.client.close()


@pytest.fixture
def workers(redis_url: str) -> Iterator[dict[str, StubWorker]]:
    with StubWorker(redis_url, SDXL, "stub-sdxl") as a, StubWorker(redis_url, SD15, "stub-sd15") as b:
        yield {SDXL: a, SD15: b}


AppClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def app_client(redis_url: str, devhub_url: str) -> AppClient:
    """``async with app_client(**settings) as client``: the app with its lifespan, over ASGI."""

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        fields: dict[str, Any] = {
            "redis_url": redis_url,
            "hf_endpoint": devhub_url,
            "hf_token": "test-token",  # the devhub grants any token: private repos show as private
            "pools": [SDXL, SD15],
            "request_timeout_s": 5.0,
            "max_adapter_bytes": 2 * 2**20,
            "metadata_ttl_s": 60.0,
            "hub_timeout_s": 3.0,
        }
        fields.update(overrides)
        app = create_app(RouterSettings(**fields))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://router", timeout=30) as client:
                yield client

    return make


def sha_of(devhub_url: str, repo_id: str) -> str:
    return str(httpx.get(f"{devhub_url}/api/models/{repo_id}", headers={"authorization": "Bearer t"}).json()["sha"])


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == error_type
    assert "127.0.0.1" not in body["error"] and "Traceback" not in body["error"]
    return dict(body)


# --- routing ------------------------------------------------------------------------------


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
    app_client: AppClient,
    workers: dict[str, StubWorker],
    devhub_url: str,
    repo_id: str,
    pool: str,
    embeddings: str | None,
) -> None:
    async with app_client() as client:
        r = await client.post(f"/models/{repo_id}", json=PROMPT)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).format == "JPEG"
    [job] = workers[pool].jobs
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
    assert float(r.headers["x-compute-time"]) == 0.25
    assert r.headers["x-adapter-warm"] == "false"


async def test_second_request_is_warm_and_seed_is_random_when_absent(
    app_client: AppClient, workers: dict[str, StubWorker]
) -> None:
    async with app_client() as client:
        body = {"inputs": "a cat", "parameters": {"lora_scale": 0.5}}
        first = await client.post("/models/tiny/sdxl-lora-a", json=body)
        second = await client.post("/models/tiny/sdxl-lora-a", json=body)
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["x-adapter-warm"], second.headers["x-adapter-warm"]) == ("false", "true")
    seeds = [job.seed for job in workers[SDXL].jobs]
    assert [str(s) for s in seeds] == [first.headers["x-seed"], second.headers["x-seed"]]
    assert [job.adapters[0].scale for job in workers[SDXL].jobs] == [0.5, 0.5]


async def test_served_base_runs_plain(app_client: AppClient, workers: dict[str, StubWorker]) -> None:
    async with app_client() as client:
        r = await client.post("/models/tiny/sd15-base", json=PROMPT)
    assert r.status_code == 200, r.text
    [job] = workers[SD15].jobs
    assert (job.pool, job.adapters) == (SD15, [])


async def test_composed_adapters(app_client: AppClient, workers: dict[str, StubWorker]) -> None:
    body = {
        "inputs": "a cat",
        "parameters": {
            "adapters": [{"id": "tiny/sdxl-lora-a", "scale": 0.7}, {"id": "tiny/sdxl-lora-b", "scale": 0.3}]
        },
    }
    async with app_client() as client:
        r = await client.post("/models/tiny/sdxl-base", json=body)
        mixed = await client.post(
            "/models/tiny/sdxl-lora-c",
            json={"inputs": "a cat", "parameters": {"adapters": [{"id": "tiny/sd15-lora"}]}},
        )
    assert r.status_code == 200, r.text
    [job] = workers[SDXL].jobs
    assert [(a.repo_id, a.scale) for a in job.adapters] == [
        ("tiny/sdxl-lora-a", 0.7),
        ("tiny/sdxl-lora-b", 0.3),
    ]
    assert_error(mixed, 400, "adapter_incompatible")


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
async def test_bad_repos(
    app_client: AppClient, workers: dict[str, StubWorker], repo_id: str, status: int, error_type: str
) -> None:
    async with app_client() as client:
        r = await client.post(f"/models/{repo_id}", json=PROMPT)
        adapter = await client.post(
            "/models/tiny/sdxl-base", json={"inputs": "a", "parameters": {"adapters": [{"id": repo_id}]}}
        )
    body = assert_error(r, status, error_type)
    assert_error(adapter, status, error_type)
    if error_type == "base_not_served":
        assert "someone/unserved-base" in body["error"] and "tiny/sdxl-base, tiny/sd15-base" in body["error"]
    assert workers[SDXL].jobs == [] and workers[SD15].jobs == []


async def test_private_repo_without_token_is_not_found(app_client: AppClient, workers: dict[str, StubWorker]) -> None:
    async with app_client(hf_token=None) as client:
        r = await client.post("/models/tiny/sdxl-lora-private", json=PROMPT)
    assert_error(r, 404, "repo_not_found")


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


async def test_no_worker_is_503_with_retry_after(app_client: AppClient, redis_url: str) -> None:
    async with app_client() as client:
        r = await client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT)
    assert_error(r, 503, "no_worker")
    assert int(r.headers["retry-after"]) >= 1


async def sdxl_depth(client: httpx.AsyncClient) -> int:
    status = (await client.get("/status")).json()
    return int(next(p for p in status["pools"] if p["pool"] == SDXL)["queue_depth"])


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


async def test_redis_down_is_503(app_client: AppClient, workers: dict[str, StubWorker]) -> None:
    async with app_client(redis_url=f"redis://127.0.0.1:{free_port()}/0") as client:
        r = await client.post("/models/tiny/sdxl-base", json=PROMPT)
        ready = await client.get("/ready")
        health = await client.get("/health")
    assert_error(r, 503, "redis_unavailable")
    assert int(r.headers["retry-after"]) >= 1
    assert_error(ready, 503, "redis_unavailable")
    assert health.status_code == 200


async def test_hub_down_is_503_but_bases_still_serve(app_client: AppClient, workers: dict[str, StubWorker]) -> None:
    async with app_client(hf_endpoint=f"http://127.0.0.1:{free_port()}") as client:
        r = await client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT)
        base = await client.post("/models/tiny/sdxl-base", json=PROMPT)
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
    app_client: AppClient, workers: dict[str, StubWorker], own_devhub: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, proc = own_devhub
    async with app_client(hf_endpoint=url, metadata_ttl_s=0.01) as client:
        first = await client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT)
        stop(proc)
        await asyncio.sleep(0.05)
        again = await client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT)
        start = time.monotonic()
        unknown = await client.post("/models/tiny/sdxl-lora-peft", json=PROMPT)
        fast = time.monotonic() - start
    assert (first.status_code, again.status_code) == (200, 200)
    assert [j.adapters[0].revision for j in workers[SDXL].jobs] == [workers[SDXL].jobs[0].adapters[0].revision] * 2
    assert_error(unknown, 503, "hub_unavailable")
    assert fast < 1.0  # the Hub is known down: no wait for a timeout


# --- the `POST /` shape, formats, bodies ---------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_post_root_with_lora_header(
    app_client: AppClient, workers: dict[str, StubWorker], content_type: str | None
) -> None:
    headers = {"lora": "tiny/sdxl-lora-kohya"}
    if content_type:
        headers["content-type"] = content_type
    raw = b'{"inputs": "a cat", "parameters": {"seed": 9}}'
    async with app_client() as client:
        r = await client.post("/", content=raw, headers=headers)
        plain = await client.post("/", content=raw, headers={"content-type": "text/plain"})
    assert r.status_code == 200, r.text
    lora_job, plain_job = workers[SDXL].jobs
    assert [a.repo_id for a in lora_job.adapters] == ["tiny/sdxl-lora-kohya"]
    assert (plain.status_code, plain_job.pool, plain_job.adapters) == (200, SDXL, [])


async def test_post_root_default_base_setting(app_client: AppClient, workers: dict[str, StubWorker]) -> None:
    async with app_client(default_base=SD15) as client:
        r = await client.post("/", json=PROMPT)
        lora = await client.post("/", json=PROMPT, headers={"lora": "tiny/sdxl-lora-a"})
        bad = await client.post("/", json=PROMPT, headers={"lora": "../etc/passwd"})
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
    app_client: AppClient, workers: dict[str, StubWorker], accept: str | None, media: str, pil: str
) -> None:
    headers = {"accept": accept} if accept else {}
    async with app_client() as client:
        r = await client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT, headers=headers)
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
async def test_invalid_requests_are_422(
    app_client: AppClient, workers: dict[str, StubWorker], path: str, raw: bytes
) -> None:
    async with app_client() as client:
        r = await client.post(path, content=raw, headers={"content-type": "application/json"})
    body = assert_error(r, 422, "invalid_request")
    assert len(body["error"]) < 1000  # nothing echoed at length
    assert workers[SDXL].jobs == []


async def test_url_encoded_slash_in_repo_id(app_client: AppClient, workers: dict[str, StubWorker]) -> None:
    async with app_client() as client:
        r = await client.post("/models/tiny%2Fsdxl-lora-diffusers", json=PROMPT)
    assert r.status_code == 200, r.text


# --- health, status, auth, schema -----------------------------------------------------------


async def test_health_ready_status(app_client: AppClient, workers: dict[str, StubWorker], redis_url: str) -> None:
    async with app_client() as client:
        health = await client.get("/health")
        ready = await client.get("/ready")
        await client.post("/models/tiny/sdxl-lora-diffusers", json=PROMPT)
        status = await client.get("/status")
    assert health.json() == {"status": "ok"}
    assert ready.json() == {"status": "ready"}
    body = status.json()
    assert body["default_base"] == SDXL
    pools = {p["pool"]: p for p in body["pools"]}
    assert set(pools) == {SDXL, SD15}
    assert pools[SDXL]["queue_depth"] == 0
    [worker] = pools[SDXL]["workers"]
    assert worker["worker_id"] == "stub-sdxl"
    # The stub's next heartbeat carries the adapter it fused.
    deadline = time.monotonic() + 10
    async with app_client() as client:
        while True:
            later = (await client.get("/status")).json()
            fused = next(p for p in later["pools"] if p["pool"] == SDXL)["workers"][0]["fused"]
            if fused or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert fused and fused[0].startswith("tiny/sdxl-lora-diffusers@")


async def test_api_key(app_client: AppClient, workers: dict[str, StubWorker]) -> None:
    async with app_client(api_key="sekrit") as client:
        missing = await client.post("/models/tiny/sdxl-base", json=PROMPT)
        wrong = await client.post("/models/tiny/sdxl-base", json=PROMPT, headers={"authorization": "Bearer nope"})
        good = await client.post("/models/tiny/sdxl-base", json=PROMPT, headers={"authorization": "Bearer sekrit"})
        status = await client.get("/status")
        health = await client.get("/health")
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(wrong, 401, "unauthorized")
    assert_error(status, 401, "unauthorized")
    assert (good.status_code, health.status_code) == (200, 200)


async def test_unknown_route_and_method(app_client: AppClient) -> None:
    async with app_client() as client:
        missing = await client.get("/nope")
        method = await client.get("/models/tiny/sdxl-base")
    assert_error(missing, 404, "not_found")
    assert_error(method, 405, "method_not_allowed")


async def test_openapi_declares_bodies_and_errors(app_client: AppClient) -> None:
    async with app_client() as client:
        schema = (await client.get("/openapi.json")).json()
    components = schema["components"]["schemas"]
    assert {"InferenceRequest", "Parameters", "AdapterSpec", "ErrorBody"} <= set(components)
    for path in ("/models/{repo_id}", "/"):
        op = schema["paths"][path]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/InferenceRequest"
        codes = set(op["responses"])
        assert {"200", "400", "401", "403", "404", "413", "422", "429", "500", "503", "504"} <= codes
        assert "Retry-After" in op["responses"]["503"]["headers"]
        assert set(op["responses"]["200"]["content"]) >= {"image/png", "image/jpeg", "image/webp"}
    text = str(schema)
    assert "#/$defs/" not in text  # every reference resolves inside the document


async def test_client_disconnect_cancels_the_job(redis_url: str, devhub_url: str) -> None:
    """Under a real uvicorn: a client that gives up has its queued job removed, not run later."""
    import uvicorn

    settings = RouterSettings(redis_url=redis_url, hf_endpoint=devhub_url, pools=[SDXL, SD15], request_timeout_s=30)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    check = redis.Redis.from_url(redis_url)
    try:
        wait_port(port)
        with StubWorker(redis_url, SDXL, "idle", mode="idle"):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.post("/models/tiny/sdxl-base", json=PROMPT, timeout=0.5)
                # Placed on the only worker (affinity): its own stream, or the shared one.
                streams = [keys.pool_stream(SDXL), keys.worker_stream(SDXL, "idle")]
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and (
                    any(check.xlen(s) for s in streams) or not check.keys(keys.job_cancel("*"))
                ):
                    await asyncio.sleep(0.1)
                assert [check.xlen(s) for s in streams] == [0, 0]
                assert len(check.keys(keys.job_cancel("*"))) == 1
                assert (await client.get("/health")).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
        check.close()


async def test_shutdown_drains_in_flight_requests(redis_url: str, devhub_url: str) -> None:
    """uvicorn told to exit (as on SIGTERM) lets the request in flight get its image."""
    import uvicorn

    settings = RouterSettings(redis_url=redis_url, hf_endpoint=devhub_url, pools=[SDXL, SD15])
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=10
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_port(port)
        with StubWorker(redis_url, SDXL, "slow", mode="slow"):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                request = asyncio.create_task(client.post("/models/tiny/sdxl-base", json=PROMPT))
                await asyncio.sleep(0.4)
                server.should_exit = True
                r = await request
        assert r.status_code == 200
        thread.join(10)
        assert not thread.is_alive()
    finally:
        server.should_exit = True
        thread.join(10)
