"""The OpenAI dialect (``router/api_openai.py``) in process, through the real ``openai`` SDK, answered by
real workers of the tiny zoo: n images after one swap, each the image of its own seed alone; ``loras``
composing like ``parameters.adapters``; backpressure counting images; image URLs; OpenAI's errors.
"""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI
from PIL import Image

from router.app import create_app
from tests.integration.conftest import router_settings
from tests.integration.inprocess import SDXL, Workers

pytestmark = pytest.mark.anyio

LORA = "tiny/sdxl-lora-kohya"
#: A few steps on the tiny base: enough for every seed to draw its own image.
STEPS = {"num_inference_steps": 2}


@pytest.fixture
def openai_router(redis_url: str, devhub_url: str) -> Any:
    """``async with openai_router(**settings) as (client, http)``: the SDK and a raw client, over ASGI."""

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[tuple[AsyncOpenAI, httpx2.AsyncClient]]:
        settings = router_settings(redis_url, devhub_url, **overrides)
        app = create_app(settings)
        key = settings.api_key.get_secret_value() if settings.api_key else "no-key-needed"
        async with app.router.lifespan_context(app):
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://router", timeout=60) as http:
                # No retries: a retry would hide the first answer, which is what these tests read.
                client = AsyncOpenAI(base_url="http://router/v1", api_key=key, http_client=http, max_retries=0)
                yield client, http

    return make


def swaps(workers: Workers) -> float:
    """Adapter swaps the SDXL worker made so far (its own metrics)."""
    registry = workers[SDXL].worker.metrics.registry
    return sum(
        registry.get_sample_value("lorafarm_adapter_swaps_total", {"pool": SDXL, "mode": m}) or 0.0
        for m in ("fused", "unfused")
    )


def decoded(response: Any) -> list[bytes]:
    return [base64.b64decode(item.b64_json) for item in response.data]


async def test_n_images_come_from_one_swap_and_each_is_the_image_of_its_seed_alone(
    openai_router: Any, workers: Workers
) -> None:
    async with openai_router() as (client, _):
        before = swaps(workers)
        batch = await workers.serve(
            client.images.generate(
                model=LORA, prompt="an elephant", n=4, size="64x64", extra_body={"seed": 11, **STEPS}
            )
        )
        assert swaps(workers) - before == 1
        [job] = workers[SDXL].jobs
        assert (job.images, job.seed, job.width, job.height, job.format) == (4, 11, 64, 64, "png")
        images = decoded(batch)
        assert [item.seed for item in batch.data] == [11, 12, 13, 14]
        assert len(set(images)) == 4
        assert {Image.open(io.BytesIO(i)).size for i in images} == {(64, 64)}
        for item, image in zip(batch.data, images, strict=True):
            alone = await workers.serve(
                client.images.generate(
                    model=LORA, prompt="an elephant", size="64x64", extra_body={"seed": item.seed, **STEPS}
                )
            )
            assert decoded(alone) == [image]
        assert swaps(workers) - before == 1  # the four n=1 requests found the adapter fused


async def test_loras_compose_exactly_like_parameters_adapters(openai_router: Any, workers: Workers) -> None:
    adapters = [{"id": "tiny/sdxl-lora-a", "scale": 0.7}, {"id": "tiny/sdxl-lora-b", "scale": 0.3}]
    loras = [
        {"path": "https://huggingface.co/tiny/sdxl-lora-a", "scale": 0.7},
        {"path": "tiny/sdxl-lora-b", "scale": 0.3},
    ]
    params = {"seed": 5, **STEPS}
    async with openai_router() as (client, http):
        png = {"Accept": "image/png"}
        by_adapters = await workers.serve(
            http.post(
                f"/models/{SDXL}", json={"inputs": "a cat", "parameters": {**params, "adapters": adapters}}, headers=png
            )
        )
        by_loras = await workers.serve(
            http.post(
                f"/models/{SDXL}", json={"inputs": "a cat", "parameters": {**params, "loras": loras}}, headers=png
            )
        )
        plain = await workers.serve(
            http.post(f"/models/{SDXL}", json={"inputs": "a cat", "parameters": params}, headers=png)
        )
        sdk = await workers.serve(
            client.images.generate(model=SDXL, prompt="a cat", extra_body={**params, "loras": loras})
        )
    assert by_adapters.status_code == by_loras.status_code == 200, by_loras.text
    assert by_loras.content == by_adapters.content != plain.content
    assert decoded(sdk) == [by_adapters.content]
    first, second, _, fourth = workers[SDXL].jobs
    assert first.adapters == second.adapters == fourth.adapters
    assert [(a.repo_id, a.scale) for a in first.adapters] == [("tiny/sdxl-lora-a", 0.7), ("tiny/sdxl-lora-b", 0.3)]


