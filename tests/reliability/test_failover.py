"""Replicated Redis (a primary, a replica, 3 sentinels; jobs accepted once the replica holds them):
the primary SIGKILLed under steady load, with its disk kept or lost, and the replica down.

Its own farm (``FarmConfig(redis_ha=True)``, ``LORAFARM_REDIS_MIN_REPLICAS=1``). A killed server is
started again as a replica of the new primary, as its orchestrator would restart it. The worker TTL
(8 s) outlasts a failover, so workers that merely lost Redis for it are not taken for dead.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from common.connections import sync_client
from lorafarm.farm import Farm, FarmConfig
from tests.polling import wait_until
from tests.reliability.figures import Figures, Value
from tests.reliability.steady import SteadyLoad
from tests.reliability.tools import SDXL, assert_clean, assert_error, body, post, worker_logs

pytestmark = pytest.mark.slow

REDIS_PASSWORD = "failover-only-5c1e"
#: The longest a sync request waits for its image (LORAFARM_REQUEST_TIMEOUT_S).
WAIT_BOUND_S = 30
ENV = {
    "LORAFARM_DEFAULT_STEPS": "2",
    "LORAFARM_HEARTBEAT_S": "0.3",
    "LORAFARM_WORKER_TTL_S": "8",
    "LORAFARM_REDIS_REPLICA_TIMEOUT_MS": "500",
    "LORAFARM_LOG_LEVEL": "INFO",
}
WORKER_ENV = {"LORAFARM_LEASE_S": "2", "LORAFARM_BLOCK_MS": "200"}
# A bound the steady load stays under (it is not what is tested here).
ROUTER_ENV = {"LORAFARM_QUEUE_MAX": "64", "LORAFARM_REQUEST_TIMEOUT_S": str(WAIT_BOUND_S)}


@pytest.fixture(scope="module")
def ha_farm(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(
        FarmConfig(
            state_dir=tmp_path_factory.mktemp("failover"),
            zoo_dir=zoo_dir,
            pools=[SDXL],
            workers_per_pool=2,
            env=ENV,
            worker_env=WORKER_ENV,
            router_env=ROUTER_ENV,
            redis_password=REDIS_PASSWORD,
            redis_ha=True,
            redis_min_replicas=1,
        )
    )
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()


@dataclass(frozen=True)
class Failover:
    """Monotonic times of one failover: the kill, the new primary named, the old one back in sync."""

    old: str
    new: str
    killed: float
    promoted: float
    rejoined: float


def fail_over(farm: Farm, *, lose_disk: bool = False) -> Failover:
    """SIGKILL the primary (and delete its data folder); once the sentinels name a new one, start the
    old server again, as a replica of the new primary."""
    replicated = farm.replicated
    assert replicated is not None
    old = replicated.primary()
    farm.kill(old)
    killed = time.monotonic()
    if lose_disk:
        shutil.rmtree(replicated.data_dir(old))

    def promoted() -> str | None:
        try:
            now = replicated.primary()
        except RuntimeError:
            return None
        return now if now != old else None

    new = wait_until(promoted, 30, interval=0.02, what="the sentinels name a new primary")
    named = time.monotonic()
    farm.restart(old)
    replicated.wait_replicated()
    return Failover(old, new, killed, named, time.monotonic())


def redis_client(farm: Farm) -> redis.Redis:
    """The current primary, found through the sentinels as the services find it."""
    return sync_client(farm.redis_target())


def job_done_counts(farm: Farm, job_ids: list[str]) -> dict[str, int]:
    """How often each job was generated, over every worker's log."""
    logs = "\n".join(worker_logs(farm).values())
    return {job_id: len(re.findall(rf"event=job_done job={job_id} ", logs)) for job_id in job_ids}


def assert_each_accepted_job_yields_one_result(farm: Farm, load: SteadyLoad) -> list[str]:
    """Every sync request answered with an image and every 202 job is done, each generated exactly once."""
    for answer in load.accepted("async"):
        url = f"{farm.router_url}/jobs/{answer.job_id}"

        def over(url: str = url) -> str | None:
            state = httpx.get(url, timeout=10).json().get("status")
            return state if state in ("done", "failed", "cancelled") else None

        assert wait_until(over, 60, interval=0.2, what=f"job {answer.job_id} over") == "done"
        assert httpx.get(f"{url}/result", timeout=10).status_code == 200
    ids = [a.job_id or "" for a in load.accepted("sync") + load.accepted("async")]
    counts = job_done_counts(farm, ids)
    assert set(counts.values()) == {1}, {job_id: n for job_id, n in counts.items() if n != 1}
    return ids


