"""Tiny, randomly initialised diffusers pipelines of real architectures (SDXL, SD 1.5, FLUX.1).

They are small enough to build in a second and to generate a 64x64 image in 2 steps on CPU,
yet have the module names and the text encoders of the real models, so LoRAs made for them use
the same keys as LoRAs for the real ones. Every tokenizer is built here from a vocabulary in
code (byte-level BPE for CLIP, Unigram for T5): nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TEXT_HIDDEN = {"clip_l": 32, "clip_g": 64, "t5": 32}  # hidden sizes of the text encoders
IMAGE_SIZE = 64
#: FLUX.1's latents: 16 channels, packed in 2x2 patches into the transformer's 64 input features.
FLUX_LATENT_CHANNELS = 16
T5_MAX_LENGTH = 512  # FLUX.1-dev's max_sequence_length


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for bytes (bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def make_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: every character is a token. Needs no download."""
    symbols = _byte_symbols()
    tokens = [BOS, EOS, *symbols, *(s + "</w>" for s in symbols)]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def make_t5_tokenizer() -> T5Tokenizer:
    """A Unigram T5 tokenizer over single characters (with and without the word-start mark ``▁``).

    Built from a vocabulary in code, so nothing is downloaded; it saves as ``tokenizer.json``.
    """
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(f"\u2581{c}", -4.0) for c in chars] + [(c, -5.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _text_config(tokenizer: CLIPTokenizer, hidden: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )


def _vae() -> AutoencoderKL:
    # Two blocks: latents are half the image size, so a 64x64 image is a 32x32 latent.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def _scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def _unet(**extra: Any) -> UNet2DConditionModel:
    # sample_size is what the pipeline multiplies by the VAE factor (2) for its default size: 64.
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        **extra,
    )


def make_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny SDXL-architecture pipeline: text_time conditioning, two CLIP text encoders."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer, TEXT_HIDDEN["clip_l"]))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, TEXT_HIDDEN["clip_g"]))
    addition_time_embed_dim = 8
    unet = _unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        # six micro-conditioning numbers (sizes, crop, target) plus the pooled text embedding
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + TEXT_HIDDEN["clip_g"],
        transformer_layers_per_block=(1, 1),
        cross_attention_dim=TEXT_HIDDEN["clip_l"] + TEXT_HIDDEN["clip_g"],
    )
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=make_tokenizer(),
        unet=unet,
        scheduler=_scheduler(),
    )


def _flux_vae() -> AutoencoderKL:
    # FLUX.1's VAE shape (16 latent channels, no quant convs, its shift and scale), two blocks wide.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=FLUX_LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


def _t5(tokenizer: T5Tokenizer) -> T5EncoderModel:
    hidden = TEXT_HIDDEN["t5"]
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=hidden,
        d_kv=8,
        d_ff=2 * hidden,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX.1's T5-XXL
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def make_flux(seed: int = 0) -> FluxPipeline:
    """A tiny FLUX.1-dev-architecture pipeline: 2 double- and 2 single-stream blocks, CLIP-L and T5."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = make_tokenizer(), make_t5_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer, TEXT_HIDDEN["clip_l"]))
    text_encoder_2 = _t5(tokenizer_2)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * FLUX_LATENT_CHANNELS,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN["t5"],
        pooled_projection_dim=TEXT_HIDDEN["clip_l"],
        guidance_embeds=True,  # -dev: guidance is an input of the model
        axes_dims_rope=(4, 6, 6),  # sums to the head size, as (16, 56, 56) does for 128
    )
    # FLUX.1-dev's schedule: shift by image sequence length.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_flux_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def make_sd15(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny SD 1.5-architecture pipeline, no safety checker."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer, TEXT_HIDDEN["clip_l"]))
    unet = _unet(attention_head_dim=8, cross_attention_dim=TEXT_HIDDEN["clip_l"])
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe: Any, folder: Path) -> None:
    """Save as safetensors, the way a real base repo holds it."""
    pipe.save_pretrained(folder, safe_serialization=True)
