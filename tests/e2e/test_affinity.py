"""Adapter affinity with two real workers: jobs follow their adapter, and a dead holder loses nothing."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lorafarm.farm import Farm, FarmConfig
from tests.polling import busy_workers, holders, wait_until

pytestmark = pytest.mark.slow

BODY = {"inputs": "an elephant", "parameters": {"num_inference_steps": 2, "seed": 3}}


@pytest.fixture(scope="module")
def pair(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(
        FarmConfig(
            state_dir=tmp_path_factory.mktemp("farm-affinity"),
            zoo_dir=zoo_dir,
            pools=["tiny/sdxl-base"],
            workers_per_pool=2,
            env={
                "LORAFARM_DEFAULT_STEPS": "2",
                "LORAFARM_HEARTBEAT_S": "0.3",
                "LORAFARM_WORKER_TTL_S": "2",
                "LORAFARM_LEASE_S": "3",
            },
        )
    )
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()


def post(farm: Farm, repo: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(f"{farm.router_url}/models/{repo}", json=body or BODY, timeout=120)


def test_repeated_requests_for_an_adapter_land_where_it_is(pair: Farm) -> None:
    first = post(pair, "tiny/sdxl-lora-a")
    assert first.status_code == 200, first.text
    holder = first.headers["x-worker-id"]
    # A heartbeat later, the router knows who holds it.
    wait_until(lambda: holders(pair, "tiny/sdxl-lora-a") == [holder], 10, what="the holder announced")
    for _ in range(4):
        again = post(pair, "tiny/sdxl-lora-a")
        assert again.headers["x-worker-id"] == holder
        assert again.headers["x-adapter-warm"] == "true"
        assert again.content == first.content


def test_killing_the_holder_mid_stream_loses_no_job(pair: Farm) -> None:
    first = post(pair, "tiny/sdxl-lora-b")
    assert first.status_code == 200, first.text
    holder = first.headers["x-worker-id"]
    wait_until(lambda: holders(pair, "tiny/sdxl-lora-b") == [holder], 10, what="the holder announced")
    body = {"inputs": "an elephant", "parameters": {"num_inference_steps": 30, "seed": 3}}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(post, pair, "tiny/sdxl-lora-b", body) for _ in range(6)]
        wait_until(lambda: holder in busy_workers(pair), 20, what="the holder running one of them")
        pair.kill(holder)
        answers = [f.result() for f in futures]
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers if r.status_code != 200]
    assert {r.headers["x-worker-id"] for r in answers} - {holder}, "the survivor served the rest"
    assert len({r.content for r in answers}) == 1