def assert_clear_answers(load: SteadyLoad) -> None:
    """Every answer an image, a 202, or a 503 ``redis_unavailable`` with ``Retry-After``; none past the bound."""
    outcomes = load.outcomes()
    assert set(outcomes) <= {"200", "202", "503 redis_unavailable"}, outcomes
    assert all(int(a.retry_after or 0) >= 1 for a in load.answers if a.status == 503)
    slowest = max(a.answered - a.sent for a in load.answers)
    assert slowest < WAIT_BOUND_S + 5, slowest


def run_failover(farm: Farm, *, lose_disk: bool) -> tuple[SteadyLoad, Failover]:
    # Light enough for two tiny workers on a busy 2-core machine: about one job a second.
    with SteadyLoad(farm, sync_clients=1, async_every_s=1.0, steps=2, timeout_s=WAIT_BOUND_S + 30) as load:
        wait_until(lambda: len(load.accepted("async")) >= 2 and len(load.accepted("sync")) >= 2, 60, what="load")
        failover = fail_over(farm, lose_disk=lose_disk)
        wait_until(
            lambda: any(a.sent > failover.killed for a in load.accepted("async")), 60, what="a job accepted again"
        )
        time.sleep(2)  # the load goes on for a while on the new primary
    return load, failover


def measured(load: SteadyLoad, failover: Failover) -> dict[str, Value]:
    """Seconds from the kill to the new primary, to the old one back in sync, to the first job accepted."""
    first = min(a.answered for a in load.accepted("async") if a.sent > failover.killed)
    outcomes = load.outcomes()
    return {
        "promoted_s": round(failover.promoted - failover.killed, 2),
        "rejoined_s": round(failover.rejoined - failover.killed, 2),
        "first_accepted_s": round(first - failover.killed, 2),
        "answers": ", ".join(f"{n} x {outcome}" for outcome, n in sorted(outcomes.items())),
    }


@pytest.mark.timeout(300)
def test_primary_killed_under_load(ha_farm: Farm, figures: Figures) -> None:
    farm = ha_farm
    load, failover = run_failover(farm, lose_disk=False)
    assert failover.new != failover.old
    assert_clear_answers(load)
    assert load.outcomes()["503 redis_unavailable"] >= 1  # the failover was seen, and answered clearly
    ids = assert_each_accepted_job_yields_one_result(farm, load)
    farm.check_alive()  # router and workers never exited
    assert all(farm.procs[name].poll() is None for name in ("router", "worker-1", "worker-2"))
    wait_until(lambda: httpx.get(f"{farm.router_url}/ready", timeout=5).status_code == 200, 30, what="/ready 200")
    assert_clean(redis_client(farm), timeout=30)
    figures(**measured(load, failover), accepted_jobs=len(ids))


@pytest.mark.timeout(300)
def test_primary_killed_with_its_disk_lost(ha_farm: Farm, figures: Figures) -> None:
    """The old primary's data folder is deleted before it comes back: nothing accepted is lost, and
    once it rejoins (empty, then copied from the new primary) no job runs twice."""
    farm = ha_farm
    load, failover = run_failover(farm, lose_disk=True)
    assert_clear_answers(load)
    ids = assert_each_accepted_job_yields_one_result(farm, load)
    replicated = farm.replicated
    assert replicated is not None and replicated.primary() == failover.new
    info = replicated._client(replicated.ports[failover.old]).info("replication")
    assert (info["role"], info["master_link_status"]) == ("slave", "up")
    time.sleep(2)  # anything the rejoined server could replay would run by now
    assert set(job_done_counts(farm, ids).values()) == {1}
    assert_clean(redis_client(farm), timeout=30)
    figures(**measured(load, failover), accepted_jobs=len(ids))


@pytest.mark.timeout(120)
def test_with_the_replica_down_new_jobs_are_refused_not_accepted_unreplicated(ha_farm: Farm, figures: Figures) -> None:
    farm = ha_farm
    replicated = farm.replicated
    assert replicated is not None
    client = redis_client(farm)
    assert_clean(client, timeout=30)
    replica = next(name for name in replicated.nodes if name != replicated.primary())
    farm.kill(replica)
    start = time.monotonic()
    refused = post(farm, SDXL, body(seed=901), timeout=20)
    waited = time.monotonic() - start
    assert_error(refused, 503, "redis_unavailable")
    assert_error(
        httpx.post(f"{farm.router_url}/jobs", json=body(seed=902) | {"model": SDXL}, timeout=20),
        503,
        "redis_unavailable",
    )
    assert waited >= 0.5  # the WAIT's timeout (LORAFARM_REDIS_REPLICA_TIMEOUT_MS)
    assert_clean(client)  # withdrawn: nothing left on the streams
    farm.restart(replica)
    replicated.wait_replicated()
    assert post(farm, SDXL, body(seed=903)).status_code == 200
    figures(refused_after_s=round(waited, 2))
