"""LORAFARM_COMPILE on real worker processes: ready only once compiled and warmed up, swaps never
recompile; a compile that fails stops the worker with a clear error instead of a half-ready worker."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lorafarm.farm import Farm, FarmConfig, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

POOL = "tiny/sdxl-base"
BODY = {"inputs": "an elephant", "parameters": {"num_inference_steps": 2, "seed": 11}}
PNG = {"Accept": "image/png"}
#: Only the UNet's repeated transformer blocks are compiled (regional compilation): the whole
#: tiny UNet takes minutes on 2 loaded cores (tests/integration/test_compile.py compiles it once),
#: its blocks a fraction of that, and the start-up order, swaps and metrics are the same.
SCOPE = {"LORAFARM_COMPILE_SCOPE": "blocks"}
COMPILED = {
    **SCOPE,
    "LORAFARM_COMPILE": "default",
    "LORAFARM_SWAP_MODE": "unfused",
    "LORAFARM_COMPILE_UNFUSED_RANK": "16",
}


@pytest.fixture(scope="module")
def farm(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """Redis, devhub and router; each test starts its own workers."""
    farm = Farm(
        FarmConfig(
            state_dir=tmp_path_factory.mktemp("farm-compile"),
            zoo_dir=zoo_dir,
            pools=[POOL],
            workers_per_pool=0,
            env={"LORAFARM_DEFAULT_STEPS": "2", "LORAFARM_HEARTBEAT_S": "0.5"},
        )
    )
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()


def listed(farm: Farm, worker: str) -> bool:
    status = httpx.get(f"{farm.router_url}/status", timeout=5).json()
    return any(w["worker_id"] == worker for p in status["pools"] for w in p["workers"])


def ready(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code
    except httpx.HTTPError:
        return None  # the probe server starts once the worker is built, after the compile


def post(farm: Farm, repo: str) -> bytes:
    resp = httpx.post(f"{farm.router_url}/models/{repo}", json=BODY, headers=PNG, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.content


def test_a_compiled_worker_is_ready_only_once_compiled_and_never_recompiles_on_swaps(farm: Farm) -> None:
    port = free_port()
    name = farm.start_worker(POOL, {**COMPILED, "LORAFARM_WORKER_PORT": str(port)})
    log = farm.logs / f"{name}.log"
    deadline = time.monotonic() + 1500
    while ready(port) != 200 or not listed(farm, name):
        # Until the worker is ready and announced, it must not have claimed to be either.
        assert farm.procs[name].poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        text = log.read_text()
        if "event=compiled" not in text:
            assert ready(port) != 200 and not listed(farm, name), text[-3000:]
        time.sleep(0.5)
    text = log.read_text()
    assert text.index("event=unfused_buffers") < text.index("event=compiled") < text.index("event=worker_started")
    seconds = float(re.search(r"event=compiled mode=default scope=blocks sizes=64x64 seconds=(\S+)", text)[1])

    base = post(farm, POOL)
    a = post(farm, "tiny/sdxl-lora-kohya")
    b = post(farm, "tiny/sdxl-lora-rank32")  # over the compiled unfused rank (16): applied fused
    assert post(farm, "tiny/sdxl-lora-kohya") == a
    assert post(farm, POOL) == base
    assert len({base, a, b}) == 3
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    exported = re.search(r'lorafarm_compile_seconds\{pool="tiny/sdxl-base"\} (\S+)', metrics)
    assert exported and abs(float(exported[1]) - seconds) < 0.1, metrics
    assert f'lorafarm_denoiser_recompiles_total{{pool="{POOL}"}} 0.0' in metrics
    assert "event=unfused_overflow adapters=tiny/sdxl-lora-rank32" in log.read_text()
    assert farm.terminate(name) == 0


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"LORAFARM_COMPILE": "reduce-overhead"}, "needs a CUDA device; this worker runs on cpu"),
        # CPU inductor builds its kernels with a C++ compiler; a fresh cache makes it build them.
        ({"LORAFARM_COMPILE": "default", "CXX": "/bin/false"}, ""),
    ],
    ids=["cuda-graphs-on-cpu", "no-cxx-compiler"],
)
def test_a_compile_that_fails_stops_the_worker_before_it_announces_itself(
    farm: Farm, tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    name = farm.start_worker(POOL, {**SCOPE, **env, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    code = farm.procs[name].wait(timeout=1500)
    text = (farm.logs / f"{name}.log").read_text()
    assert code != 0, text[-3000:]
    failed = re.search(r"event=compile_failed mode=(\S+) scope=blocks error=(.*)", text)
    assert failed, text[-3000:]
    assert failed[1] == env["LORAFARM_COMPILE"] and reason in failed[2]
    assert "event=worker_started" not in text and not listed(farm, name)
