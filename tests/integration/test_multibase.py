"""One worker serving several pools (multi-base), in process, behind the real router.

The worker holds the tiny SDXL, SD 1.5 and FLUX.1 bases: one active on the "device" (a CPU
here, so a switch is a copy in the same memory), the others warm in host memory, or cold on
disk when the host budget is 0. Against it: single-base workers' answers, fresh loads of each
base, the devhub's own request log, and the Hub cache's files taken away.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lorafarm.farm import free_port, wait_port
from tests.conftest import stop
from tests.integration.conftest import start_workers
from tests.integration.inprocess import FLUX, FLUX_POOLS, SD15, SDXL, AppClient, InProcessWorker, Workers
from worker.engine import SwapEngine
from worker.pipeline import load_base
from worker.settings import WorkerSettings

pytestmark = pytest.mark.anyio

BODY = {"inputs": "a photo of a cat", "parameters": {"seed": 3, "num_inference_steps": 2, "width": 64, "height": 64}}
#: Requests alternating between the pools' LoRAs and bases: every one a base switch, most a swap.
ALTERNATING = [
    "tiny/sdxl-lora-a",
    "tiny/sd15-lora",
    "tiny/flux-lora-a",
    "tiny/sdxl-lora-kohya",
    "tiny/flux-lora-kohya",
    "tiny/sd15-base",
    "tiny/sdxl-base",
    "tiny/flux-lora-diffusers",
    "tiny/sd15-lora",
]


def settings_for(redis_url: str, hub: str, cache: str, **extra: Any) -> WorkerSettings:
    return WorkerSettings(
        base=",".join([SDXL, SD15, FLUX]),
        worker_id="worker-multi",
        redis_url=redis_url,
        hf_endpoint=hub,
        hf_cache_dir=cache,
        device="cpu",
        default_steps=2,
        default_size=64,
        block_ms=20,
        worker_port=0,
        **extra,
    )


def fresh_pipes(settings: WorkerSettings) -> dict[str, tuple[Any, SwapEngine]]:
    """Each base loaded anew (as a worker loads it: into host memory), with its engine."""
    torch.set_num_threads(1)
    pipes = {}
    for base in settings.bases:
        pipe = load_base(settings.for_base(base), place=False)
        pipes[base] = (pipe, SwapEngine(pipe, pristine=settings.pristine))
    return pipes


def multi_worker(settings: WorkerSettings) -> Workers:
    return Workers({"multi": InProcessWorker(settings, pipes=fresh_pipes(settings))})


async def serve_all(app_client: AppClient, workers: Workers, repos: list[str]) -> list[Any]:
    async with app_client(pools=FLUX_POOLS) as client:
        return [await workers.serve(client.post(f"/models/{repo}", json=BODY)) for repo in repos]


def tensors(pipe: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the pipeline's modules, by name."""
    out = {}
    for component, model in pipe.components.items():
        if isinstance(model, torch.nn.Module):
            out |= {f"{component}.{k}": v for k, v in model.state_dict(keep_vars=False).items()}
    return out


