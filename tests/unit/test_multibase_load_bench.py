"""The two-pool load benchmark's pure parts: the mixed trace it replays and its per-pool figures."""

from __future__ import annotations

import argparse

import pytest

from bench.load import Sample
from bench.multibase_load import mixed_trace, per_pool

SDXL, SD15 = "tiny/sdxl-base", "tiny/sd15-base"
POOLS = {SDXL: [f"tiny/sdxl-lora-{i:03d}" for i in range(10)], SD15: [f"tiny/sd15-lora-{i:03d}" for i in range(10)]}


def args(**over: float) -> argparse.Namespace:
    return argparse.Namespace(**{"seed": 0, "rate": 3.0, "zipf": 1.1, **over})


def test_the_trace_splits_by_the_tail_share_and_arrives_in_order() -> None:
    trace = mixed_trace(2000, POOLS, {SDXL: 0.8, SD15: 0.2}, args())
    times = [t for t, _ in trace]
    assert times == sorted(times) and times[0] > 0
    tail = sum(repo.startswith("tiny/sd15-lora-") for _, repo in trace) / len(trace)
    assert 0.17 < tail < 0.23
    assert 2000 / times[-1] == pytest.approx(3.0, rel=0.1)  # Poisson at --rate
    assert mixed_trace(50, POOLS, {SDXL: 0.8, SD15: 0.2}, args()) == trace[:50]  # seeded


def test_figures_are_per_pool_and_count_base_switches_from_the_header() -> None:
    samples = [
        Sample(at=0.0, latency=0.2, status=200, swapped=False, swap_s=0.0, repo="tiny/sdxl-lora-001"),
        Sample(at=0.0, latency=0.4, status=200, swapped=True, swap_s=0.01, repo="tiny/sdxl-lora-002"),
        Sample(
            at=0.0, latency=0.9, status=200, swapped=True, swap_s=0.01, repo="tiny/sd15-lora-001", base_switch="warm"
        ),
        Sample(at=0.0, latency=0.3, status=200, swapped=False, swap_s=0.0, repo="tiny/sd15-lora-001"),
        Sample(at=0.0, latency=5.0, status=504, swapped=False, swap_s=0.0, repo="tiny/sd15-lora-002"),
    ]
    out = per_pool(samples, {SDXL: "tiny/sdxl-lora-", SD15: "tiny/sd15-lora-"})
    assert out[SDXL]["requests"] == 2 and out[SDXL]["failed"] == 0
    assert out[SDXL]["switches_per_100"] == 0 and out[SDXL]["swaps_per_100"] == 50
    assert out[SD15]["requests"] == 3 and out[SD15]["failed"] == 1
    assert out[SD15]["switches_per_100"] == 50  # of the 2 that succeeded
    assert out[SD15]["p95"] <= 0.9  # the failed request's 5 s is not a latency
