"""The Hub-scale simulator at a tiny scale: what a reader of its table would rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import simulate
from bench.simulate import (
    Costs,
    calibrate,
    dedicated,
    expected_distinct,
    fleet_run,
    make_trace,
    policies,
    zipf_weights,
)

COSTS = Costs()
HORIZON = 1800.0
FLEET = [3, 1, 1, 1]


@pytest.fixture(scope="module")
def trace() -> list[simulate.Request]:
    return make_trace(3, 0.25, HORIZON, calibrate(2500, 0.25), 2500)


def test_calibration_hits_ten_distinct_loras_per_two_minutes() -> None:
    s = calibrate(2500, 0.25)
    assert expected_distinct(zipf_weights(2500, s), 0.25, 120.0) == pytest.approx(10.0, abs=0.01)
    assert calibrate(2500, 1.0) > s  # a higher load needs more skew for the same distinct count


def test_every_request_completes_no_sooner_than_inference(trace: list[simulate.Request]) -> None:
    runs = {name: fleet_run(sim, trace, FLEET, HORIZON) for name, sim in policies(COSTS, 0).items()}
    runs["dedicated"] = dedicated(trace, COSTS)
    for name, run in runs.items():
        assert not run.saturated, name
        assert len(run.latencies) == len(trace), name
        assert min(run.latencies) >= COSTS.inference_s - 1e-9, name


def test_lorafarm_swaps_no_more_than_the_reference(trace: list[simulate.Request]) -> None:
    sims = policies(COSTS, 0)
    lorafarm = fleet_run(sims["lorafarm"], trace, FLEET, HORIZON)
    reference = fleet_run(sims["reference"], trace, FLEET, HORIZON)
    assert 0 < lorafarm.swaps <= reference.swaps
    assert lorafarm.pct(50) < reference.pct(50)


def test_a_cold_boot_costs_a_dedicated_deployment_its_boot_time(trace: list[simulate.Request]) -> None:
    run = dedicated(trace, COSTS)
    assert run.swaps >= len({r.lora for r in trace})  # every LoRA boots at least once
    assert max(run.latencies) >= COSTS.cold_boot_s + COSTS.inference_s
    assert run.gpu_s >= run.swaps * (COSTS.cold_boot_s + COSTS.idle_stop_s)


def test_same_seed_same_numbers() -> None:
    s = calibrate(2500, 0.25)
    a, b, c = (make_trace(seed, 0.25, 600.0, s, 2500) for seed in (5, 5, 6))
    assert a == b and a != c
    sim = policies(COSTS, 1)["reference"]
    assert fleet_run(sim, a, FLEET, 600.0).latencies == fleet_run(sim, b, FLEET, 600.0).latencies


def test_the_command_prints_its_table_and_draws_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "latency.png"
    assert simulate.main(["--quick", "--hours", "0.25", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| (c) lorafarm" in out and "command: python -m bench.simulate --quick" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
