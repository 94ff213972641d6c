"""Flux LoRA files under Black Forest Labs' own module names: kohya/sd-scripts and XLabs.

diffusers reads both (``_convert_kohya_flux_lora_to_diffusers``,
``_convert_xlabs_flux_lora_to_diffusers``) and writes neither, so these tables spell, for each
BFL module a trainer saves, the diffusers modules its reader maps it to; shapes come from those
modules. A fused ``qkv`` is one down matrix and the three projections' up matrices stacked, as
the trainers save it. kohya's ``single_blocks_N_linear1`` (fused q, k, v and ``proj_mlp``) is
written only for a transformer of FLUX.1's real widths: the reader splits it at those widths
(3 x 3072 + 12288), which a tiny transformer cannot have (the benchmark's real-width blocks do).
"""

from __future__ import annotations

import math

import torch

#: kohya double-block module -> the diffusers modules (in ``transformer_blocks.N``) it stands for.
KOHYA_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",),
}
#: kohya single-block module -> diffusers modules (in ``single_transformer_blocks.N``).
KOHYA_SINGLE = {"linear2": ("proj_out",), "modulation_lin": ("norm.linear",)}
#: kohya's fused single-block input; diffusers' reader splits it at these (FLUX.1's) widths.
KOHYA_LINEAR1 = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
FLUX1_LINEAR1_WIDTHS = (3072, 3072, 3072, 12288)
#: XLabs processor LoRA (double blocks) -> diffusers modules: ``1`` the image stream, ``2`` the text.
XLABS_DOUBLE = {
    "qkv_lora1": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "proj_lora1": ("attn.to_out.0",),
    "qkv_lora2": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "proj_lora2": ("attn.to_add_out",),
}


def random_pair(out_features: int, in_features: int, rank: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(down, up): random, with a product about as large as the base weight it is added to."""
    down = torch.randn((rank, in_features), generator=gen) / math.sqrt(in_features)
    up = torch.randn((out_features, rank), generator=gen) * 2.0 / math.sqrt(rank)
    return down, up


def _shape(block: torch.nn.Module, modules: tuple[str, ...]) -> tuple[int, int]:
    """(out, in) of the fused module standing for ``modules`` of one block."""
    linears = [block.get_submodule(name) for name in modules]
    assert all(isinstance(m, torch.nn.Linear) for m in linears)
    return sum(m.out_features for m in linears), linears[0].in_features


def single_table(transformer: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    """The kohya single-block modules this transformer can carry: ``linear1`` at FLUX.1's widths only."""
    blocks = transformer.single_transformer_blocks
    widths = tuple(blocks[0].get_submodule(m).out_features for m in KOHYA_LINEAR1["linear1"]) if blocks else ()
    return {**KOHYA_LINEAR1, **KOHYA_SINGLE} if widths == FLUX1_LINEAR1_WIDTHS else KOHYA_SINGLE


def kohya_flux_state(
    transformer: torch.nn.Module, rank: int, alpha: float, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """``lora_unet_double_blocks_N_img_attn_qkv.lora_down.weight``... with an ``alpha`` per module."""
    out: dict[str, torch.Tensor] = {}
    groups = (
        ("double_blocks", transformer.transformer_blocks, KOHYA_DOUBLE),
        ("single_blocks", transformer.single_transformer_blocks, single_table(transformer)),
    )
    for kind, blocks, table in groups:
        for i, block in enumerate(blocks):
            for name, modules in table.items():
                down, up = random_pair(*_shape(block, modules), rank, gen)
                key = f"lora_unet_{kind}_{i}_{name}"
                out |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}
                out[f"{key}.alpha"] = torch.tensor(float(alpha))
    return out


def xlabs_state(transformer: torch.nn.Module, rank: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``double_blocks.N.processor.qkv_lora1.down.weight``...; XLabs files carry no alpha."""
    out: dict[str, torch.Tensor] = {}
    for i, block in enumerate(transformer.transformer_blocks):
        for name, modules in XLABS_DOUBLE.items():
            down, up = random_pair(*_shape(block, modules), rank, gen)
            key = f"double_blocks.{i}.processor.{name}"
            out |= {f"{key}.down.weight": down, f"{key}.up.weight": up}
    return out