async def test_the_pools_bound_counts_images_not_requests(openai_router: Any, workers: Workers) -> None:
    async with openai_router(queue_max=4) as (client, http):
        # Three images queued (the workers are not drained yet): one more image fits, two do not.
        queued = await http.post("/jobs", json={"model": LORA, "n": 3, "inputs": "a cat", "parameters": STEPS})
        assert queued.status_code == 202, queued.text
        with pytest.raises(openai.RateLimitError) as full:
            await client.images.generate(model=LORA, prompt="a cat", n=2)
        assert full.value.code == "queue_full" and "full" in full.value.message
        assert int(full.value.response.headers["retry-after"]) >= 1
        one = await http.post("/jobs", json={"model": LORA, "inputs": "a cat", "parameters": STEPS})
        assert one.status_code == 202, one.text
        hf = await http.post(f"/models/{LORA}", json={"inputs": "a cat"})
        assert hf.status_code == 429 and hf.json()["error_type"] == "queue_full"
        with pytest.raises(openai.UnprocessableEntityError, match="n: 1 to 4 images"):
            await client.images.generate(model=LORA, prompt="a cat", n=5)
        await workers.drain()
        job_id = queued.json()["id"]
        images = [await http.get(f"/jobs/{job_id}/result", params={"index": k}) for k in range(3)]
        assert [r.status_code for r in images] == [200] * 3 and len({r.content for r in images}) == 3
        past = await http.get(f"/jobs/{job_id}/result", params={"index": 3})
        assert past.status_code == 422 and "made 3 image(s)" in past.json()["error"]
    assert queued.json()["seeds"] == [queued.json()["seed"] + k for k in range(3)]


async def test_url_answers_are_signed_links_that_serve_the_images(openai_router: Any, workers: Workers) -> None:
    async with openai_router(api_key="k-123") as (client, http):
        args = {"model": LORA, "prompt": "a cat", "n": 2, "extra_body": {"seed": 3, **STEPS}}
        by_url = await workers.serve(client.images.generate(response_format="url", output_format="webp", **args))
        inline = await workers.serve(client.images.generate(output_format="webp", **args))
        assert by_url.model_extra["expires_at"] > by_url.created
        fetched = [await http.get(item.url) for item in by_url.data]  # no key: the URL is the capability
        assert [r.status_code for r in fetched] == [200, 200], fetched[0].text
        assert {r.headers["content-type"] for r in fetched} == {"image/webp"}
        assert [r.content for r in fetched] == decoded(inline)
        unsigned = await http.get(by_url.data[0].url.split("?")[0])
        assert unsigned.status_code == 401
        assert unsigned.json()["error"]["code"] == "unauthorized"
        other = await http.get(by_url.data[0].url.replace("/0?", "/1?"))
        assert other.status_code == 401  # a signature names one image of one job
    async with openai_router() as (_, http):
        gone = await http.get("/v1/images/no-such-job/0")
        assert gone.status_code == 404
        assert gone.json() == {
            "error": {
                "message": "no job no-such-job (or its result expired)",
                "type": "not_found_error",
                "code": "job_not_found",
                "param": None,
            }
        }


