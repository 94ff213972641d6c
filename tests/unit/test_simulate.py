"""The Hub-scale simulator at a tiny scale: what a reader of its table would rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import goals, simulate
from bench.policies import Costs, Product, Run, dedicated
from bench.simulate import (
    calibrate,
    expected_distinct,
    fleet_run,
    latency_verdict,
    make_trace,
    policies,
    saving_verdict,
    zipf_weights,
)
from router.settings import RouterSettings
from worker.settings import WorkerSettings

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
    verdicts = [line for line in out.splitlines() if ": met (" in line or ": NOT met (" in line]
    assert len(verdicts) == 4, out
    assert "| (d) lorafarm multi-base" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_latency_verdict_flips_with_the_figures() -> None:
    inference = COSTS.inference_s
    fast = Run(latencies=[inference * 1.01] * 100)
    assert latency_verdict(fast, [5, 1, 1, 1], inference).met
    slow_tail = Run(latencies=[inference * 1.01] * 90 + [inference * 1.2] * 10)  # p95 1.2x
    assert not latency_verdict(slow_tail, [5, 1, 1, 1], inference).met
    slow_middle = Run(latencies=[inference * 1.08] * 100)  # p95 fine, p50 1.08x
    assert not latency_verdict(slow_middle, [5, 1, 1, 1], inference).met
    assert not latency_verdict(None, None, inference).met
    assert "NOT met" in latency_verdict(slow_tail, [5, 1, 1, 1], inference).line()


def test_the_saving_verdict_flips_at_the_target() -> None:
    assert saving_verdict([3, 1, 1, 1], [6, 1, 1, 1], "p95").met  # 6 vs 9: 33%
    assert not saving_verdict([4, 1, 1, 1], [6, 1, 1, 1], "p95").met  # 7 vs 9: 22%
    assert not saving_verdict(None, [6, 1, 1, 1], "p95").met
    assert f"target ≥ {goals.GPU_SAVING:.0%}" in saving_verdict([3, 1, 1, 1], [6, 1, 1, 1], "p95").line()


def test_the_simulated_rules_are_the_settings_defaults_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORAFARM_AFFINITY_MAX_HOLDERS", "9")
    monkeypatch.setenv("LORAFARM_AFFINITY_MAX_WAIT_S", "30")
    monkeypatch.setenv("LORAFARM_REORDER_MAX_AGE_S", "99")
    product, fields = Product.defaults(), RouterSettings.model_fields
    rules = product.rules()
    assert rules.max_holders == fields["affinity_max_holders"].default
    assert rules.max_wait_s == fields["affinity_max_wait_s"].default
    assert (rules.max_queue, rules.damping_s) == (
        fields["affinity_max_queue"].default,
        fields["affinity_damping_s"].default,
    )
    assert product.backlog_age_s == WorkerSettings.model_fields["reorder_max_age_s"].default
    assert product.host_cache == WorkerSettings.model_fields["host_cache_bytes"].default // 23_400_000
    assert not product.rules(affinity=False).affinity


def test_a_what_if_setting_reaches_the_simulated_pool(trace: list[simulate.Request]) -> None:
    """Change a placement setting and the simulated lorafarm changes with it."""
    before = fleet_run(policies(COSTS, 0)["lorafarm"], trace, FLEET, HORIZON)
    patient = Product.defaults({"affinity_max_wait_s": "60", "affinity_max_queue": "10"})
    assert (patient.rules().max_wait_s, patient.rules().max_queue) == (60.0, 10)
    after = fleet_run(policies(COSTS, 0, patient)["lorafarm"], trace, FLEET, HORIZON)
    assert after.latencies != before.latencies
    with pytest.raises(ValueError, match="neither"):
        Product.defaults({"no_such_field": "1"})
