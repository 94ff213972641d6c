"""Multi-base workers in the simulator: the same pools as before when nothing is shared, switch
costs from the product's tiering, and the verdicts the table prints about them."""

from __future__ import annotations

import pytest

from bench import fleets, goals, simulate
from bench.multibase import BASES, MultiBaseFarm, device_budgets, every_base, long_tail, move_s
from bench.policies import Costs, LorafarmPool, Product, Request, Run
from worker.tiers import ASSUMED_DISK_BYTES_S, ASSUMED_H2D_BYTES_S, Move

COSTS = Costs()
HORIZON = 3600.0


@pytest.fixture(scope="module")
def trace() -> list[Request]:
    return simulate.make_trace(3, 0.25, HORIZON, simulate.calibrate(2500, 0.25), 2500)


def farm(spec: list[list[int]], product: Product | None = None) -> MultiBaseFarm:
    product = product or Product.defaults()
    return MultiBaseFarm(spec, COSTS, product.rules(), product.backlog_age_s, device_budgets(product))


def test_with_one_pool_per_worker_it_is_the_single_base_simulation(trace: list[Request]) -> None:
    product = Product.defaults()
    runs = farm([[0], [0], [0], [1], [2], [3]]).serve(trace)
    for pool, k in enumerate([3, 1, 1, 1]):
        alone = LorafarmPool(k, COSTS, product.rules(), product.backlog_age_s).serve(simulate.by_pool(trace)[pool])
        assert runs[pool].latencies == alone.latencies
        assert runs[pool].swaps == alone.swaps and runs[pool].switches == 0


def test_a_long_tail_worker_switches_bases_and_pays_the_estimated_cost() -> None:
    # One request per small pool, far apart: each finds the worker idle, its base elsewhere.
    requests = [Request(i, 100.0 * i, lora=12 + i, pool=1 + i) for i in range(3)]
    runs = farm([[1, 2, 3]]).serve(requests)
    # Loaded last, SD 3.5 went to the device beside SD 1.5 and sent the SDXL fine-tune to host
    # memory; the fine-tune's request takes the device alone, and each later one switches.
    assert [runs[p].switches for p in (1, 2, 3)] == [1, 1, 1]
    sd15 = runs[2].latencies[0]
    # A warm switch from host memory, with the adapter's download going on meanwhile.
    warm = BASES[2][1] / ASSUMED_H2D_BYTES_S
    assert sd15 == pytest.approx(warm + COSTS.fetch_s - warm + COSTS.swap_s + COSTS.inference_s)
    assert min(min(r.latencies) for r in runs.values()) >= COSTS.inference_s


def test_moves_cost_bytes_over_the_assumed_rates() -> None:
    n = 10**9
    assert move_s(Move("b", "load_warm"), n) == n / ASSUMED_H2D_BYTES_S
    assert move_s(Move("b", "load_cold"), n) == n / ASSUMED_DISK_BYTES_S + n / ASSUMED_H2D_BYTES_S
    assert move_s(Move("b", "free_device"), n) == 0.0


def test_without_host_memory_for_copies_switches_go_cold_and_cost_more(trace: list[Request]) -> None:
    warm = farm(long_tail(3, 1, 4)).serve(trace)
    cold = farm(long_tail(3, 1, 4), Product.defaults({"base_host_bytes": "0"})).serve(trace)
    tail = [1, 2, 3]
    assert sum(cold[p].switches for p in tail) >= sum(warm[p].switches for p in tail) > 0
    assert sum(sum(cold[p].latencies) for p in tail) > sum(sum(warm[p].latencies) for p in tail)


def test_every_base_on_every_worker_serves_every_request(trace: list[Request]) -> None:
    runs = farm(every_base(4, 4)).serve(trace)
    assert sum(len(r.latencies) for r in runs.values()) == len(trace)
    assert sum(r.switches for r in runs.values()) > 0


def fleet_of(spec: list[list[int]], p95: float) -> fleets.MultiBaseFleet:
    return fleets.MultiBaseFleet(spec, {p: Run(latencies=[p95] * 20) for p in range(4)})


def test_the_multi_base_saving_verdict_flips_at_forty_percent() -> None:
    five, six = fleet_of(long_tail(4, 1, 4), 9.0), fleet_of(long_tail(5, 1, 4), 9.0)
    assert fleets.saving_verdict(five, [6, 1, 1, 1], "p95").met  # 5 vs 9: 44%
    assert not fleets.saving_verdict(six, [6, 1, 1, 1], "p95").met  # 6 vs 9: 33%
    assert not fleets.saving_verdict(None, [6, 1, 1, 1], "p95").met
    assert f"target ≥ {goals.MULTIBASE_GPU_SAVING:.0%}" in fleets.saving_verdict(five, [6, 1, 1, 1], "p95").line()
    assert five.describe() == "5 (4×[0] + 1×[1,2,3])"


def test_the_small_pools_verdict_reads_each_small_pool() -> None:
    fine = fleet_of(long_tail(4, 1, 4), COSTS.inference_s * 1.2)
    assert fleets.small_pools_verdict(fine, 1.5, COSTS.inference_s).met
    slow_pool = fleet_of(long_tail(4, 1, 4), COSTS.inference_s * 1.2)
    slow_pool.runs[3] = Run(latencies=[COSTS.inference_s * 1.6] * 20)
    verdict = fleets.small_pools_verdict(slow_pool, 1.5, COSTS.inference_s)
    assert not verdict.met and "SD 3.5 Medium 1.600×" in verdict.measured
    assert not fleets.small_pools_verdict(None, 1.5, COSTS.inference_s).met
