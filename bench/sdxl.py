"""SDXL base 1.0 shapes, built offline: the UNet and both text encoders with seeded random weights,
and LoRA files for them in diffusers and kohya formats. Used by ``bench.swap``.

Every tensor is filled from a seed derived from its name, so "fresh" values can be recomputed at
any time (the drift check) without keeping a second copy of the model in memory.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import torch

# fmt: off
UNET = dict(  # SDXL base 1.0 (docs/BASELINE.md)
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
CLIP = dict(vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu")
CLIP_L = dict(CLIP, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
CLIP_G = dict(CLIP, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu")
# fmt: on
DEFAULT_RANKS = "8,32"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
WEIGHTS = "pytorch_lora_weights.safetensors"


# --- the model: built on the meta device, then filled in place from per-tensor seeds -------------


def build_pipe(device: str, dtype: torch.dtype, text_encoders: bool) -> Any:
    """The SDXL UNet (and text encoders) with seeded random weights; device "meta" for shapes only."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.set_default_dtype(dtype)  # so that to_empty allocates the final dtype, never fp32 first
    try:
        with torch.device("meta"):
            parts = {
                "unet": UNet2DConditionModel(**UNET),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L)) if text_encoders else None,
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)) if text_encoders else None,
            }
    finally:
        torch.set_default_dtype(torch.float32)
    for name, model in parts.items():
        if model is not None and device != "meta":
            model.to_empty(device=device).eval().requires_grad_(False)
            fill(model, name)
    return StableDiffusionXLPipeline(
        vae=None, tokenizer=None, tokenizer_2=None, scheduler=EulerDiscreteScheduler(), **parts
    )


def describe(text_encoders: bool) -> str:
    return "UNet and both text encoders" if text_encoders else "UNet only"


def hotswap(pipe: Any, path: Path, started: bool) -> None:
    """diffusers' hotswap into the UNet's one adapter slot: UNet only (diffusers refuses text encoders)."""
    state, alphas = pipe.lora_state_dict(str(path.parent), weight_name=path.name, unet_config=pipe.unet.config)
    pipe.load_lora_into_unet(state, alphas, pipe.unet, adapter_name="default_0", _pipeline=pipe, hotswap=started)


def _fresh(name: str, tensor: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(device=tensor.device).manual_seed(zlib.crc32(name.encode()))
    out = torch.empty_like(tensor)
    return out.normal_(0.0, 0.02, generator=gen) if tensor.dim() > 1 else out.uniform_(-0.02, 0.02, generator=gen)


def fill(model: torch.nn.Module, prefix: str, only: set[str] | None = None) -> None:
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if only is None or name.rsplit(".", 1)[0] in only:
                tensor.copy_(_fresh(f"{prefix}.{name}", tensor))


def targeted(pipe: Any) -> dict[str, set[str]]:
    """Per component, the module paths LoRAs target (the only weights any method may change)."""
    out: dict[str, set[str]] = {}
    for part in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, part, None)
        if model is not None:
            ends = UNET_TARGETS if part == "unet" else TEXT_TARGETS
            out[part] = {n for n, _ in model.named_modules() if n.endswith(ends)}
    return out


def drift(pipe: Any, modules: dict[str, set[str]]) -> tuple[float, int]:
    """Max abs difference of targeted weights and biases from their fresh values, and tensors changed."""
    worst, changed = 0.0, 0
    for part, names in modules.items():
        for name, tensor in getattr(pipe, part).state_dict().items():
            if name.rsplit(".", 1)[0] in names:
                diff = (tensor.float() - _fresh(f"{part}.{name}", tensor).float()).abs().max().item()
                worst, changed = max(worst, diff), changed + (diff > 0)
    return worst, changed


# --- LoRA files ----------------------------------------------------------------------------------


def write_loras(root: Path, rank: int, fmt: str, text_encoders: bool, n: int = 2) -> list[Path]:
    """n LoRA files of one rank and format for the SDXL shapes (computed on the meta device)."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya

    pipe = build_pipe("meta", torch.float16, text_encoders)
    paths = []
    for i in range(n):
        gen = torch.Generator().manual_seed(rank * 100 + i)
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for part, names in targeted(pipe).items():
            model = getattr(pipe, part)
            prefix = "text_model." if part == "text_encoder" else ""  # Hub LoRAs keep CLIP's text_model.
            state = {}
            for name in sorted(names):
                out_f, in_f = model.get_submodule(name).weight.shape
                state[f"{prefix}{name}.lora_A.weight"] = (torch.randn(rank, in_f, generator=gen) / in_f**0.5).half()
                state[f"{prefix}{name}.lora_B.weight"] = (torch.randn(out_f, rank, generator=gen) * 0.01).half()
            parts[part] = state
        folder = root / f"r{rank}-{fmt}-{i}"
        folder.mkdir(parents=True)
        if fmt == "diffusers":
            layers = {f"{p}_lora_layers": convert_state_dict_to_diffusers(s) for p, s in parts.items()}
            StableDiffusionXLPipeline.save_lora_weights(folder, **layers, weight_name=WEIGHTS)
        else:
            from safetensors.torch import save_file

            flat = {f"{p}.{k}": v for p, s in parts.items() for k, v in s.items()}
            kohya = convert_state_dict_to_kohya(flat)
            alphas = {k: torch.tensor(rank / 2.0) for k in kohya if k.endswith(".alpha")}  # kohya: alpha = rank/2
            save_file({**kohya, **alphas}, folder / WEIGHTS)
        paths.append(folder / WEIGHTS)
    return paths