async def test_errors_are_the_sdks_own_exceptions_with_lorafarms_message(openai_router: Any, workers: Workers) -> None:
    async with openai_router(api_key="k-123") as (client, http):
        with pytest.raises(openai.UnprocessableEntityError, match="size 65x64: width") as bad:
            await client.images.generate(model=LORA, prompt="a cat", size="65x64")
        assert bad.value.code == "invalid_request" and bad.value.type == "invalid_request_error"
        with pytest.raises(openai.PermissionDeniedError, match="gated") as gated:
            await client.images.generate(model="tiny/sdxl-lora-gated", prompt="a cat")
        assert gated.value.code == "gated_repo"
        with pytest.raises(openai.NotFoundError) as missing:
            await client.images.generate(model="tiny/no-such-lora", prompt="a cat")
        assert missing.value.code == "repo_not_found"
        with pytest.raises(openai.BadRequestError) as misfit:  # found out by the worker
            await workers.serve(client.images.generate(model="tiny/sdxl-lora-misfit", prompt="a cat", extra_body=STEPS))
        assert misfit.value.code == "adapter_incompatible"
        wrong = AsyncOpenAI(base_url="http://router/v1", api_key="wrong", http_client=http, max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="API key") as denied:
            await wrong.images.generate(model=LORA, prompt="a cat")
        assert denied.value.code == "unauthorized"
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
        nobody = await http.post("/v1/images/generations", json={"prompt": "a cat"})
        assert nobody.status_code == 401 and nobody.json()["error"]["type"] == "authentication_error"
        no_route = await http.get("/v1/nothing-here", headers={"Authorization": "Bearer k-123"})
        assert no_route.status_code == 404 and no_route.json()["error"]["code"] == "not_found"
    # Only the misfit adapter reached a worker: every other refusal came before the queue.
    assert [[j.adapters[0].repo_id for j in w.jobs] for w in workers.values()] == [["tiny/sdxl-lora-misfit"], []]


async def test_a_key_past_its_rate_gets_the_sdks_rate_limit_error(openai_router: Any, workers: Workers) -> None:
    async with openai_router(api_key="k-123", api_key_rate_per_s=0.1, api_key_burst=1) as (client, _):
        first = await workers.serve(
            client.images.with_raw_response.generate(model=LORA, prompt="a cat", extra_body=STEPS)
        )
        assert first.headers["x-ratelimit-remaining"] == "0"
        with pytest.raises(openai.RateLimitError, match="past its rate") as refused:
            await client.images.generate(model=LORA, prompt="a cat", extra_body=STEPS)
    assert refused.value.code == "rate_limited"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert len(workers[SDXL].worker.jobs) == 1  # the refused request never reached the queue


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that records every request it gets (none, if nothing is fetched)."""
    seen: list[str] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


async def test_a_lora_url_of_another_address_is_refused_and_never_fetched(
    openai_router: Any, workers: Workers, listener: tuple[str, list[str]]
) -> None:
    address, seen = listener
    paths = [
        f"{address}/tiny/sdxl-lora-a",
        f"https://huggingface.co@{address.removeprefix('http://')}/tiny/sdxl-lora-a",
        "https://huggingface.co/tiny/sdxl-lora-a/resolve/main/pytorch_lora_weights.safetensors",
    ]
    async with openai_router() as (client, http):
        for path in paths:
            with pytest.raises(openai.UnprocessableEntityError, match=r"loras\.0\.path"):
                await client.images.generate(model=SDXL, prompt="a cat", extra_body={"loras": [{"path": path}]})
            hf = await http.post(f"/models/{SDXL}", json={"inputs": "a cat", "parameters": {"loras": [{"path": path}]}})
            assert hf.status_code == 422 and "parameters.loras.0.path" in hf.json()["error"]
    assert seen == []
    assert [w.jobs for w in workers.values()] == [[], []]


async def test_models_lists_the_bases_and_the_adapters_the_workers_hold(openai_router: Any, workers: Workers) -> None:
    async with openai_router() as (client, _):
        await workers.serve(client.images.generate(model="tiny/sdxl-lora-a", prompt="a cat", extra_body=STEPS))
        models = await client.models.list()
    cards = {m.id: m for m in models.data}
    assert list(cards)[:2] == [SDXL, "tiny/sd15-base"]
    assert cards["tiny/sdxl-lora-a"].model_extra == {"kind": "lora", "base": SDXL}
    assert cards[SDXL].model_extra == {"kind": "base", "base": SDXL}
    assert cards["tiny/sdxl-lora-a"].owned_by == "tiny" and cards["tiny/sdxl-lora-a"].object == "model"
