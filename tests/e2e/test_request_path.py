"""The whole request path with real processes: HTTP → router → Redis → worker → image."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from lorafarm.farm import Farm

pytestmark = pytest.mark.slow

BODY = {"inputs": "an elephant", "parameters": {"num_inference_steps": 2, "seed": 7}}


def post(farm: Farm, repo: str, body: dict | None = None, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{farm.router_url}/models/{repo}", json=body or BODY, timeout=120, **kwargs)  # type: ignore[arg-type]


def pixels(resp: httpx.Response) -> bytes:
    return Image.open(io.BytesIO(resp.content)).convert("RGB").tobytes()


def test_base_returns_a_jpeg_with_headers(farm: Farm) -> None:
    resp = post(farm, "tiny/sdxl-base")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/jpeg"
    assert float(resp.headers["x-compute-time"]) > 0
    assert resp.headers["x-request-id"]
    assert Image.open(io.BytesIO(resp.content)).size == (64, 64)


@pytest.mark.parametrize(
    "repo", ["tiny/sdxl-lora-diffusers", "tiny/sdxl-lora-peft", "tiny/sdxl-lora-kohya", "tiny/sdxl-lora-kohya-sgm"]
)
def test_each_lora_format_changes_the_image(farm: Farm, repo: str) -> None:
    base = post(farm, "tiny/sdxl-base", headers={"Accept": "image/png"})
    lora = post(farm, repo, headers={"Accept": "image/png"})
    assert lora.status_code == 200, lora.text
    assert pixels(lora) != pixels(base)


def test_same_request_same_bytes(farm: Farm) -> None:
    first = post(farm, "tiny/sdxl-lora-diffusers")
    second = post(farm, "tiny/sdxl-lora-diffusers")
    assert first.content == second.content
    assert second.headers["x-adapter-warm"] == "true"


def test_alternating_adapters_return_the_same_bytes(farm: Farm) -> None:
    a1 = post(farm, "tiny/sdxl-lora-a")
    b = post(farm, "tiny/sdxl-lora-b")
    a2 = post(farm, "tiny/sdxl-lora-a")
    assert a1.status_code == b.status_code == a2.status_code == 200
    assert a1.content == a2.content
    assert a1.content != b.content


def test_base_unchanged_after_many_swaps(farm: Farm) -> None:
    before = post(farm, "tiny/sdxl-base", headers={"Accept": "image/png"})
    for _ in range(4):
        for repo in ("tiny/sdxl-lora-a", "tiny/sdxl-lora-kohya", "tiny/sdxl-lora-peft"):
            assert post(farm, repo).status_code == 200
    after = post(farm, "tiny/sdxl-base", headers={"Accept": "image/png"})
    assert after.content == before.content


def test_lora_header_on_root_like_the_reference_image(farm: Farm) -> None:
    with_header = httpx.post(
        f"{farm.router_url}/",
        content=b'{"inputs": "an elephant", "parameters": {"num_inference_steps": 2, "seed": 7}}',
        headers={"lora": "tiny/sdxl-lora-diffusers", "Content-Type": "application/x-www-form-urlencoded"},
        timeout=120,
    )
    by_repo = post(farm, "tiny/sdxl-lora-diffusers")
    assert with_header.status_code == 200, with_header.text
    assert with_header.content == by_repo.content


@pytest.mark.parametrize(("accept", "fmt"), [("image/png", "PNG"), ("image/webp", "WEBP"), ("image/jpeg", "JPEG")])
def test_accept_picks_the_format(farm: Farm, accept: str, fmt: str) -> None:
    resp = post(farm, "tiny/sdxl-base", headers={"Accept": accept})
    assert resp.headers["content-type"] == accept
    assert Image.open(io.BytesIO(resp.content)).format == fmt


def test_second_pool_serves_its_lora(farm: Farm) -> None:
    base = post(farm, "tiny/sd15-base", headers={"Accept": "image/png"})
    lora = post(farm, "tiny/sd15-lora", headers={"Accept": "image/png"})
    assert base.status_code == lora.status_code == 200
    assert pixels(base) != pixels(lora)


@pytest.mark.parametrize(
    ("repo", "status", "error_type"),
    [
        ("tiny/does-not-exist", 404, "repo_not_found"),
        ("tiny/sdxl-lora-gated", 403, "gated_repo"),
        ("tiny/sdxl-lora-private", 403, "private_repo"),
        ("tiny/sdxl-lora-pickle", 400, "unsafe_adapter_format"),
        ("tiny/sdxl-lora-misfit", 400, "adapter_incompatible"),
        ("tiny/lora-unserved-base", 400, "base_not_served"),
        ("tiny/not-a-pipeline", 400, "unsupported_model"),
    ],
)
def test_bad_cases_get_clear_errors_and_the_worker_goes_on(farm: Farm, repo: str, status: int, error_type: str) -> None:
    resp = post(farm, repo)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error_type"] == error_type
    assert body["error"]
    assert post(farm, "tiny/sdxl-lora-diffusers").status_code == 200


def test_status_lists_pools_workers_and_queues(farm: Farm) -> None:
    status = httpx.get(f"{farm.router_url}/status", timeout=10).json()
    pools = {p["pool"]: p for p in status["pools"]}
    assert set(pools) == {"tiny/sdxl-base", "tiny/sd15-base"}
    assert all(len(p["workers"]) == 1 for p in pools.values())
    assert {pool: p["family"] for pool, p in pools.items()} == {"tiny/sdxl-base": "sdxl", "tiny/sd15-base": "sd15"}
    assert all("queue_depth" in p for p in pools.values())
