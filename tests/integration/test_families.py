"""The worker's family table against diffusers itself: components, loader shapes, call defaults."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    QwenImagePipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from common import errors
from common.families import FAMILIES, FLUX1, SDXL, family_of
from worker.families import pipeline_family
from worker.pipeline import resolve_dtype

CLASSES = {cls.__name__: cls for cls in (StableDiffusionXLPipeline, StableDiffusionPipeline, FluxPipeline)}


def test_every_family_is_a_diffusers_pipeline_whose_defaults_it_repeats() -> None:
    assert set(FAMILIES) == set(CLASSES)
    for name, facts in FAMILIES.items():
        call = inspect.signature(CLASSES[name].__call__).parameters
        # the table is what the router validates with: it must say what diffusers would do
        assert facts.default_guidance == call["guidance_scale"].default, name
        assert ("negative_prompt" in call) or not facts.negative_prompt, name


def test_components_and_loader_shape_come_from_the_loader_mixin() -> None:
    flux, sdxl, sd15 = (pipeline_family(c) for c in (FluxPipeline, StableDiffusionXLPipeline, StableDiffusionPipeline))
    assert flux.components == ("transformer", "text_encoder") and flux.denoiser == "transformer"
    assert flux.loader.alphas == "on_request" and not flux.loader.takes_unet_config
    assert sdxl.components == ("unet", "text_encoder", "text_encoder_2")
    assert sdxl.loader.alphas == sd15.loader.alphas == "always" and sdxl.loader.takes_unet_config


def test_a_pipeline_without_a_family_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="QwenImagePipeline"):
        pipeline_family(QwenImagePipeline)


def test_the_call_takes_family_defaults_and_refuses_what_the_family_lacks() -> None:
    flux = pipeline_family(FluxPipeline)
    kwargs = flux.call_kwargs("a cat", steps=28, seed=1, size=64)
    assert kwargs["guidance_scale"] == 3.5 and (kwargs["width"], kwargs["height"]) == (64, 64)
    assert "negative_prompt" not in kwargs
    one_side = flux.call_kwargs("a cat", steps=2, seed=1, width=128)
    assert one_side["width"] == 128 and "height" not in one_side  # the other side: the pipeline's default
    with pytest.raises(errors.InvalidRequest, match="negative_prompt"):
        flux.call_kwargs("a cat", steps=2, seed=1, negative_prompt="blurry")
    sdxl = pipeline_family(StableDiffusionXLPipeline)
    kwargs = sdxl.call_kwargs("a cat", steps=2, seed=1, negative_prompt="blurry", guidance_scale=7.0)
    assert kwargs["negative_prompt"] == "blurry" and kwargs["guidance_scale"] == 7.0
    assert "width" not in kwargs  # no size asked, none configured: the pipeline's own default


def test_auto_dtype_is_the_familys_half_precision_on_a_gpu(zoo_dir: Path) -> None:
    flux = family_of(DiffusionPipeline.load_config(zoo_dir / "tiny/flux-base")["_class_name"])
    assert flux is FLUX1
    assert resolve_dtype("auto", "cuda", flux) == torch.bfloat16  # FLUX.1 overflows in fp16
    assert resolve_dtype("auto", "cuda", SDXL) == resolve_dtype("auto", "cuda", None) == torch.float16
    assert resolve_dtype("auto", "cpu", flux) == torch.float32
    assert resolve_dtype("fp16", "cuda", flux) == torch.float16  # an explicit setting wins
