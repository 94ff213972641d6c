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

from common.families import Family, family_of
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


def load_base(settings: WorkerSettings) -> DiffusionPipeline:
    """Load the base pipeline once, on the configured device and dtype."""
    device = resolve_device(settings.device)
    path = download_base(settings)
    family = family_of(DiffusionPipeline.load_config(path).get("_class_name"))
    dtype = resolve_dtype(settings.dtype, device, family)
    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, use_safetensors=True)
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
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
    compiled: CompiledDenoiser | None = None,
) -> Image.Image:
    """Run the pipeline for one job; the same job (seed included) gives the same image.

    ``steps`` and ``size`` (width and height) are the worker's defaults for a job naming none;
    ``None`` size: the pipeline's own. Parameters the family does not take raise ``InvalidRequest``,
    and so does a shape a ``compiled`` denoiser was not warmed up at, when it refuses new ones.
    """
    steps = job.num_inference_steps or steps
    kwargs = family.call_kwargs(
        job.prompt,
        steps=steps,
        seed=job.seed,
        size=size,
        guidance_scale=job.guidance_scale,
        negative_prompt=job.negative_prompt,
        width=job.width,
        height=job.height,
    )
    if compiled is not None:
        compiled.admit(kwargs)
    if on_step is not None:

        def _callback(p: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step(step + 1, steps):
                p._interrupt = True
            return callback_kwargs

        kwargs["callback_on_step_end"] = _callback
    with torch.inference_mode():
        return pipe(**kwargs).images[0]


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
