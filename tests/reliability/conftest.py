"""One farm for the whole reliability suite: redis-server (password, append-only), devhub, router, two workers.

The settings are short so that faults heal within seconds: a worker is dead 3 s after its last
heartbeat, a claimed job is reclaimed after a 2 s lease, Hub metadata is stale after 1 s. Tests that
need other router settings restart the router (``restarted_router``) and put it back. Each test
kills or stops only processes of this farm, by name (Farm keeps their pids), and tests that need
N workers ask for them (``farm_with``): a worker killed by one test is replaced by the next that
needs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lorafarm.farm import Farm, FarmConfig
from tests.polling import live_workers, wait_until
from tests.reliability.figures import Figures, Value, record
from tests.reliability.tools import SDXL, running_workers

#: A test-only Redis password: every service of the farm reaches Redis with it in its URL.
REDIS_PASSWORD = "reliability-only-7f3a"

ENV = {
    "LORAFARM_DEFAULT_STEPS": "2",
    "LORAFARM_HEARTBEAT_S": "0.3",
    "LORAFARM_WORKER_TTL_S": "3",
    "LORAFARM_LOG_LEVEL": "INFO",
}
WORKER_ENV = {
    "LORAFARM_LEASE_S": "2",
    "LORAFARM_BLOCK_MS": "200",
    # No parsed adapter is kept in host memory: every swap reads the adapter from the disk cache,
    # which is what the Hub-outage test has to prove works without the Hub.
    "LORAFARM_HOST_CACHE_BYTES": "0",
}
ROUTER_ENV = {
    "LORAFARM_QUEUE_MAX": "8",
    "LORAFARM_REQUEST_TIMEOUT_S": "60",
    "LORAFARM_METADATA_TTL_S": "1",
    "LORAFARM_HUB_TIMEOUT_S": "1",
    # tiny/sdxl-lora-huge (4.5 MB) is over this cap; every other zoo LoRA is under it.
    "LORAFARM_MAX_ADAPTER_BYTES": str(2**20),
    "LORAFARM_SHUTDOWN_GRACE_S": "30",
}


@pytest.fixture(scope="package")
def farm(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    state = tmp_path_factory.mktemp("reliability")
    env = ENV | {"LORAFARM_PICKLE_CANARY": str(state / "pickle-canary")}
    farm = Farm(
        FarmConfig(
            state_dir=state,
            zoo_dir=zoo_dir,
            pools=[SDXL],
            workers_per_pool=2,
            env=env,
            worker_env=dict(WORKER_ENV),
            router_env=dict(ROUTER_ENV),
            redis_password=REDIS_PASSWORD,
        )
    )
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """``figures(recovered_s=...)`` records what this test measured, for ``make reliability-report``."""

    def add(**values: Value) -> None:
        record(request.node.nodeid, values)

    return add


@pytest.fixture
def canary(farm: Farm) -> Path:
    """The file the zoo's pickle writes if anything ever unpickles it."""
    return Path(farm.config.env["LORAFARM_PICKLE_CANARY"])


def farm_with(farm: Farm, workers: int) -> Farm:
    """The farm with at least ``workers`` live, ready workers (starting replacements as needed)."""
    running = running_workers(farm)
    for _ in range(workers - len(running)):
        running.append(farm.start_worker(SDXL))

    def all_ready() -> bool:
        farm.check_alive()
        ready = {w["worker_id"] for w in live_workers(farm) if w["status"] in ("ready", "busy")}
        return set(running) <= ready

    wait_until(all_ready, 120, what=f"{workers} ready workers")
    return farm


@pytest.fixture
def one_worker(farm: Farm) -> Farm:
    return farm_with(farm, 1)


@pytest.fixture
def two_workers(farm: Farm) -> Farm:
    return farm_with(farm, 2)


@contextmanager
def restarted_router(farm: Farm, env: dict[str, str]) -> Iterator[Farm]:
    """Run the block against a router restarted with ``env`` added; the usual router comes back after."""
    saved = dict(farm.config.router_env)
    farm.terminate("router")
    farm.config.router_env = saved | env
    farm.start_router()
    try:
        yield farm
    finally:
        if farm.procs["router"].poll() is None:
            farm.terminate("router")
        farm.config.router_env = saved
        farm.start_router()
