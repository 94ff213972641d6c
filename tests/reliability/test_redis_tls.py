"""Redis over TLS (``rediss://``): the whole farm reaches it verified, and nothing reaches it in clear."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from lorafarm.farm import Farm, FarmConfig
from tests.reliability.conftest import ENV, REDIS_PASSWORD
from tests.reliability.tools import SDXL, body, post

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_farm(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(
        FarmConfig(
            state_dir=tmp_path_factory.mktemp("redis-tls"),
            zoo_dir=zoo_dir,
            pools=[SDXL],
            env=dict(ENV),
            redis_password=REDIS_PASSWORD,
            redis_tls=True,
        )
    )
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()


@pytest.mark.timeout(120)
def test_router_and_worker_serve_through_a_tls_redis(tls_farm: Farm) -> None:
    assert tls_farm.redis_url.startswith("rediss://")
    assert httpx.get(f"{tls_farm.router_url}/ready", timeout=10).status_code == 200
    base = post(tls_farm, SDXL, body(seed=3))
    lora = post(tls_farm, "tiny/sdxl-lora-a", body(seed=3))
    assert base.status_code == lora.status_code == 200, (base.text, lora.text)
    assert base.content != lora.content
    job = httpx.post(f"{tls_farm.router_url}/jobs", json={"model": SDXL, **body(seed=4)}, timeout=10)
    assert job.status_code == 202, job.text


def test_the_tls_port_refuses_clear_text_and_unverified_certificates(tls_farm: Farm) -> None:
    port = tls_farm.redis_port
    clear = redis.Redis(host="127.0.0.1", port=port, password=REDIS_PASSWORD, socket_timeout=3)
    with pytest.raises(redis.ConnectionError):
        clear.ping()
    unverified = redis.Redis.from_url(f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}/0", socket_timeout=3)
    with pytest.raises(redis.ConnectionError, match=r"(?i)certificate"):
        unverified.ping()
    verified = redis.Redis.from_url(tls_farm.redis_url, socket_timeout=3)
    assert verified.ping()
