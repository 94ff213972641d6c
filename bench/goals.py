"""The targets the benchmarks are judged against, and the verdicts they print.

A verdict is printed only as the result of comparing figures measured in the same run with one
of these named targets, so the line flips when the figures do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# --- the Hub-scale simulation (issue 4), at the reference load ------------------------------
#: p50 within 5% of pure inference.
P50_OVER_INFERENCE = 1.05
#: p95 within 15% of pure inference.
P95_OVER_INFERENCE = 1.15
#: At least 30% fewer GPUs than the reference, both fleets sized for the same p95 bound.
GPU_SAVING = 0.30
#: With multi-base workers (issue 12): at least 40% fewer, every pool within the same p95 bound.
MULTIBASE_GPU_SAVING = 0.40

# --- the swap engine (issue 3), rank-8 LoRA on the SDXL-shaped UNet -------------------------
#: A restored base equals the pristine one exactly: no weight differs, by any amount.
MAX_DRIFT = 0.0
#: The unfused swap (weights stay at W0, only the low-rank factors change).
UNFUSED_SWAP_S = 0.12
#: The fused apply on a CPU, and on a GPU.
FUSED_SWAP_CPU_S = 0.40
FUSED_SWAP_GPU_S = 0.020
#: The fused apply against diffusers' stock load+fuse / unfuse+unload, median per swap.
FUSED_SPEEDUP = 8.0

# --- base tiering (issue 12) -----------------------------------------------------------------
#: A warm base switch (pinned host copy to the device) of an SDXL pipeline in fp16, on PCIe 4/5.
BASE_SWITCH_GPU_S = 0.5


@dataclass(frozen=True)
class Verdict:
    """One goal, what the run measured, and whether the measurement meets the goal."""

    goal: str
    measured: str
    met: bool

    def line(self) -> str:
        return f"{self.goal}: {'met' if self.met else 'NOT met'} ({self.measured})"


def at_most(goal: str, value: float, target: float, unit: str = "", fmt: str = ".3g") -> Verdict:
    """``value <= target``, printed as ``goal: met (value unit, target ≤ target unit)``."""
    return Verdict(goal, f"{value:{fmt}}{unit}, target ≤ {target:{fmt}}{unit}", value <= target)


def at_least(goal: str, value: float, target: float, unit: str = "", fmt: str = ".3g") -> Verdict:
    """``value >= target``, printed like :func:`at_most`."""
    return Verdict(goal, f"{value:{fmt}}{unit}, target ≥ {target:{fmt}}{unit}", value >= target)


def all_of(goal: str, parts: Sequence[Verdict]) -> Verdict:
    """Met when every part is met; the measurements of the parts side by side."""
    return Verdict(goal, "; ".join(f"{p.goal} {p.measured}" for p in parts), all(p.met for p in parts))
