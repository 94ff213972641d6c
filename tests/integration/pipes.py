"""The tiny SDXL pipeline as the engine tests load it, run it and compare its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline


def load_pipe(zoo: Path, dtype: torch.dtype = torch.float32) -> Any:
    pipe = StableDiffusionXLPipeline.from_pretrained(zoo / "tiny/sdxl-base", dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: Any, prompt: str = "a cat") -> np.ndarray:
    out = pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    return np.asarray(out.images)


def snapshot(pipe: Any) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{name}": tensor.detach().clone()
        for part in ("unet", "text_encoder", "text_encoder_2", "vae")
        for name, tensor in getattr(pipe, part).state_dict().items()
    }


def changed(pipe: Any, reference: dict[str, torch.Tensor]) -> list[str]:
    now = snapshot(pipe)
    assert now.keys() == reference.keys()
    return [name for name, tensor in now.items() if not torch.equal(tensor, reference[name])]
