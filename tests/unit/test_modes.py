"""choose_mode: fused or unfused from measured costs and expected reuse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.modes import CostTracker, SwapCosts, choose_mode, expected_jobs

# Roughly this CPU on the SDXL-shaped UNet: fused 0.35 s, unfused swap 10 ms, +40 ms per step.
CPU = SwapCosts(fused_apply_s=0.35, restore_s=0.2, unfused_swap_s=0.01, unfused_step_s=0.04)


def test_no_measurements_yet_means_fused() -> None:
    assert choose_mode(None, jobs=1, steps=2).mode == "fused"


def test_a_one_off_adapter_with_few_steps_goes_unfused() -> None:
    choice = choose_mode(CPU, jobs=1, steps=2)
    assert choice.mode == "unfused"
    assert choice.unfused_s == pytest.approx(0.01 + 2 * 0.04)
    assert choice.fused_s == pytest.approx(0.35)


def test_a_hot_adapter_stays_fused() -> None:
    assert choose_mode(CPU, jobs=10, steps=25).mode == "fused"


def test_leaving_fused_weights_costs_a_restore() -> None:
    costs = SwapCosts(fused_apply_s=0.3, restore_s=0.25, unfused_swap_s=0.01, unfused_step_s=0.0)
    assert choose_mode(costs, jobs=1, steps=25).mode == "unfused"
    assert choose_mode(costs, jobs=1, steps=25, fused_now=True).mode == "fused"


def test_unfused_must_win_by_the_margin() -> None:
    costs = SwapCosts(fused_apply_s=1.0, restore_s=0.0, unfused_swap_s=0.85, unfused_step_s=0.0)
    assert choose_mode(costs, jobs=1, steps=1, margin=0.2).mode == "fused"
    assert choose_mode(costs, jobs=1, steps=1, margin=0.1).mode == "unfused"


def test_zero_expected_jobs_still_counts_the_job_at_hand() -> None:
    assert choose_mode(CPU, jobs=0, steps=25) == choose_mode(CPU, jobs=1, steps=25)


@settings(max_examples=200, derandomize=True)
@given(
    costs=st.builds(SwapCosts, *[st.floats(0, 10, allow_nan=False)] * 4),
    jobs=st.integers(1, 50),
    steps=st.integers(1, 60),
)
def test_more_reuse_never_turns_fused_into_unfused(costs: SwapCosts, jobs: int, steps: int) -> None:
    if choose_mode(costs, jobs=jobs, steps=steps).mode == "fused":
        assert choose_mode(costs, jobs=jobs + 1, steps=steps).mode == "fused"


def test_expected_jobs_counts_the_run_of_the_same_set() -> None:
    assert expected_jobs("a", []) == 1
    assert expected_jobs("a+b", ["a+b", "a+b", "c", "a+b"]) == 3
    assert expected_jobs(None, [None, "a"]) == 2
    assert expected_jobs("a", ["a*0.5"]) == 1  # the same adapter at another strength is another set


def test_tracker_needs_every_cost_then_averages() -> None:
    tracker = CostTracker(weight=0.5)
    tracker.observe("fused_apply_s", 1.0)
    assert tracker.costs() is None
    for kind in ("restore_s", "unfused_swap_s", "unfused_step_s"):
        tracker.observe(kind, 0.1)
    tracker.observe("fused_apply_s", 0.5)
    costs = tracker.costs()
    assert costs is not None and costs.fused_apply_s == pytest.approx(0.75)


def test_tracker_refuses_unknown_or_negative_costs() -> None:
    with pytest.raises(ValueError):
        CostTracker().observe("nonsense", 1.0)
    with pytest.raises(ValueError):
        CostTracker().observe("restore_s", -1.0)
