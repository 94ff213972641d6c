"""A FLUX.1 pool end to end: a real Flux worker process beside an SDXL one, the Flux base the default.

Every Flux LoRA format, deterministic bytes across swaps, per-family parameter errors, the
``lora`` header on ``POST /``, the job API with steps, ``lorafarm generate``, metrics, the demo
curl line of ``make run``, and a Hub outage.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from lorafarm.cli import check_demo
from lorafarm.farm import REPO_ROOT, Farm, FarmConfig
from tests.polling import status, wait_until

pytestmark = pytest.mark.slow

FLUX, SDXL = "tiny/flux-base", "tiny/sdxl-base"
BODY = {"inputs": "an elephant", "parameters": {"num_inference_steps": 2, "seed": 7}}
PNG = {"Accept": "image/png"}


@pytest.fixture(scope="module")
def farm(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(
        FarmConfig(
            state_dir=tmp_path_factory.mktemp("farm-flux"),
            zoo_dir=zoo_dir,
            pools=[FLUX, SDXL],  # the first pool is the router's default base
            env={"LORAFARM_DEFAULT_STEPS": "2", "LORAFARM_HEARTBEAT_S": "0.5"},
        )
    )
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()


def post(farm: Farm, repo: str, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{farm.router_url}/models/{repo}", json=body or BODY, timeout=120, **kwargs)


def pixels(resp: httpx.Response) -> bytes:
    assert resp.status_code == 200, resp.text
    return Image.open(io.BytesIO(resp.content)).convert("RGB").tobytes()


def assert_error(resp: httpx.Response, status_code: int, error_type: str, *words: str) -> None:
    assert resp.status_code == status_code, resp.text
    body = resp.json()
    assert body["error_type"] == error_type and all(w in body["error"] for w in words), body


@pytest.mark.parametrize("repo", [f"tiny/flux-lora-{f}" for f in ("diffusers", "kohya", "xlabs", "te", "a")])
def test_each_flux_format_changes_the_image(farm: Farm, repo: str) -> None:
    base = post(farm, FLUX, headers=PNG)
    lora = post(farm, repo, headers=PNG)
    assert Image.open(io.BytesIO(lora.content)).size == (64, 64)
    assert pixels(lora) != pixels(base)


def test_same_request_same_bytes_and_a_b_a_gives_a_twice(farm: Farm) -> None:
    first, again = post(farm, "tiny/flux-lora-diffusers"), post(farm, "tiny/flux-lora-diffusers")
    assert first.status_code == again.status_code == 200
    assert first.content == again.content and again.headers["x-adapter-warm"] == "true"
    a1, b, a2 = (post(farm, f"tiny/flux-lora-{n}") for n in "aba")
    assert a1.status_code == b.status_code == a2.status_code == 200
    assert a1.content == a2.content != b.content


def test_composition_and_strength_change_the_image(farm: Farm) -> None:
    alone = post(farm, "tiny/flux-lora-a")
    composed_body = {
        **BODY,
        "parameters": {**BODY["parameters"], "adapters": [{"id": "tiny/flux-lora-b", "scale": 0.3}]},
    }
    composed = post(farm, "tiny/flux-lora-a", composed_body)
    weaker = post(farm, "tiny/flux-lora-a", {**BODY, "parameters": {**BODY["parameters"], "lora_scale": 0.5}})
    assert len({alone.content, composed.content, weaker.content}) == 3


def test_misfit_is_refused_and_the_base_stays_exact(farm: Farm) -> None:
    before = post(farm, FLUX, headers=PNG)
    assert_error(post(farm, "tiny/flux-lora-misfit"), 400, "adapter_incompatible", "unet")
    assert post(farm, "tiny/flux-lora-a").status_code == 200
    assert pixels(post(farm, FLUX, headers=PNG)) == pixels(before)


def test_flux_parameters_are_checked_per_family_with_the_reason(farm: Farm) -> None:
    params = BODY["parameters"]
    negative = {**BODY, "parameters": {**params, "negative_prompt": "blurry"}}
    assert_error(post(farm, "tiny/flux-lora-a", negative), 422, "invalid_request", "negative_prompt", "distilled")
    odd = {**BODY, "parameters": {**params, "width": 72}}
    assert_error(post(farm, "tiny/flux-lora-a", odd), 422, "invalid_request", "multiple of 16")
    # The same parameters suit the SDXL pool of the same farm.
    assert post(farm, "tiny/sdxl-lora-a", negative).status_code == 200
    assert post(farm, "tiny/sdxl-lora-a", odd).status_code == 200
    # guidance_scale is Flux's distilled guidance: another value, another image; its default is 3.5.
    default = post(farm, "tiny/flux-lora-a")
    stated = post(farm, "tiny/flux-lora-a", {**BODY, "parameters": {**params, "guidance_scale": 3.5}})
    other = post(farm, "tiny/flux-lora-a", {**BODY, "parameters": {**params, "guidance_scale": 9.0}})
    assert default.content == stated.content != other.content


def test_lora_header_on_root_goes_to_its_base_whichever_is_the_default(farm: Farm) -> None:
    def root(lora: str | None) -> httpx.Response:
        headers = {"lora": lora} if lora else {}
        return httpx.post(f"{farm.router_url}/", content=json.dumps(BODY), headers=headers, timeout=120)

    assert root(None).content == post(farm, FLUX).content  # the default base is Flux here
    assert root("tiny/flux-lora-b").content == post(farm, "tiny/flux-lora-b").content
    sdxl = root("tiny/sdxl-lora-b")
    assert sdxl.status_code == 200 and sdxl.content == post(farm, "tiny/sdxl-lora-b").content


def test_status_and_metrics_show_the_flux_pool(farm: Farm) -> None:
    assert post(farm, "tiny/flux-lora-c").status_code == 200

    def flux_worker() -> dict[str, Any] | None:
        pools = {p["pool"]: p for p in status(farm)["pools"]}
        assert {pool: p["family"] for pool, p in pools.items()} == {FLUX: "flux", SDXL: "sdxl"}
        (worker,) = pools[FLUX]["workers"]
        return worker if worker["pristine_host_bytes"] > 0 else None  # once a heartbeat followed the swap

    worker = wait_until(flux_worker, 10, what="pristine bytes in the heartbeat")
    assert worker["pipeline"] == "FluxPipeline"
    assert worker["pristine_device_bytes"] == 0  # a CPU worker keeps its pristine copies in host memory
    text = httpx.get(f"{farm.router_url}/metrics", timeout=10).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert any(s.name.startswith("lorafarm_worker_inference_seconds") and s.labels.get("pool") == FLUX for s in samples)


def test_job_api_reports_the_flux_steps(farm: Farm) -> None:
    job = {"model": "tiny/flux-lora-b", "inputs": "an elephant", "parameters": {"num_inference_steps": 6, "seed": 3}}
    resp = httpx.post(f"{farm.router_url}/jobs", json=job, headers=PNG, timeout=30)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    seen: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{farm.router_url}/jobs/{job_id}/events", timeout=60) as events:
        seen = [json.loads(line[5:]) for line in events.iter_lines() if line.startswith("data:")]
    assert seen[-1]["status"] == "done", seen
    assert {e["steps"] for e in seen if "steps" in e} == {6} and max(e.get("step", 0) for e in seen) == 6
    image = httpx.get(f"{farm.router_url}/jobs/{job_id}/result", timeout=10)
    assert image.headers["content-type"] == "image/png" and Image.open(io.BytesIO(image.content)).size == (64, 64)


def test_cli_generate_and_the_widget_serve_a_flux_lora(farm: Farm, tmp_path: Path) -> None:
    out = tmp_path / "flux.png"
    argv = [sys.executable, "-m", "lorafarm.cli", "generate", "tiny/flux-lora-c", "an elephant", "-o", str(out)]
    done = subprocess.run(
        [*argv, "--steps", "4", "--seed", "5", "--url", farm.router_url],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "64x64 PNG" in done.stdout and "4/4" in done.stderr
    negative = subprocess.run(
        [*argv, "--negative", "blurry", "--url", farm.router_url], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert negative.returncode == 1 and "invalid_request" in negative.stderr and "Traceback" not in negative.stderr
    widget = httpx.get(f"{farm.router_url}/widget/tiny/flux-lora-c", timeout=10)
    assert widget.status_code == 200 and "tiny/flux-lora-c" in widget.text


def test_the_printed_demo_curl_lines_work(farm: Farm) -> None:
    lines = check_demo(farm.router_url, [FLUX, SDXL])  # what `make run` checks before it says "ready"
    assert [line.split(" ")[1] for line in lines] == ["tiny/sdxl-lora-diffusers", "tiny/flux-lora-diffusers"]


def test_hub_outage_keeps_serving_what_is_known(farm: Farm) -> None:
    known = post(farm, "tiny/flux-lora-kohya")
    assert known.status_code == 200
    try:
        farm.kill("devhub")
        again = post(farm, "tiny/flux-lora-kohya")
        assert again.status_code == 200 and again.content == known.content
        assert_error(post(farm, "tiny/flux-lora-does-not-exist"), 503, "hub_unavailable")
    finally:
        farm.start_devhub()
    wait_until(lambda: post(farm, "tiny/flux-lora-xlabs").status_code == 200, 30, interval=0.5, what="Hub back")
