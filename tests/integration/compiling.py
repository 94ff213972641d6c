"""Compiled tiny bases as the compile tests build them, and the check that they serve what eager bases serve.

``check_steps`` is the equality test of ``test_compile.py`` and ``test_compile_flux.py``: each step
(adapters at strengths, fused or unfused, or a restore) is applied to a compiled base and, in the
mode the compiled one used, to an eager one (the paths ``test_engine`` holds equal to diffusers);
the two images must agree within ``COMPILED_ATOL``, differ from the base image when adapters are
on, and equal it exactly after a restore. ``frozen.py`` runs the same check on a deliberately
wrong compile, which misses by about 0.9.

The tolerance is for inductor's kernels rounding differently from eager ones (measured: 2e-6 to
8e-5 on the steps of the tests). The tiny bases have random weights, and under strong adapter
sets they turn chaotic: a 1e-6 relative perturbation of the UNet's weights moves the image of
the zoo's rank-32 LoRA at strength 1 by 1.7e-3, and of four rank-4 LoRAs at strength 1 by 6e-3.
The steps keep strengths where they are not, so that the tolerance stays tight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from common.schemas import Job
from worker.adapter import ParsedAdapter, read_adapter
from worker.compiled import CompiledDenoiser, Scope
from worker.engine import SwapEngine
from worker.families import PipelineFamily, pipeline_family
from worker.lowrank import FixedRank, Overflow
from worker.pipeline import encode, generate

WEIGHTS = "pytorch_lora_weights.safetensors"
SIZE = 64
#: The compiled unfused maximum rank in the tests: the zoo's rank-32 LoRA overflows it.
RANK = 16
COMPILED_ATOL = 5e-4  # fp32, images in [0, 1]: compiled against eager, same weights and mode (see above)
DIFFERS = 0.05  # a LoRA image differs from the base image by more than this somewhere

#: (zoo adapter names with strengths, "fused" | "unfused" | "restore", prompt)
Step = tuple[list[tuple[str, float]], str, str]


@dataclass
class Base:
    """A tiny base with its swap engine; ``denoiser`` is set when it is compiled."""

    pipe: Any
    family: PipelineFamily
    engine: SwapEngine
    denoiser: CompiledDenoiser | None = None


def load(zoo: Path, base: str, *, fixed_rank: int | None = None, overflow: Overflow = "fused") -> Base:
    """A tiny base from the zoo; ``fixed_rank``: fixed-shape unfused factors on its usual LoRA targets."""
    pipe = DiffusionPipeline.from_pretrained(zoo / base)
    pipe.set_progress_bar_config(disable=True)
    family = pipeline_family(type(pipe))
    fixed = FixedRank(fixed_rank, family.lora_targets, overflow) if fixed_rank else None
    return Base(pipe, family, SwapEngine(pipe, fixed=fixed))


def compiled(zoo: Path, base: str, scope: Scope = "denoiser") -> Base:
    """A tiny base whose denoiser (or its repeated blocks) is compiled (CPU inductor) and warmed up at
    SIZE, as a worker does it."""
    served = load(zoo, base, fixed_rank=RANK)
    served.denoiser = CompiledDenoiser(served.pipe, served.family, scope=scope, sizes=[(SIZE, SIZE)])
    served.denoiser.compile()
    return served


def parse(zoo: Path, base: Base, name: str) -> ParsedAdapter:
    folder = zoo / "tiny" / name
    embeddings = folder / "embeddings.safetensors"
    return read_adapter(
        folder / WEIGHTS,
        key=f"tiny/{name}@test",
        embeddings=embeddings if embeddings.exists() else None,
        max_bytes=4 << 20,
        max_rank=64,
        family=base.family,
        denoiser_config=getattr(base.pipe, base.family.denoiser).config,
    )


def draw(base: Base, prompt: str = "a cat") -> np.ndarray:
    """Two steps at SIZE under inference mode (as the worker runs, so as the graph was warmed up)."""
    kwargs = base.family.call_kwargs(prompt, steps=2, seed=0, width=SIZE, height=SIZE)
    with torch.inference_mode():
        return np.asarray(base.pipe(**kwargs, output_type="np").images)


def png(base: Base, prompt: str = "a cat") -> bytes:
    """The image bytes a worker answers with: ``worker.pipeline.generate``, then PNG."""
    job = Job(id="compile-test", pool="tiny", prompt=prompt, num_inference_steps=2, seed=0)
    (image,) = generate(base.pipe, job, family=base.family, steps=2, size=SIZE, compiled=base.denoiser)
    return encode(image, "png")[0]


def apply(base: Base, adapters: dict[str, ParsedAdapter], names: list[tuple[str, float]], mode: str) -> str:
    """Apply a step's adapters (``restore``: none); the mode the engine used."""
    if mode == "restore":
        return base.engine.restore().mode
    return base.engine.apply([(adapters[name], scale) for name, scale in names], mode).mode  # type: ignore[arg-type]


def check_steps(
    served: Base,
    eager: Base,
    adapters: dict[str, ParsedAdapter],
    steps: Sequence[Step],
) -> list[str]:
    """Run each step on both bases and hold the compiled image to the eager one; the modes used."""
    bases = {prompt: draw(served, prompt) for prompt in {prompt for _, _, prompt in steps}}
    modes = []
    for i, (names, mode, prompt) in enumerate(steps):
        used = apply(served, adapters, names, mode)
        apply(eager, adapters, names, used if names else "restore")
        got, want = draw(served, prompt), draw(eager, prompt)
        error = float(np.abs(got - want).max())
        assert error <= COMPILED_ATOL, (
            f"step {i} {names} {used}: compiled image is {error:.3g} off the eager one (> {COMPILED_ATOL})"
        )
        if names:
            assert np.abs(got - bases[prompt]).max() > DIFFERS, f"step {i} {names}: the adapter changed nothing"
        else:
            assert np.array_equal(got, bases[prompt]), f"step {i}: the restored base is not the base"
        modes.append(used)
    return modes


def changed_modes(steps: Sequence[Step], modes: Sequence[str]) -> list[int]:
    """The steps the engine applied in another mode than asked (restores aside): an unfused set
    over the compiled maximum rank goes fused."""
    asked = [mode for _, mode, _ in steps]
    return [i for i, (a, m) in enumerate(zip(asked, modes, strict=True)) if a != m and a != "restore"]
