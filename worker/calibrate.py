"""Measure this worker's swap costs once at start, so ``swap_mode=auto`` has inputs for its policy.

A synthetic rank-8 adapter on the denoiser's attention projections (what most LoRAs target, in
a UNet and in a diffusion transformer alike) is applied fused, restored, and applied unfused; a
two-step run with and without it unfused gives the extra cost per denoising step. Its up
matrices are zero and the engine restores from pristine copies, so the base is exact afterwards.
Real swaps then keep the apply costs current (``CostTracker``).
"""

from __future__ import annotations

import logging
import time

import torch

from worker.adapter import LoraLayer, ParsedAdapter, weight_of
from worker.engine import SwapEngine
from worker.fusion import compute_dtype
from worker.modes import CostTracker
from worker.naming import component_of

log = logging.getLogger(__name__)

#: Module names a typical LoRA targets in the denoiser (diffusers names them alike in UNets and DiTs).
_TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0")
RANK = 8
KEY = "lorafarm/calibration@0"


def synthetic_adapter(engine: SwapEngine, rank: int = RANK) -> ParsedAdapter:
    """A zero-valued adapter shaped like a common LoRA for this base (its denoiser's attention)."""
    layers: dict[str, LoraLayer] = {}
    denoiser = engine.family.denoiser
    for target, module in engine.modules.items():
        if not (component_of(target) == denoiser and target.endswith(_TARGETS) and isinstance(module, torch.nn.Linear)):
            continue
        weight = weight_of(module)
        r = min(rank, *weight.shape)
        down = torch.zeros(r, weight.shape[1], device=weight.device, dtype=compute_dtype(weight))
        layers[target] = LoraLayer(down, down.new_zeros(weight.shape[0], r), 1.0)
    if not layers:
        raise ValueError(f"this base has no {denoiser} attention projections to calibrate on")
    return ParsedAdapter(key=KEY, layers=layers)


def _run_seconds(engine: SwapEngine, steps: int, size: int | None) -> float:
    kwargs = engine.family.call_kwargs("calibration", steps=steps, seed=0, size=size)
    start = time.perf_counter()
    with torch.inference_mode():
        engine.pipe(**kwargs, output_type="latent")
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def calibrate(engine: SwapEngine, *, size: int | None = None, steps: int = 2, repeats: int = 2) -> CostTracker:
    """A CostTracker holding one measurement of each swap cost on this base and device.

    ``size``: the image size jobs run at by default (``None``: the pipeline's own).
    """
    # within a compiled denoiser's fixed unfused rank, so that "unfused" is measured unfused
    adapter = synthetic_adapter(engine, min(RANK, engine.fixed.rank) if engine.fixed else RANK)
    tracker = CostTracker()
    try:
        _run_seconds(engine, 1, size)  # first-run costs (allocations, kernel choice) out of the way
        plain = min(_run_seconds(engine, steps, size) for _ in range(repeats))
        tracker.observe("fused_apply_s", engine.apply([(adapter, 1.0)], "fused").seconds)
        tracker.observe("restore_s", engine.restore().seconds)
        tracker.observe("unfused_swap_s", engine.apply([(adapter, 1.0)], "unfused").seconds)
        hooked = min(_run_seconds(engine, steps, size) for _ in range(repeats))
        tracker.observe("unfused_step_s", max(0.0, hooked - plain) / steps)
    finally:
        engine.restore()
    log.info("event=calibrated %s", " ".join(f"{k}={v:.4f}" for k, v in tracker.values.items()))
    return tracker
