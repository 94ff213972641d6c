"""Parse a LoRA file once into one canonical form: target module -> (down, up, scale).

Every Hub format (diffusers, PEFT, kohya with alphas, XLabs, text-encoder parts, pivotal-tuning
embeddings) goes through the pipeline class's own ``lora_state_dict`` (asked the way its family's
loader wants, ``worker.families``) and diffusers' key converters; nothing here re-implements a
converter. Parsing touches no pipeline and keeps no
state, so it is safe to run in a background thread while another job generates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from common.errors import AdapterCorrupt, AdapterIncompatible, AdapterTooLarge, UnsafeAdapterFormat
from worker.families import PipelineFamily
from worker.naming import EMBEDDING_COMPONENTS, alpha_key, component_of, peft_module, target_name


@dataclass(frozen=True)
class LoraLayer:
    """One low-rank delta: ``W += scale * up @ down`` (conv kernels flatten to 2-D for the product)."""

    down: torch.Tensor  # (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass(frozen=True)
class ParsedAdapter:
    """An adapter in canonical form; targets are ``"<component>.<module path>"``."""

    key: str
    layers: Mapping[str, LoraLayer]
    embeddings: Mapping[str, torch.Tensor] | None = None  # component -> (tokens, hidden)
    tokens: tuple[str, ...] = ()
    nbytes: int = field(default=0)

    @property
    def rank(self) -> int:
        return max((layer.rank for layer in self.layers.values()), default=0)


def read_adapter(
    weights: Path,
    *,
    key: str,
    embeddings: Path | None = None,
    max_bytes: int,
    max_rank: int,
    family: PipelineFamily,
    denoiser_config: Any = None,
    tokens: list[str] | None = None,
) -> ParsedAdapter:
    """Read, check and normalise one adapter file (and its pivotal embeddings, if any).

    ``denoiser_config``: the base's UNet config, which SD loaders need to map kohya files that use
    the original Stability block names (``input_blocks...``).
    """
    files = [weights] if embeddings is None else [weights, embeddings]
    for path in files:
        if path.suffix != ".safetensors":
            raise UnsafeAdapterFormat(f"{key}: {path.name} is not .safetensors; pickle is never loaded")
    size = sum(path.stat().st_size for path in files)
    if size > max_bytes:
        raise AdapterTooLarge(f"{key}: {size} bytes is over the cap of {max_bytes}")
    for path in files:
        _check_header(path, key)
    try:
        state_dict, alphas, metadata = family.lora_state_dict(weights, denoiser_config)
    except (SafetensorError, OSError) as exc:
        raise AdapterCorrupt(f"{key}: cannot read weights: {exc}") from exc
    except Exception as exc:  # diffusers' converters raise ValueError, KeyError... on odd files
        raise AdapterIncompatible(f"{key}: diffusers cannot convert its keys: {exc}") from exc
    layers = _canonical_layers(key, state_dict, alphas, metadata, family.components)
    if not layers:
        raise AdapterIncompatible(f"{key}: no LoRA layers in {weights.name}")
    emb = _read_embeddings(embeddings, key) if embeddings is not None else None
    _check_values(key, layers, emb, max_rank)
    nrows = {int(t.shape[0]) for t in (emb or {}).values()}
    names = tuple(tokens) if tokens else tuple(f"<s{i}>" for i in range(max(nrows, default=0)))
    if emb and (len(nrows) != 1 or len(names) != nrows.pop()):
        raise AdapterCorrupt(f"{key}: embeddings and tokens disagree in number")
    return ParsedAdapter(key, layers, emb, names if emb else (), adapter_nbytes(layers, emb))


def adapter_nbytes(layers: Mapping[str, LoraLayer], emb: Mapping[str, torch.Tensor] | None) -> int:
    """Bytes held by an adapter's tensors."""
    total = sum(layer.down.nbytes + layer.up.nbytes for layer in layers.values())
    return total + sum(t.nbytes for t in (emb or {}).values())


def validate(adapter: ParsedAdapter, modules: Mapping[str, torch.nn.Module]) -> None:
    """Raise AdapterIncompatible unless every target is a Linear/Conv2d of the base that the delta fits."""
    for target, layer in adapter.layers.items():
        module = modules.get(target)
        if module is None:
            raise AdapterIncompatible(f"{adapter.key}: the base has no layer {target}")
        weight = weight_of(module)
        if isinstance(module, torch.nn.Conv2d):
            fits = (
                module.groups == 1
                and module.padding_mode == "zeros"
                and layer.down.shape[1:] == weight.shape[1:]
                and layer.up.shape[2:] == (1, 1)
            )
        else:
            fits = isinstance(module, torch.nn.Linear) and layer.down.shape[1:] == weight.shape[1:]
        if not fits or layer.up.shape[0] != weight.shape[0] or layer.up.dim() != layer.down.dim():
            raise AdapterIncompatible(
                f"{adapter.key}: {target} delta {tuple(layer.up.shape[:1])}x{tuple(layer.down.shape[1:])} "
                f"does not fit {type(module).__name__} {tuple(weight.shape)}"
            )


