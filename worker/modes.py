"""Fused or unfused: a pure choice from measured costs and the expected reuse of an adapter set.

Fused pays once per swap (rewrite every targeted weight) and then runs at base speed. Unfused
swaps only the small matrices but pays on every denoising step. Over ``jobs`` jobs of ``steps``
steps each that stay on this adapter set:

    fused   = fused_apply_s
    unfused = unfused_swap_s + (restore_s if weights are fused now) + jobs * steps * unfused_step_s

Unfused must win by ``margin`` to be chosen, so a hot adapter (many jobs) stays fused, and with
no measurements yet the answer is fused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["fused", "unfused"]
COST_KINDS = ("fused_apply_s", "restore_s", "unfused_swap_s", "unfused_step_s")


@dataclass(frozen=True)
class SwapCosts:
    """Measured seconds on this worker's base and device."""

    fused_apply_s: float  # one-pass fused write of an adapter set
    restore_s: float  # copying fused weights back to pristine (leaving fused mode)
    unfused_swap_s: float  # replacing the low-rank matrices
    unfused_step_s: float  # extra time per denoising step with the adapter unfused


@dataclass(frozen=True)
class ModeChoice:
    mode: Mode
    fused_s: float
    unfused_s: float


def choose_mode(
    costs: SwapCosts | None,
    *,
    jobs: float,
    steps: int,
    fused_now: bool = False,
    margin: float = 0.2,
) -> ModeChoice:
    """The cheaper mode for ``jobs`` upcoming jobs on one adapter set; fused unless unfused wins by margin."""
    if costs is None:
        return ModeChoice("fused", 0.0, 0.0)
    jobs = max(jobs, 1.0)  # at least the job at hand
    fused = costs.fused_apply_s
    unfused = costs.unfused_swap_s + jobs * max(steps, 0) * costs.unfused_step_s
    if fused_now:
        unfused += costs.restore_s
    mode: Mode = "unfused" if unfused < (1.0 - margin) * fused else "fused"
    return ModeChoice(mode, fused, unfused)


def expected_jobs(current: str | None, upcoming: Sequence[str | None]) -> int:
    """Jobs in a row, this one included, that want the adapter set ``current`` (set keys, ``None``: the base)."""
    run = 1
    for key in upcoming:
        if key != current:
            break
        run += 1
    return run


@dataclass
class CostTracker:
    """Exponentially weighted averages of observed costs; ``costs`` is None until each was seen once."""

    weight: float = 0.3
    values: dict[str, float] = field(default_factory=dict)

    def observe(self, kind: str, seconds: float) -> None:
        if kind not in COST_KINDS:
            raise ValueError(f"unknown cost {kind!r}; known: {COST_KINDS}")
        if seconds < 0:
            raise ValueError("a cost cannot be negative")
        old = self.values.get(kind)
        self.values[kind] = seconds if old is None else old + self.weight * (seconds - old)

    def costs(self) -> SwapCosts | None:
        if any(kind not in self.values for kind in COST_KINDS):
            return None
        return SwapCosts(**{kind: self.values[kind] for kind in COST_KINDS})
