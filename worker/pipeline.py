"""The warm base pipeline: download once, load on the right device, generate with a seed."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DiffusionPipeline
from huggingface_hub import snapshot_download
from PIL import Image

from common.families import BatchMode, Family, family_of
from common.schemas import Job
from worker.families import PipelineFamily
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.compiled import CompiledDenoiser

log = logging.getLogger(__name__)

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

#: Called after each denoising step with (step done, steps in all); returns True to stop the job.
StepHook = Callable[[int, int], bool]


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_dtype(setting: str, device: str, family: Family | None = None) -> torch.dtype:
    """``auto``: the family's half precision on CUDA (fp16 when unknown), fp32 on CPU."""
    if setting == "auto":
        return _DTYPES[family.gpu_dtype if family else "fp16"] if device == "cuda" else torch.float32
    return _DTYPES[setting]


def download_base(settings: WorkerSettings) -> str:
    """Fetch the base's diffusers folders (safetensors only, no single-file checkpoints)."""
    return snapshot_download(
        settings.base,
        endpoint=settings.hf_endpoint,
        cache_dir=settings.hf_cache_dir,
        token=settings.hf_token,
        # Component folders only: the Hub's SDXL repo also holds multi-GB single-file checkpoints.
        allow_patterns=["model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors"],
        ignore_patterns=["*.fp16.safetensors", "*.onnx*", "*.msgpack", "*.bin", "*.ckpt"],
    )


def load_base(settings: WorkerSettings, *, place: bool = True) -> DiffusionPipeline:
    """Load the base pipeline once, in the dtype of the configured device, and put it there.

    ``place=False`` leaves it in host memory (a multi-base worker moves bases itself: ``worker.bases``).
    """
    device = resolve_device(settings.device)
    path = download_base(settings)
    family = family_of(DiffusionPipeline.load_config(path).get("_class_name"))
    dtype = resolve_dtype(settings.dtype, device, family)
    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, use_safetensors=True)
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    if place:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    log.info("event=base_loaded base=%s device=%s dtype=%s", settings.base, device, dtype)
    return pipe


def generate(
    pipe: Any,
    job: Job,
    *,
    family: PipelineFamily,
    steps: int,
    size: int | None = None,
    on_step: StepHook | None = None,
    batch: BatchMode | None = None,
    compiled: CompiledDenoiser | None = None,
) -> list[Image.Image]:
    """Run the pipeline for one job: its ``images``, image k from seed ``job.seeds[k]``.

        The same job (seed included) gives the same images, and image k is the image of the one-image
        job with seed ``job.seeds[k]``: the family's ``batch`` says whether one pipeline call keeps that
        promise (``one_call``) or the images are made one call each (``loop``); ``batch`` overrides it
        (the benchmark compares both). ``steps`` and ``size`` (width and height) are the worker's
        defaults for a job naming none; ``None`` size: the pipeline's own. Parameters the family does
        not take raise ``InvalidRequest``, and so does a shape a ``compiled`` denoiser was not warmed up
    at, when it refuses new ones. ``on_step`` counts the steps of all the images.
    """
    steps = job.num_inference_steps or steps
    mode = batch or family.facts.batch
    calls = [job.seeds] if mode == "one_call" or job.images == 1 else [[s] for s in job.seeds]
    progress = _Progress(on_step, steps, len(calls))
    images: list[Image.Image] = []
    for seeds in calls:
        kwargs = family.call_kwargs(
            job.prompt,
            steps=steps,
            seed=seeds if len(seeds) > 1 else seeds[0],
            size=size,
            guidance_scale=job.guidance_scale,
            negative_prompt=job.negative_prompt,
            width=job.width,
            height=job.height,
        )
        if compiled is not None:
            compiled.admit(kwargs)
        if on_step is not None:
            kwargs["callback_on_step_end"] = progress.callback
        with torch.inference_mode():
            images += pipe(**kwargs).images
        if progress.stopped:
            break
        progress.calls_done += 1
    return images


class _Progress:
    """The pipeline callback of a job's calls: steps counted over all of them, and the stop asked."""

    def __init__(self, on_step: StepHook | None, steps: int, calls: int) -> None:
        self.on_step, self.steps, self.calls = on_step, steps, calls
        self.calls_done = 0
        self.stopped = False

    def callback(self, p: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        done = self.calls_done * self.steps + step + 1
        if self.on_step is not None and self.on_step(done, self.steps * self.calls):
            p._interrupt = True
            self.stopped = True
        return callback_kwargs


def encode(image: Image.Image, fmt: str) -> tuple[bytes, str]:
    """Image bytes in ``png``, ``jpeg`` or ``webp``, and their content type."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=90)
    elif fmt == "webp":
        image.save(buf, format="WEBP", quality=90)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue(), _CONTENT_TYPES[fmt]
