"""Tenants on real processes: keys made and revoked with ``lorafarm keys``, two routers on one Redis.

- A key that bursts at ten times its rate gets ``429`` naming the limit, with ``Retry-After``, on
  both routers together no more than its one bucket allows; another key's requests meanwhile are
  all admitted and served, and their wait is measured.
- A key that queued 30 jobs does not delay another key's one job behind them: it starts within
  the fair-share bound (``common/shares.py``).
- A revoked key is refused by both routers within the key cache's lifetime.

Each test records what it measured (the ``figures`` fixture) for ``make reliability-report``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from common import keys
from common.schemas import JobStatus
from lorafarm.farm import REPO_ROOT, Farm
from tests.reliability.conftest import farm_with, restarted_router
from tests.reliability.figures import Figures
from tests.reliability.tools import SDXL, assert_clean, assert_error, body, log, redis_client

pytestmark = pytest.mark.slow

#: Both routers: the key ring on, a revoked key trusted 2 s at most, room in the pool for 30 jobs of a key.
ENV = {"LORAFARM_TENANT_KEYS": "true", "LORAFARM_KEY_CACHE_S": "2", "LORAFARM_QUEUE_MAX": "64"}
#: Jobs one key may have on the pool's streams per worker (the default), so 4 with the farm's two.
SHARE_PER_WORKER = 2
#: Steps of the fairness test's jobs: long enough that 30 of them queue for several seconds.
STEPS = 6


@pytest.fixture(scope="module")
def routers(farm: Farm) -> Iterator[list[str]]:
    """The farm's two workers, its router restarted with the key ring and a second router beside it; their URLs.

    The workers are made ready first: with the key ring on, ``/status`` (which the farm's
    readiness checks read) wants a key.
    """
    farm_with(farm, 2)
    with restarted_router(farm, ENV):
        second = farm.start_router("router-2", ENV)
        try:
            yield [farm.router_url, second]
        finally:
            farm.terminate("router-2")


def lorafarm_keys(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    """``lorafarm keys ...`` as an operator runs it, against the farm's Redis."""
    env = farm.base_env()
    argv = [sys.executable, "-m", "lorafarm.cli", "keys", *args]
    return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=True)


