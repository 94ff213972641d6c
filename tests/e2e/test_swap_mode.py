"""LORAFARM_SWAP_MODE on real worker processes: unfused serves exactly, auto calibrates at start."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lorafarm.farm import Farm, FarmConfig
from tests.polling import wait_until

pytestmark = pytest.mark.slow

POOL = "tiny/sdxl-base"
BODY = {"inputs": "an elephant", "parameters": {"num_inference_steps": 2, "seed": 11}}
PNG = {"Accept": "image/png"}


@pytest.fixture(scope="module")
def unfused(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(
        FarmConfig(
            state_dir=tmp_path_factory.mktemp("farm-swap-mode"),
            zoo_dir=zoo_dir,
            pools=[POOL],
            env={"LORAFARM_DEFAULT_STEPS": "2", "LORAFARM_HEARTBEAT_S": "0.5"},
            worker_env={"LORAFARM_SWAP_MODE": "unfused"},
        )
    )
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()


def done_jobs(farm: Farm, worker: str) -> list[tuple[str, str]]:
    """(adapters, mode) of every job the worker's log says it finished."""
    log = (farm.logs / f"{worker}.log").read_text()
    return re.findall(r"event=job_done job=\S+ (?:\S+ )*?adapters=(\S+) (?:\S+ )*?mode=(\w+)", log)


def post(farm: Farm, repo: str) -> httpx.Response:
    resp = httpx.post(f"{farm.router_url}/models/{repo}", json=BODY, headers=PNG, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp


def test_an_unfused_worker_serves_loras_and_keeps_the_base_exact(unfused: Farm) -> None:
    base = post(unfused, POOL)
    a = post(unfused, "tiny/sdxl-lora-kohya")
    b = post(unfused, "tiny/sdxl-lora-diffusers")
    a_again = post(unfused, "tiny/sdxl-lora-kohya")
    assert a.content != base.content and b.content != a.content
    assert a_again.content == a.content
    assert post(unfused, POOL).content == base.content
    # The worker logs a job a moment after it answered it.
    jobs = wait_until(lambda: len(done_jobs(unfused, "worker-1")) >= 5 and done_jobs(unfused, "worker-1"), 10)
    with_adapters = [mode for adapters, mode in jobs if adapters != "-"]
    assert len(with_adapters) == 3 and set(with_adapters) == {"unfused"}, jobs


def test_an_auto_worker_measures_its_costs_before_it_announces_itself(unfused: Farm) -> None:
    assert unfused.terminate("worker-1") == 0
    name = unfused.start_worker(POOL, {"LORAFARM_SWAP_MODE": "auto"})
    unfused.wait_workers({POOL: 1})
    post(unfused, "tiny/sdxl-lora-peft")
    jobs = wait_until(lambda: done_jobs(unfused, name), 10)
    assert [(adapters.split("@")[0], mode in ("fused", "unfused")) for adapters, mode in jobs] == [
        ("tiny/sdxl-lora-peft", True)
    ]
    log = (unfused.logs / f"{name}.log").read_text()
    found = re.search(r"event=calibrated (.*)", log)
    assert found, log[-2000:]
    costs = dict(pair.split("=") for pair in found.group(1).split())
    assert set(costs) == {"fused_apply_s", "restore_s", "unfused_swap_s", "unfused_step_s"}
    assert all(float(v) >= 0 for v in costs.values())
    # It calibrated before it was ready, so before its first job.
    assert log.index("event=calibrated") < log.index("event=job_done")
