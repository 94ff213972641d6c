"""Pipeline families inside the worker: ``common.families`` plus what needs diffusers.

Read from diffusers where it knows it: the components that carry LoRAs are the loader mixin's
``_lora_loadable_modules``; the loader mixin (found in the pipeline class's MRO) fixes the shape
of its ``lora_state_dict`` answer, which is not the same across mixins:

- ``StableDiffusionLoraLoaderMixin`` / ``StableDiffusionXLLoraLoaderMixin``: always
  ``(state_dict, alphas[, metadata])``, and they take the UNet's config (``unet_config``) to map
  kohya files that use the original Stability block names (``input_blocks...``);
- ``FluxLoraLoaderMixin``: alphas only with ``return_alphas=True`` (its kohya and XLabs
  converters fold alpha into the weights and answer ``None``);
- the newer mixins (SD3, Qwen-Image, Flux.2...): ``(state_dict[, metadata])``, never alphas.

The same table builds the pipeline call of a job: which parameters the family takes, its
default steps and guidance; and names the denoiser modules LoRAs usually target
(``LORA_TARGETS``), which get fixed-shape unfused buffers when the denoiser is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from common.families import FAMILIES, Family, check_parameters, family_of


@dataclass(frozen=True)
class LoaderShape:
    """How one LoRA loader mixin's ``lora_state_dict`` is asked and answers."""

    alphas: Literal["always", "on_request", "never"]
    #: It takes ``unet_config`` (the sgm block-name mapping of SD's kohya converter).
    takes_unet_config: bool = False


#: By loader mixin class name; a mixin not listed answers like diffusers' newer ones.
LOADERS: dict[str, LoaderShape] = {
    "StableDiffusionLoraLoaderMixin": LoaderShape("always", takes_unet_config=True),
    "StableDiffusionXLLoraLoaderMixin": LoaderShape("always", takes_unet_config=True),
    "FluxLoraLoaderMixin": LoaderShape("on_request"),
}
NEWER_LOADERS = LoaderShape("never")

#: The attention and feed-forward projections of the transformer blocks, which the common trainers
#: target (diffusers' scripts: attention; kohya and ai-toolkit: every linear of a block).
_UNET_TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0", ".proj_in", ".proj_out", ".ff.net.0.proj", ".ff.net.2")
#: By family name: endings of the denoiser module names LoRAs usually target.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "sdxl": _UNET_TARGETS,
    "sd15": _UNET_TARGETS,
    "flux": (
        *(".to_q", ".to_k", ".to_v", ".to_out.0", ".add_q_proj", ".add_k_proj", ".add_v_proj", ".to_add_out"),
        *(".ff.net.0.proj", ".ff.net.2", ".ff_context.net.0.proj", ".ff_context.net.2"),
        # single blocks' MLP and output, the final projection, the blocks' modulation (kohya, ai-toolkit)
        *(".proj_mlp", ".proj_out", ".norm.linear", ".norm1.linear", ".norm1_context.linear"),
    ),
}
_ATTENTION = (".to_q", ".to_k", ".to_v", ".to_out.0")


@dataclass(frozen=True)
class PipelineFamily:
    """One pipeline class's family, as the engine, the parser, calibration and ``generate`` read it."""

    facts: Family
    pipeline_cls: Any
    #: Pipeline components a LoRA may carry parts for, the denoiser first.
    components: tuple[str, ...]
    loader: LoaderShape

    @property
    def denoiser(self) -> str:
        return self.facts.denoiser

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Endings of the denoiser modules LoRAs usually target (attention only for a family not listed)."""
        return LORA_TARGETS.get(self.facts.name, _ATTENTION)

    def lora_state_dict(self, weights: Path, denoiser_config: Any = None) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """``(state_dict, alphas, metadata)`` of a local LoRA file, through the pipeline's own converters."""
        kwargs: dict[str, Any] = {}
        if self.loader.alphas == "on_request":
            kwargs["return_alphas"] = True
        if self.loader.takes_unet_config:
            kwargs["unet_config"] = denoiser_config
        answer = self.pipeline_cls.lora_state_dict(
            str(weights.parent),
            weight_name=weights.name,
            use_safetensors=True,
            local_files_only=True,
            return_lora_metadata=True,
            **kwargs,
        )
        if self.loader.alphas == "never":
            state_dict, metadata = answer
            return state_dict, {}, metadata or {}
        state_dict, alphas, metadata = answer
        return state_dict, alphas or {}, metadata or {}

    def call_kwargs(
        self,
        prompt: str,
        *,
        steps: int,
        seed: int | list[int],
        size: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of the pipeline call; refuses (422) what the family does not take.

        ``seed``: one image; a list of seeds: one image per seed in one call, each drawn from its
        own generator (so its noise is the noise of that seed alone).
        """
        check_parameters(self.facts, negative_prompt=negative_prompt, width=width, height=height)
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "num_inference_steps": steps,
            "guidance_scale": self.facts.default_guidance if guidance_scale is None else guidance_scale,
        }
        # A CPU generator draws the same noise on every device.
        if isinstance(seed, list):
            kwargs["generator"] = [torch.Generator(device="cpu").manual_seed(s) for s in seed]
            kwargs["num_images_per_prompt"] = len(seed)
        else:
            kwargs["generator"] = torch.Generator(device="cpu").manual_seed(seed)
        if negative_prompt is not None:
            kwargs["negative_prompt"] = negative_prompt
        for name, value in (("width", width), ("height", height)):
            if value is not None or size is not None:
                kwargs[name] = value if value is not None else size
        return kwargs


def pipeline_family(pipeline_cls: Any) -> PipelineFamily:
    """The family of a diffusers pipeline class; ``ValueError`` for a class lorafarm does not serve."""
    facts = family_of(pipeline_cls.__name__)
    if facts is None:
        raise ValueError(f"lorafarm serves no pipeline family {pipeline_cls.__name__}; known: {sorted(FAMILIES)}")
    mixin = next((k.__name__ for k in pipeline_cls.__mro__ if k.__name__ in LOADERS), None)
    components = tuple(getattr(pipeline_cls, "_lora_loadable_modules", ()))
    if not components or components[0] != facts.denoiser:
        raise ValueError(f"{pipeline_cls.__name__} loads LoRAs into {components}, not into its {facts.denoiser} first")
    return PipelineFamily(facts, pipeline_cls, components, LOADERS[mixin] if mixin else NEWER_LOADERS)