def weight_of(module: torch.nn.Module) -> torch.Tensor:
    """The weight tensor of a Linear/Conv2d, detached (writes to it change the module)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()


def _check_header(path: Path, key: str) -> None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # safetensors raises several types for a bad header
        raise AdapterCorrupt(f"{key}: {path.name} has no valid safetensors header: {exc}") from exc


def _read_embeddings(path: Path, key: str) -> dict[str, torch.Tensor]:
    try:
        raw = load_file(str(path))
    except Exception as exc:
        raise AdapterCorrupt(f"{key}: cannot read {path.name}: {exc}") from exc
    unknown = set(raw) - set(EMBEDDING_COMPONENTS)
    if unknown or not raw:
        raise AdapterIncompatible(f"{key}: unknown embedding entries {sorted(unknown)}")
    emb = {EMBEDDING_COMPONENTS[name]: t if t.dim() == 2 else t.reshape(1, -1) for name, t in raw.items()}
    if len(emb) != len(raw):
        raise AdapterCorrupt(f"{key}: two embedding entries for one text encoder")
    return emb


def _canonical_layers(
    key: str,
    state_dict: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float],
    metadata: Mapping[str, Any],
    components: Sequence[str],
) -> dict[str, LoraLayer]:
    stray = [k for k in state_dict if component_of(k) not in components]
    if stray:
        # diffusers would silently drop these; serving half an adapter is worse than refusing it
        raise AdapterIncompatible(f"{key}: keys outside {list(components)}, e.g. {stray[0]}")
    layers: dict[str, LoraLayer] = {}
    for component in components:
        prefix = f"{component}."
        sub = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        if not sub:
            continue
        meta = {k.removeprefix(prefix): v for k, v in metadata.items() if k.startswith(prefix)}
        config = _lora_config(key, meta) if meta else None
        for module, (old_a, old_b) in _pair_modules(key, component, list(sub)).items():
            down, up = sub[old_a], sub[old_b]
            rank = int(down.shape[0])
            if up.dim() != down.dim() or up.dim() not in (2, 4) or up.shape[1] != rank:
                raise AdapterCorrupt(f"{key}: {component}.{module} has mismatched down/up shapes")
            alpha = alphas.get(alpha_key(f"{prefix}{old_a}"))
            scale = _scale(key, module, rank, alpha, config)
            layers[target_name(component, module)] = LoraLayer(down, up, scale)
    return layers


def _pair_modules(key: str, component: str, names: list[str]) -> dict[str, tuple[str, str]]:
    """Map each module to its (lora_A, lora_B) keys as stored, renaming through diffusers' converters."""
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    # The converters only rename keys, so converting {key: key} yields new name -> stored name.
    renamed: dict[str, str] = {k: k for k in names}
    if not all(peft_module(k) for k in names):
        try:
            if component == "unet":
                renamed = convert_unet_state_dict_to_peft(renamed)
            else:
                renamed = convert_state_dict_to_peft(convert_state_dict_to_diffusers(renamed))
        except ValueError as exc:
            raise AdapterIncompatible(f"{key}: unrecognised {component} key format: {exc}") from exc
    pairs: dict[str, dict[str, str]] = {}
    for new, old in renamed.items():
        parsed = peft_module(new)
        if parsed is None:
            raise AdapterIncompatible(f"{key}: unsupported entry {component}.{old} (DoRA, bias or LyCORIS?)")
        module, side = parsed
        pairs.setdefault(module, {})[side] = old
    for module, sides in pairs.items():
        if set(sides) != {"A", "B"}:
            raise AdapterCorrupt(f"{key}: {component}.{module} lacks its lora_A or lora_B")
    return {module: (sides["A"], sides["B"]) for module, sides in pairs.items()}


def _lora_config(key: str, meta: Mapping[str, Any]) -> Any:
    from peft import LoraConfig

    try:
        config = LoraConfig(**meta)
    except (TypeError, ValueError) as exc:
        raise AdapterCorrupt(f"{key}: bad lora_adapter_metadata: {exc}") from exc
    if config.use_dora or config.lora_bias:
        raise AdapterIncompatible(f"{key}: DoRA and LoRA bias are not supported")
    return config


def _scale(key: str, module: str, rank: int, alpha: float | None, config: Any) -> float:
    """alpha / rank as PEFT computes it; 1.0 when the file carries no alpha."""
    if config is not None:
        from peft.utils.other import get_pattern_key

        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
        a = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
        if r != rank:
            raise AdapterCorrupt(f"{key}: {module} has rank {rank}, its metadata says {r}")
        return float(a / math.sqrt(r) if config.use_rslora else a / r)
    return 1.0 if alpha is None else float(alpha) / rank


def _check_values(
    key: str, layers: Mapping[str, LoraLayer], emb: Mapping[str, torch.Tensor] | None, max_rank: int
) -> None:
    for target, layer in layers.items():
        if layer.rank > max_rank:
            raise AdapterTooLarge(f"{key}: {target} has rank {layer.rank}, over the cap of {max_rank}")
        if not (torch.isfinite(layer.down).all() and torch.isfinite(layer.up).all()):
            raise AdapterCorrupt(f"{key}: {target} holds NaN or Inf")
        if not math.isfinite(layer.scale):
            raise AdapterCorrupt(f"{key}: {target} has a non-finite alpha")
    for name, tensor in (emb or {}).items():
        if not torch.isfinite(tensor).all():
            raise AdapterCorrupt(f"{key}: {name} embeddings hold NaN or Inf")
