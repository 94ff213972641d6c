"""The swap benchmark's verdicts: computed from its rows, so they flip when the figures do."""

from __future__ import annotations

from typing import Any

from bench import goals
from bench.swap import verdicts


def row(method: str, median_s: float, drift: float = 0.0, rank: int = 8) -> dict[str, Any]:
    return {"method": method, "rank": rank, "format": "diffusers", "swaps": 20, "median_s": median_s, "drift": drift}


def judged(*rows: dict[str, Any], device: str = "cpu") -> dict[str, bool]:
    return {v.goal: v.met for v in verdicts([{"rows": list(rows)}], device)}


def test_every_target_met_by_good_figures() -> None:
    out = judged(row("stock", 4.0, drift=3e-3), row("fused", 0.3), row("fused-cold", 0.5), row("unfused", 0.01))
    assert out and all(out.values()), out
    # stock drifts, but no target is set for it; fused, fused-cold and unfused are each judged on drift
    assert sum("drift" in goal for goal in out) == 3


def test_each_verdict_flips_with_its_figure() -> None:
    assert not judged(row("fused", 0.3, drift=1e-7))["fused, rank 8 diffusers: max abs drift after 20 swaps"]
    assert not judged(row("unfused", 0.2))["unfused, rank 8 diffusers: median swap"]
    assert not judged(row("fused", 0.5))["fused, rank 8 diffusers: median swap on cpu"]
    slow_stock = judged(row("stock", 2.0), row("fused", 0.3))  # 6.7x < 8x
    assert not slow_stock["fused, rank 8 diffusers: stock / fused, median"]


def test_the_fused_target_is_the_gpu_one_on_cuda() -> None:
    assert judged(row("fused", 0.3))["fused, rank 8 diffusers: median swap on cpu"]
    assert not judged(row("fused", 0.3), device="cuda")["fused, rank 8 diffusers: median swap on cuda"]
    assert judged(row("fused", goals.FUSED_SWAP_GPU_S / 2), device="cuda")[
        "fused, rank 8 diffusers: median swap on cuda"
    ]
