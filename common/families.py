"""Pipeline families: what differs between bases as far as a request goes, keyed by pipeline class.

A pool's base is a diffusers pipeline; its class (``model_index.json``'s ``_class_name``) names
its family. The family fixes which request parameters exist and their defaults, the multiple
image sizes must be of, and the denoiser that carries most of a LoRA. This table is torch-free:
the router validates requests with it, the worker (``worker.families``) extends it with what
needs diffusers (LoRA components, the loader's return shape, the pipeline call).

A pool learns its family from its workers: each heartbeat carries the loaded pipeline's class
(``WorkerState.pipeline``), which is the truth of what will run the job, needs no Hub call, and
is there whenever a job can be enqueued (the router refuses a job for a pool without a live
worker). Adding a family (SD3.5, Qwen-Image, Flux.2...) is one row here and, if its LoRA loader
answers in a new shape, one row in ``worker.families``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common import errors

#: How a job of several images runs: one pipeline call, or one call per image.
BatchMode = Literal["one_call", "loop"]


@dataclass(frozen=True)
class Family:
    """The request-facing facts of one pipeline family."""

    name: str
    label: str
    #: The pipeline attribute holding the denoiser: a UNet or a diffusion transformer (DiT).
    denoiser: Literal["unet", "transformer"]
    #: Width and height must be multiples of this (VAE downsampling times the patch size).
    size_multiple: int
    default_steps: int
    #: The pipeline's own default; ``distilled``: guidance is an input of the model, not CFG.
    default_guidance: float
    guidance: Literal["cfg", "distilled"]
    #: Why a negative prompt is refused; empty when the family takes one.
    no_negative_prompt: str = ""
    #: Half precision it runs in on a GPU (``dtype=auto``): FLUX.1 overflows in fp16.
    gpu_dtype: Literal["fp16", "bf16"] = "fp16"
    #: How a job of n images runs (one swap either way): ``one_call``, one pipeline call with a
    #: generator per image; ``loop``, n calls of one image, where a batch is not bit-identical to
    #: one image alone (the reproducibility promise: image k equals the n=1 job with its seed).
    batch: BatchMode = "loop"

    @property
    def negative_prompt(self) -> bool:
        return not self.no_negative_prompt


SDXL = Family("sdxl", "SDXL", "unet", size_multiple=8, default_steps=25, default_guidance=5.0, guidance="cfg")
SD15 = Family("sd15", "SD 1.5", "unet", size_multiple=8, default_steps=25, default_guidance=7.5, guidance="cfg")
FLUX1 = Family(
    "flux",
    "FLUX.1",
    "transformer",
    # 8x VAE, then 2x2 latent patches
    size_multiple=16,
    default_steps=28,
    default_guidance=3.5,
    guidance="distilled",
    no_negative_prompt=(
        "FLUX.1 is guidance-distilled: guidance_scale is an input of the model, with no unconditional "
        "pass for a negative prompt to steer"
    ),
    gpu_dtype="bf16",
)

# No family batches exactly on CPU (torch 2.13, diffusers 0.42): a convolution over a batch of 4
# differs from 4 convolutions of one in the last bits (max 5e-7; the pipelines' images differ by
# 1e-6 to 3e-6, enough to flip uint8 pixels), so every family loops
# (tests/integration/test_batches.py measures it on the tiny bases of the zoo).

#: Pipeline class name -> family.
FAMILIES: dict[str, Family] = {
    "StableDiffusionXLPipeline": SDXL,
    "StableDiffusionPipeline": SD15,
    "FluxPipeline": FLUX1,
}


def family_of(pipeline_class: str | None) -> Family | None:
    """The family of a pipeline class; ``None`` when unknown (or not announced yet)."""
    return FAMILIES.get(pipeline_class or "")


def check_parameters(
    family: Family,
    *,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
) -> None:
    """Raise ``InvalidRequest`` (422) for a parameter this family does not take, saying why."""
    if negative_prompt is not None and not family.negative_prompt:
        raise errors.InvalidRequest(f"parameters.negative_prompt is not supported: {family.no_negative_prompt}")
    for name, value in (("width", width), ("height", height)):
        if value is not None and value % family.size_multiple:
            raise errors.InvalidRequest(
                f"parameters.{name} must be a multiple of {family.size_multiple} for {family.label} bases, not {value}"
            )
