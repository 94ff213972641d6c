"""Pipeline families as the router sees them: per-family parameter checks, and a pool's family from its workers."""

from __future__ import annotations

import pytest

from common import errors
from common.families import FAMILIES, FLUX1, SDXL, check_parameters, family_of
from common.schemas import Job, WorkerState
from router.jobs import check_family, pool_family


def worker(pipeline: str | None) -> WorkerState:
    return WorkerState(worker_id=f"w-{pipeline}", pool="p", pipeline=pipeline)


def job(**params: object) -> Job:
    return Job(pool="p", prompt="a cat", seed=1, **params)  # type: ignore[arg-type]


def test_families_are_keyed_by_pipeline_class() -> None:
    assert family_of("FluxPipeline") is FLUX1 and FLUX1.denoiser == "transformer"
    assert family_of("StableDiffusionXLPipeline") is SDXL and SDXL.denoiser == "unet"
    assert family_of("QwenImagePipeline") is None and family_of(None) is None
    assert {f.name for f in FAMILIES.values()} == {"sdxl", "sd15", "flux"}


def test_flux_sizes_must_be_multiples_of_16_and_say_so() -> None:
    check_parameters(FLUX1, width=1024, height=768)
    with pytest.raises(
        errors.InvalidRequest, match=r"parameters.height must be a multiple of 16 for FLUX.1 bases, not 1000"
    ):
        check_parameters(FLUX1, width=1024, height=1000)
    check_parameters(SDXL, width=1000, height=1000)  # 8 is enough for a UNet


def test_negative_prompt_is_refused_with_the_reason_unless_the_family_takes_one() -> None:
    with pytest.raises(errors.InvalidRequest, match="guidance-distilled") as caught:
        check_parameters(FLUX1, negative_prompt="blurry")
    assert caught.value.error_type == "invalid_request"
    check_parameters(SDXL, negative_prompt="blurry")
    assert FLUX1.guidance == "distilled" and FLUX1.default_guidance == 3.5 != SDXL.default_guidance


def test_the_pool_family_is_what_its_workers_announce() -> None:
    assert pool_family([]) is None
    assert pool_family([worker(None), worker("FluxPipeline")]) is FLUX1
    check_family(job(negative_prompt="blurry", width=72), [])  # unknown yet: the worker checks it
    check_family(job(negative_prompt="blurry", width=72), [worker("StableDiffusionXLPipeline")])
    with pytest.raises(errors.InvalidRequest, match="negative_prompt"):
        check_family(job(negative_prompt="blurry"), [worker("FluxPipeline")])
    with pytest.raises(errors.InvalidRequest, match="width"):
        check_family(job(width=72), [worker("FluxPipeline")])
