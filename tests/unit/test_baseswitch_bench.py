"""The base switch benchmark's report: what it says about a CPU run, and the GPU verdict it computes."""

from __future__ import annotations

from typing import Any

from bench import goals
from bench.baseswitch import report


def result(device: str, warm: list[float]) -> dict[str, Any]:
    return {
        "device": device,
        "dtype": "fp16",
        "components": ["unet", "text_encoder", "text_encoder_2"],
        "bytes": 6_770_000_000,
        "warm_switch_s": warm,
        "offload_s": [0.6, 0.7],
        "cold_load_s": [],
        "exact": True,
        "peak_rss_gib": 14.0,
        "machine": "x86_64",
        "when": "now",
    }


def test_a_cpu_run_is_labelled_a_memory_copy_and_judged_against_nothing() -> None:
    text = report(result("cpu", [1.2, 1.0, 1.1]), "python -m bench.baseswitch")
    assert "memory copies, not PCIe transfers" in text
    assert "| warm switch: host copy to device | 1.100 | 1.000 | 6.2 | 3 |" in text
    assert "met" not in text


def test_the_gpu_verdict_follows_the_median_warm_switch() -> None:
    fast = report(result("cuda", [0.30, 0.28, 0.31]), "cmd")
    slow = report(result("cuda", [0.7, 0.6, 0.8]), "cmd")
    assert f"warm base switch on the GPU: met (0.300 s, target ≤ {goals.BASE_SWITCH_GPU_S:.3f} s)" in fast
    assert "warm base switch on the GPU: NOT met (0.700 s" in slow
