"""bench.flux's reading of results: per block, the 57-block extrapolation, verdicts per named target."""

from __future__ import annotations

from typing import Any

from bench.flux import FUSED_SPEEDUP_TARGET, full_model_factor, report


def row(method: str, median_s: float, drift: float = 0.0, fmt: str = "diffusers") -> dict[str, Any]:
    return {"method": method, "rank": 16, "format": fmt, "median_s": median_s, "drift": drift, "changed": 0, "swaps": 9}


def test_the_full_model_is_an_extrapolation_only_from_a_run_with_its_block_ratio() -> None:
    assert full_model_factor((2, 4)) == 9.5
    assert full_model_factor((1, 2)) == 19
    assert full_model_factor((2, 2)) is None  # single blocks are smaller: no honest scale factor


def test_verdicts_follow_the_targets() -> None:
    fast, slow = FUSED_SPEEDUP_TARGET + 1, FUSED_SPEEDUP_TARGET - 1
    results = [
        {"rows": [row("stock", fast, drift=1e-3), row("stock", slow, drift=1e-3, fmt="kohya")]},
        {"rows": [row("fused", 1.0), row("fused", 1.0, drift=2e-3, fmt="kohya")]},
    ]
    lines = report(results, device="cpu", blocks=(2, 4))
    text = "\n".join(lines)
    assert f"rank 16 diffusers: {fast:.1f}x, met" in text
    assert f"rank 16 kohya: {slow:.1f}x, NOT met" in text
    assert "after 9 swaps, fused rank 16 diffusers: 0 (0 tensors changed), met" in text
    assert "fused rank 16 kohya: 0.002 (0 tensors changed), NOT met" in text
    assert "| fused | 16 | diffusers | 166.7 | 9.500 |" in lines  # 1 s over 6 blocks; 9.5 s for 57
    assert "not measured here" in text  # the GPU target needs the whole transformer on a GPU


def test_the_gpu_target_is_judged_on_the_whole_transformer_only() -> None:
    results = [{"rows": [row("fused", 0.030)], "peak_gpu_gib": 50.0}]
    text = "\n".join(report(results, device="cuda", blocks=(19, 38)))
    assert "fused rank-16 swap <= 40 ms: 30.0 ms, met" in text
    assert "| fused | 16 | diffusers | 0.5 | - |" in text  # nothing to extrapolate