def new_key(farm: Farm, prefix: str, *limits: str) -> tuple[str, str]:
    """A tenant of this run (its name unique: the farm's Redis outlives a test) and its key."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    key = lorafarm_keys(farm, "add", name, *limits).stdout.strip()
    return name, key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.timeout(120)
def test_a_key_bursting_ten_times_its_rate_is_refused_on_both_routers_and_another_key_is_served(
    farm: Farm, routers: list[str], figures: Figures
) -> None:
    """The burst goes through the job API, so each answer comes as soon as the router decided it."""
    rate, burst, seconds = 1.0, 2, 6.0
    burster, burst_key = new_key(farm, "burst", "--rate", "1", "--burst", str(burst), "--concurrency", "4")
    _steady, steady_key = new_key(farm, "steady", "--rate", "1", "--burst", "2", "--concurrency", "4")
    bursts: list[tuple[int, float, httpx.Response]] = []
    steady: list[tuple[float, httpx.Response]] = []
    started = time.monotonic()

    def burst_at(i: int) -> None:
        url = f"{routers[i % 2]}/jobs"
        resp = httpx.post(url, json=body(steps=4, seed=i), headers=bearer(burst_key), timeout=60)
        bursts.append((i % 2, time.monotonic() - started, resp))

    def steady_client() -> None:
        for i in range(int(seconds / 1.5)):  # one request every 1.5 s: within its rate of 1/s
            start = time.monotonic()
            url = f"{routers[i % 2]}/models/{SDXL}"
            resp = httpx.post(url, json=body(steps=4, seed=i), headers=bearer(steady_key), timeout=60)
            steady.append((time.monotonic() - start, resp))
            time.sleep(max(0.0, 1.5 - (time.monotonic() - start)))

    client = threading.Thread(target=steady_client)
    client.start()
    with ThreadPoolExecutor(32) as pool:
        for i in range(int(seconds * rate * 10)):  # ten times the rate, alternating routers
            pool.submit(burst_at, i)
            time.sleep(max(0.0, started + (i + 1) / (rate * 10) - time.monotonic()))
    client.join()

    answers = [r for _, _, r in bursts]
    refused = [r for r in answers if r.status_code != 202]
    for resp in refused:
        answer = assert_error(resp, 429, resp.json().get("error_type", "?"))
        assert answer["error_type"] in ("rate_limited", "concurrency_limited"), answer
        assert burster in answer["error"]
    limited = [r for r in refused if r.json()["error_type"] == "rate_limited"]
    assert limited and all(r.headers["x-ratelimit-remaining"] == "0" for r in limited)
    assert {router for router, _, r in bursts if r in limited} == {0, 1}  # both routers refuse
    # One bucket for both routers: what passed the rate (enqueued, or refused after it for its
    # concurrency) is what the bucket held plus what it refilled until the last answer, one token
    # of slack. A bucket per router would have let about twice as many through.
    span = max(t for _, t, _ in bursts)
    passed = len(answers) - len(limited)
    assert passed <= burst + rate * span + 1, (passed, span)
    assert [r.status_code for _, r in steady] == [200] * len(steady), [r.text for _, r in steady]
    assert_clean(redis_client(farm), timeout=60)
    waits = [w for w, _ in steady]
    job_s = statistics.median(float(r.headers["x-compute-time"]) for _, r in steady)
    figures(
        burst_sent=len(answers),
        burst_span_s=round(span, 1),
        burst_passed_rate=passed,
        burst_bound=round(burst + rate * span + 1, 1),
        burst_enqueued=len(answers) - len(refused),
        burst_rate_limited=len(limited),
        burst_concurrency_limited=len(refused) - len(limited),
        other_served=f"{len(steady)}/{len(steady)}",
        other_wait_median_s=round(statistics.median(waits), 2),
        other_wait_max_s=round(max(waits), 2),
        other_waits_s=" ".join(f"{w:.2f}" for w in waits),
        job_compute_median_s=round(job_s, 2),
    )


@pytest.mark.timeout(240)
def test_a_key_with_30_jobs_queued_does_not_delay_another_keys_job(
    farm: Farm, routers: list[str], figures: Figures
) -> None:
    client = redis_client(farm)
    _a, a_key = new_key(farm, "deep")
    _b, b_key = new_key(farm, "light")
    with httpx.Client(timeout=30) as http:
        a_jobs = [
            http.post(f"{routers[i % 2]}/jobs", json=body(steps=STEPS, seed=i), headers=bearer(a_key))
            for i in range(30)
        ]
        assert [r.status_code for r in a_jobs] == [202] * 30, a_jobs[-1].text
        a_ids = [r.json()["id"] for r in a_jobs]
        b_job = http.post(f"{routers[1]}/jobs", json=body(steps=STEPS, seed=99), headers=bearer(b_key))
    submitted = time.monotonic()
    assert b_job.status_code == 202, b_job.text
    b_id = b_job.json()["id"]

    def started(ids: list[str]) -> int:
        raws: Any = client.mget([keys.job_status(i) for i in ids])
        return sum(1 for raw in raws if raw and JobStatus.model_validate_json(raw).state != "queued")

    a_before = started(a_ids)
    while started([b_id]) == 0:
        assert time.monotonic() - submitted < 60, "b's job never started"
        time.sleep(0.02)
    waited = time.monotonic() - submitted
    a_meanwhile = started(a_ids) - a_before
    share = SHARE_PER_WORKER * 2
    # Ahead of b: a's share on the streams at most, and one more per worker started as b is claimed.
    assert a_meanwhile <= share + 2, a_meanwhile
    assert a_before + a_meanwhile < 30  # not after a's 30
    deadline = time.monotonic() + 150
    while started(a_ids) < 30 or client.xlen(keys.pool_parked(SDXL)):
        parked = client.xlen(keys.pool_parked(SDXL))
        assert time.monotonic() < deadline, f"{started(a_ids)} of a's jobs ran, {parked} parked"
        time.sleep(0.2)
    a_done_s = time.monotonic() - submitted
    assert_clean(client, timeout=60)
    figures(
        a_started_before_b_was_queued=a_before,
        a_started_while_b_waited=a_meanwhile,
        bound_jobs=share + 2,
        b_wait_s=round(waited, 2),
        a_all_started_s=round(a_done_s, 1),
    )


@pytest.mark.timeout(60)
def test_a_revoked_key_is_refused_by_both_routers_within_the_key_cache(
    farm: Farm, routers: list[str], figures: Figures
) -> None:
    name, key = new_key(farm, "revoked")
    listed = lorafarm_keys(farm, "list").stdout
    assert name in listed and key not in listed
    for url in routers:
        assert httpx.post(f"{url}/models/{SDXL}", json=body(), headers=bearer(key), timeout=60).status_code == 200
    lorafarm_keys(farm, "revoke", name)
    revoked = time.monotonic()
    refused: dict[str, float] = {}
    while len(refused) < len(routers):
        assert time.monotonic() - revoked < 10, f"still accepted after 10 s by {set(routers) - set(refused)}"
        for url in routers:
            if url not in refused:
                resp = httpx.get(f"{url}/status", headers=bearer(key), timeout=10)
                if resp.status_code == 401:
                    assert_error(resp, 401, "unauthorized")
                    refused[url] = time.monotonic() - revoked
        time.sleep(0.05)
    assert max(refused.values()) < float(ENV["LORAFARM_KEY_CACHE_S"]) + 1
    # Keys are secrets: the routers log the tenant's name, never the key.
    for router in ("router", "router-2"):
        text = log(farm, router)
        assert key not in text
        assert f"tenant={name}" in text
    figures(refused_by_both_after_s=round(max(refused.values()), 2), key_cache_s=float(ENV["LORAFARM_KEY_CACHE_S"]))
