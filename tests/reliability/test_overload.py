"""Overload: a bounded queue answers 429 with Retry-After; the router's memory stays bounded; /health stays fast."""

from __future__ import annotations

import gc
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from lorafarm.farm import Farm
from tests.reliability.figures import Figures
from tests.reliability.tools import (
    SDXL,
    RssSampler,
    assert_clean,
    assert_error,
    body,
    burst_summary,
    post,
    redis_client,
    rss_mb,
    running_workers,
    start_burst,
)

pytestmark = pytest.mark.slow

QUEUE_MAX = 8  # the farm's LORAFARM_QUEUE_MAX
#: Growth of the router's resident memory allowed under a burst of 1,000 requests.
RSS_GROWTH_MB = 40.0
HEALTH_BOUND_S = 0.050
HICCUP_BOUND_S = 0.250


@pytest.mark.timeout(120)
def test_past_the_queue_bound_429_with_retry_after(one_worker: Farm) -> None:
    farm = one_worker
    with ThreadPoolExecutor(QUEUE_MAX + 6) as pool:
        answers = list(pool.map(lambda i: post(farm, SDXL, body(steps=12, seed=i)), range(QUEUE_MAX + 6)))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= QUEUE_MAX
    for answer in answers:
        if answer.status_code == 429:
            error = assert_error(answer, 429, "queue_full")
            assert str(QUEUE_MAX) in error["error"]
    assert_clean(redis_client(farm))


@pytest.mark.timeout(180)
def test_a_burst_of_1000_requests_keeps_router_memory_bounded(one_worker: Farm, figures: Figures) -> None:
    farm = one_worker
    pid = farm.procs["router"].pid
    # Warm the router up first (imports, pools, caches), so the baseline is its steady state.
    for seed in range(3):
        assert post(farm, SDXL, body(seed=seed)).status_code == 200
    baseline = rss_mb(pid)
    with RssSampler(pid) as rss:
        proc = start_burst(f"{farm.router_url}/models/{SDXL}", 1000, 100, body())
        summary = burst_summary(proc, timeout=150)
    print(f"rss baseline={baseline:.1f}MB peak={rss.peak:.1f}MB after={rss_mb(pid):.1f}MB burst={summary}")
    assert summary["transport_errors"] == 0, summary
    assert set(summary["statuses"]) <= {"200", "429"}, summary
    assert sum(summary["statuses"].values()) == 1000
    assert summary["statuses"].get("429", 0) > 0
    assert summary["no_retry_after"] == 0
    assert rss.peak - baseline < RSS_GROWTH_MB
    assert farm.procs["router"].poll() is None
    assert_clean(redis_client(farm), timeout=30)
    figures(
        answered_200=summary["statuses"].get("200", 0),
        answered_429=summary["statuses"].get("429", 0),
        router_rss_before_mb=round(baseline, 1),
        router_rss_peak_mb=round(rss.peak, 1),
    )


@pytest.mark.timeout(180)
def test_health_answers_within_50ms_while_the_pool_is_saturated(two_workers: Farm, figures: Figures) -> None:
    """The router's event loop never waits on model or Redis work: /health stays fast under a burst.

    On this 2-core machine the two workers and the load generator would take the router's CPU
    away from it (in production they have machines of their own), so they run at nice 10 here;
    the router, the process under test, keeps its normal priority.
    """
    farm = two_workers
    workers = [farm.procs[name].pid for name in running_workers(farm)]
    probes: list[float] = []
    for pid in workers:
        os.setpriority(os.PRIO_PROCESS, pid, 10)
    gc.disable()  # no pause of this process's own collector inside a probe
    try:
        proc = start_burst(f"{farm.router_url}/models/{SDXL}", 300, 32, body(steps=6), nice=10)
        with httpx.Client(base_url=farm.router_url, timeout=5) as client:
            client.get("/health")  # connection made before timing
            while proc.poll() is None:
                start = time.perf_counter()
                resp = client.get("/health")
                probes.append(time.perf_counter() - start)
                assert resp.status_code == 200
                time.sleep(0.01)
        summary = burst_summary(proc)
    finally:
        gc.enable()
        for pid in workers:
            os.setpriority(os.PRIO_PROCESS, pid, 0)
    print(
        f"health probes={len(probes)} median={statistics.median(probes) * 1000:.1f}ms "
        f"p99={statistics.quantiles(probes, n=100)[98] * 1000:.1f}ms max={max(probes) * 1000:.1f}ms burst={summary}"
    )
    # Saturated indeed: the queue was full and turned requests away while we probed.
    assert summary["statuses"].get("429", 0) > 0
    assert len(probes) >= 100
    # Every probe but a scheduling hiccup of this shared VM (at most 1 in 100) within the bound, and
    # none near what a loop blocked by model work would show (one 6-step job is about 0.4 s).
    assert statistics.quantiles(probes, n=100)[98] < HEALTH_BOUND_S
    assert max(probes) < HICCUP_BOUND_S
    figures(
        probes=len(probes),
        median_ms=round(statistics.median(probes) * 1000, 1),
        p99_ms=round(statistics.quantiles(probes, n=100)[98] * 1000, 1),
        slowest_ms=round(max(probes) * 1000, 1),
    )


@pytest.mark.timeout(120)
def test_no_admitted_job_starves_under_steady_load(two_workers: Farm, figures: Figures) -> None:
    """Jobs spilled to the shared stream are served in their turn, not after every job placed later."""
    farm = two_workers
    proc = start_burst(f"{farm.router_url}/models/{SDXL}", 100, 4, body())
    summary = burst_summary(proc)
    print(f"steady burst={summary}")
    assert summary["statuses"] == {"200": 100}
    # About 0.3 s a job, two workers, four clients: a fair queue answers each in about a second.
    assert summary["slowest_s"] < 8
    figures(slowest_s=summary["slowest_s"])