def scraped(worker: InProcessWorker) -> dict[str, dict[tuple[str, ...], float]]:
    """Samples by name (``lorafarm_base_switches_total``...), then by their labels."""
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(worker.worker.metrics.registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_one_worker_serves_three_pools_with_the_bytes_of_single_base_workers(
    app_client: AppClient,
    redis_url: str,
    devhub_url: str,
    worker_cache: str,
    tiny_bases: dict[str, tuple[Any, SwapEngine]],
    tiny_flux: tuple[Any, SwapEngine],
) -> None:
    singles = start_workers({**tiny_bases, FLUX: tiny_flux}, redis_url, devhub_url, worker_cache)
    try:
        expected = await serve_all(app_client, singles, ALTERNATING)
    finally:
        singles.close()
    multi = multi_worker(settings_for(redis_url, devhub_url, worker_cache))
    try:
        got = await serve_all(app_client, multi, ALTERNATING)
        async with app_client(pools=FLUX_POOLS) as client:
            status = (await client.get("/status")).json()
    finally:
        multi.close()
    assert [r.status_code for r in got] == [200] * len(ALTERNATING), [r.text for r in got]
    assert [r.headers["x-worker-id"] for r in got] == ["worker-multi"] * len(ALTERNATING)
    assert [r.content for r in got] == [r.content for r in expected]
    # FLUX.1 was loaded last: each request needed its base back from host memory, a warm switch.
    assert [r.headers["x-base-switch"] for r in got] == ["warm"] * len(ALTERNATING)
    assert {r.headers["x-base-switch"] for r in expected} == {"none"}
    # Each pool's /status shows the worker, serving all three, with its base's tier there.
    seen = {p["pool"]: p["workers"] for p in status["pools"]}
    for pool in FLUX_POOLS:
        [w] = seen[pool]
        assert w["worker_id"] == "worker-multi" and w["pools"] == [SDXL, SD15, FLUX]
    tiers = {pool: seen[pool][0]["base_tier"] for pool in FLUX_POOLS}
    assert tiers == {SDXL: "warm", SD15: "active", FLUX: "warm"}  # SD 1.5 served last
    assert seen[SDXL][0]["warm_switch_s"] > 0 and seen[SDXL][0]["base_bytes"]["host"] > 0


@pytest.mark.parametrize("host_bytes", [None, 0], ids=["warm", "cold"])
async def test_after_many_switches_every_base_is_bit_exact_against_a_fresh_load(
    app_client: AppClient, redis_url: str, devhub_url: str, worker_cache: str, host_bytes: int | None
) -> None:
    settings = settings_for(redis_url, devhub_url, worker_cache, base_host_bytes=host_bytes)
    multi = multi_worker(settings)
    try:
        got = await serve_all(app_client, multi, ALTERNATING * 2)
        assert [r.status_code for r in got] == [200] * len(got)
        kind = "warm" if host_bytes is None else "cold"
        # FLUX.1 was loaded last (active): each request switches base.
        assert {r.headers["x-base-switch"] for r in got} == {kind}
        worker = multi["multi"]
        metrics = scraped(worker)
        switches = metrics["lorafarm_base_switches_total"]
        assert sum(switches.values()) == len(got)
        assert {dict(k)["kind"] for k in switches} == {kind}
        by_tier = {dict(k)["pool"] + ":" + dict(k)["tier"]: v for k, v in metrics["lorafarm_base_bytes"].items()}
        assert by_tier[f"{SD15}:device"] > 0 and by_tier[f"{SDXL}:device"] == 0
        assert (by_tier[f"{SDXL}:host"] > 0) == (host_bytes is None)
        for base in settings.bases:
            worker.bases.activate(base)
            want, have = tensors(load_base(settings.for_base(base))), tensors(worker.bases[base].pipe)
            assert want.keys() == have.keys()
            drifted = [name for name in want if not torch.equal(want[name], have[name])]
            assert drifted == [], f"{base}: {drifted[:5]}"
    finally:
        multi.close()


@pytest.fixture
def logged_devhub(zoo_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A devhub of its own, its request log in a file: (url, log)."""
    port, log = free_port(), tmp_path / "devhub.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devhub", "serve", "--root", str(zoo_dir), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port(port, proc)
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop(proc)


def base_requests(log: Path) -> list[str]:
    """The devhub's logged requests for the base repos (model info and files)."""
    lines = log.read_text().splitlines()
    return [line for line in lines if "event=request" in line and any(f"/{b}" in line for b in (SDXL, SD15, FLUX))]


async def test_a_base_switch_never_downloads_and_a_warm_switch_never_reads_the_disk(
    app_client: AppClient, redis_url: str, logged_devhub: tuple[str, Path], hf_cache: Path
) -> None:
    hub, log = logged_devhub
    settings = settings_for(redis_url, hub, str(hf_cache))
    multi = multi_worker(settings)
    worker = multi["multi"]
    try:
        fetched_at_start = base_requests(log)
        assert fetched_at_start, "the bases were fetched from this devhub at start"
        first = await serve_all(app_client, multi, ALTERNATING)
        # The bases' files leave the disk cache: warm switches must not need them.
        for base in settings.bases:
            shutil.rmtree(hf_cache / f"models--{base.replace('/', '--')}")
        again = await serve_all(app_client, multi, ALTERNATING)
        assert [r.status_code for r in again] == [200] * len(ALTERNATING)
        assert [r.content for r in again] == [r.content for r in first]
        assert {r.headers["x-base-switch"] for r in again} == {"warm"}
        assert base_requests(log) == fetched_at_start  # no second fetch of anything of a base
        assert [worker.bases[b].weights.disk_reads for b in settings.bases] == [0, 0, 0]
        # A cold load would have needed them: the same move from disk fails now.
        sd15 = worker.bases[SD15].weights
        worker.bases.activate(SDXL)
        sd15.to_disk()
        with pytest.raises(FileNotFoundError):
            sd15.load_cold(keep_host=False)
    finally:
        multi.close()
