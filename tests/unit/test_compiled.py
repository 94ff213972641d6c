"""The compile decisions that need no compile: served shapes, their policy, refused configurations,
and whether an unfused set fits the fixed-shape factors."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionXLPipeline
from pydantic import ValidationError

from common.errors import InvalidRequest
from worker.compiled import CompiledDenoiser, CompileFailed, check_config
from worker.families import pipeline_family
from worker.lowrank import PaddedPath, misfit
from worker.settings import WorkerSettings

SDXL = pipeline_family(StableDiffusionXLPipeline)
FLUX = pipeline_family(FluxPipeline)


def denoiser(family: object, *, new_sizes: str = "compile") -> CompiledDenoiser:
    # Never compiled here: the shape bookkeeping reads the family and the sizes only.
    served = CompiledDenoiser(None, family, sizes=[(1024, 1024)], default=1024, new_sizes=new_sizes)  # type: ignore[arg-type]
    served.shapes = {(1024, 1024, 2 if family is SDXL else 1)}
    return served


def test_sdxl_guidance_doubles_the_batch_and_a_job_without_size_gets_the_default() -> None:
    served = denoiser(SDXL)
    assert served.shape(SDXL.call_kwargs("x", steps=2, seed=0)) == (1024, 1024, 2)
    assert served.shape(SDXL.call_kwargs("x", steps=2, seed=0, guidance_scale=1.0)) == (1024, 1024, 1)
    assert served.shape(SDXL.call_kwargs("x", steps=2, seed=0, width=832, height=1216)) == (832, 1216, 2)
    # FLUX.1's guidance is an input of the model: any value, one batch
    assert denoiser(FLUX).shape(FLUX.call_kwargs("x", steps=2, seed=0, guidance_scale=1.0)) == (1024, 1024, 1)


def test_a_new_shape_compiles_once_or_is_refused_by_policy() -> None:
    lenient, strict = denoiser(SDXL), denoiser(SDXL, new_sizes="refuse")
    wide = SDXL.call_kwargs("x", steps=2, seed=0, width=1216, height=832)
    strict.admit(SDXL.call_kwargs("x", steps=2, seed=0))
    with pytest.raises(InvalidRequest, match=r"serves 1024x1024 \(batch 2\); 1216x832 \(batch 2\) would need"):
        strict.admit(wide)
    lenient.admit(wide)
    assert (1216, 832, 2) in lenient.shapes  # compiled for once, then served like the others


def test_configurations_that_cannot_follow_swaps_or_cannot_run_are_refused() -> None:
    check_config("default", "cpu")
    check_config("reduce-overhead", "cuda")
    with pytest.raises(CompileFailed, match="CUDA graphs and needs a CUDA device; this worker runs on cpu"):
        check_config("reduce-overhead", "cpu")
    with torch._inductor.config.patch(freezing=True), pytest.raises(CompileFailed, match="silently ignored"):
        check_config("default", "cuda")


def test_an_unfused_set_fits_only_within_the_buffers_of_the_compiled_component() -> None:
    buffered = {"unet.a.to_q", "unet.a.to_k"}
    compiled = ("unet",)
    assert misfit({"unet.a.to_q": 16, "text_encoder.q_proj": 64}, buffered, 16, compiled=compiled) is None
    assert misfit({"unet.a.to_q": 17}, buffered, 16, compiled=compiled) == (
        "unet.a.to_q needs rank 17, over the compiled maximum of 16"
    )
    assert misfit({"unet.conv1": 4}, buffered, 16, compiled=compiled) == "unet.conv1 has no fixed-shape unfused buffer"


def test_padded_factors_add_exactly_zero_until_set_and_fold_the_scales() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 6)
    x = torch.randn(3, 8)
    plain = linear(x)
    path = PaddedPath(linear, 4, torch.float32)
    assert torch.equal(linear(x), plain) and path.nbytes == 4 * (8 + 6) * 4
    down, up = torch.randn(2, 8), torch.randn(6, 2)
    other = torch.randn(1, 8), torch.randn(6, 1)
    path.set([(down, up, 0.5), (*other, 2.0)])
    want = plain + 0.5 * x @ down.T @ up.T + 2.0 * x @ other[0].T @ other[1].T
    torch.testing.assert_close(linear(x), want)
    addresses = path.down.data_ptr(), path.up.data_ptr()
    with pytest.raises(ValueError, match="rank 5"):
        path.set([(torch.randn(5, 8), torch.randn(6, 5), 1.0)])
    path.remove()
    assert torch.equal(linear(x), plain) and (path.down.data_ptr(), path.up.data_ptr()) == addresses


def test_compile_sizes_are_width_by_height_or_a_square() -> None:
    settings = WorkerSettings(compile_sizes="1024, 832x1216,1024x1024")
    assert settings.served_sizes() == [(1024, 1024), (832, 1216)]
    with pytest.raises(ValidationError, match="WIDTHxHEIGHT or N"):
        WorkerSettings(compile_sizes="big")


def test_a_compiled_worker_serves_one_base() -> None:
    """A base switch moves a base's weights to other tensors: a compiled graph would recompile."""
    from worker.startup import load_bases

    settings = WorkerSettings(base="tiny/sdxl-base,tiny/sd15-base", compile="default")
    with pytest.raises(ValueError, match="LORAFARM_COMPILE serves one base"):
        load_bases(settings, None, None)  # type: ignore[arg-type]  # refused before anything is loaded
