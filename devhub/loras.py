"""LoRA weight files for the tiny bases, in the formats found on the Hub.

One writer, `write_lora`, serves every LoRA repo of the zoo. Key names come from peft
(`get_peft_model_state_dict` on a copy of the base module), format conversions from
diffusers' own `state_dict_utils`, so the files look like what real training scripts save.
Where diffusers reads a format but cannot write it (kohya under Stability's or Black Forest
Labs' module names, XLabs), the writer spells the names its reader expects (`devhub.bfl`).
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file

from devhub.bfl import kohya_flux_state, xlabs_state

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PICKLE_NAME = "pytorch_lora_weights.bin"
EMBEDDINGS_NAME = "embeddings.safetensors"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
#: diffusers' DreamBooth-LoRA Flux targets (attention with its `add_*` text stream, both
#: feed-forwards) plus the single-stream blocks' `proj_mlp`/`proj_out`, as most Hub Flux LoRAs.
FLUX_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
    "proj_out",
)
#: What the zoo's LoRAs target in each pipeline component.
TARGETS = {
    "unet": UNET_TARGETS,
    "transformer": FLUX_TARGETS,
    "text_encoder": TEXT_TARGETS,
    "text_encoder_2": TEXT_TARGETS,
}
_DIFFUSERS_BLOCK = re.compile(
    r"lora_unet_(?P<kind>down_blocks|up_blocks|mid_block)_(?:(?P<block>\d+)_)?"
    r"(?P<part>resnets|attentions)_(?P<layer>\d+)_(?P<rest>.+)"
)
CANARY_ENV = "LORAFARM_PICKLE_CANARY"
CANARY_DEFAULT = "/tmp/lorafarm-pickle-canary"

Format = Literal["diffusers", "peft", "kohya", "kohya-sgm", "kohya-flux", "xlabs"]
Damage = Literal["misfit", "badkeys", "nan", "corrupt", "pickle"]


@dataclass(frozen=True)
class LoraSpec:
    """What to write: format, rank, alpha, which parts, and an optional deliberate defect."""

    seed: int
    format: Format = "diffusers"
    rank: int = 4
    alpha: float | None = None  # None: alpha = rank, scale 1
    text_encoders: bool = False
    pivotal_tokens: tuple[str, ...] = ()
    damage: Damage | None = None


class Templates:
    """Key names and shapes of a LoRA for each part of one base, computed once per base.

    The parts are the pipeline's LoRA-loadable components as diffusers lists them, the denoiser
    (UNet or transformer) first.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        names = [n for n in type(pipe)._lora_loadable_modules if getattr(pipe, n, None) is not None]
        self.parts: dict[str, torch.nn.Module] = {name: getattr(pipe, name) for name in names}
        self.denoiser = names[0]
        self._shapes: dict[tuple[str, int], dict[str, tuple[int, ...]]] = {}

    def shapes(self, part: str, rank: int) -> dict[str, tuple[int, ...]]:
        """PEFT keys (`<module>.lora_A.weight`...) of `part` and their shapes for `rank`."""
        if (part, rank) not in self._shapes:
            config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(TARGETS[part]))
            model = inject_adapter_in_model(config, copy.deepcopy(self.parts[part]))
            state = get_peft_model_state_dict(model)
            if part == "text_encoder" and not hasattr(self.parts[part], "text_model"):
                # transformers 5's CLIPTextModel dropped its `text_model.` level; LoRAs on the Hub
                # (and kohya's `lora_te1_text_model_...`) still carry it, and diffusers accepts both.
                state = {f"text_model.{k}": v for k, v in state.items()}
            self._shapes[part, rank] = {k: tuple(v.shape) for k, v in sorted(state.items())}
        return self._shapes[part, rank]

    def embedding_sizes(self) -> dict[str, int]:
        """Hidden size of each text encoder, under the names the SDXL pivotal-tuning script uses."""
        sizes = {"clip_l": self.parts["text_encoder"].config.hidden_size}
        if "text_encoder_2" in self.parts:
            sizes["clip_g"] = self.parts["text_encoder_2"].config.hidden_size
        return sizes


def canonicalise(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys.

    safetensors writes `__metadata__` in hash-map order, which changes from process to process
    once there are two entries: sorting keeps the zoo's bytes (and so its commit shas) stable.
    """
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes with spaces
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])


def _random_part(shapes: dict[str, tuple[int, ...]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random down (A) and non-zero up (B) matrices whose product is as large as the base weights."""
    out = {}
    for key, shape in shapes.items():
        if ".lora_A." in key:
            out[key] = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        else:
            out[key] = torch.randn(shape, generator=gen) * 2.0 / math.sqrt(shape[1])
    return out


def _damage_shapes(shapes: dict[str, tuple[int, ...]], damage: Damage | None) -> dict[str, tuple[int, ...]]:
    if damage == "misfit":  # made for a UNet twice as wide
        return {k: (v[0] * 2, v[1]) if ".lora_B." in k else (v[0], v[1] * 2) for k, v in shapes.items()}
    if damage == "badkeys":  # attention modules the base does not have (it has attn1 and attn2)
        return {
            k.replace(".attn1.", ".attn7.").replace(".attn2.", ".attn8.").replace(".self_attn.", ".cross_attn."): v
            for k, v in shapes.items()
        }
    return shapes


def peft_state(templates: Templates, spec: LoraSpec) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT-named tensors per part (`unet`, `text_encoder`, `text_encoder_2`)."""
    gen = torch.Generator().manual_seed(spec.seed)
    parts = list(templates.parts) if spec.text_encoders else [templates.denoiser]
    state = {}
    for part in parts:
        shapes = _damage_shapes(templates.shapes(part, spec.rank), spec.damage)
        state[part] = _random_part(shapes, gen)
    if spec.damage == "nan":
        denoiser = state[templates.denoiser]
        first_up = next(k for k in denoiser if ".lora_B." in k)
        denoiser[first_up].fill_(float("nan"))
        last_up = [k for k in denoiser if ".lora_B." in k][-1]
        denoiser[last_up][0, 0] = float("inf")
    return state


def _metadata(spec: LoraSpec, part: str) -> dict[str, Any]:
    """The adapter config diffusers stores in the safetensors header (sorted: same bytes every build)."""
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha or spec.rank, target_modules=sorted(TARGETS[part]))
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}


def _save_diffusers(
    folder: Path, templates: Templates, state: dict[str, dict[str, torch.Tensor]], spec: LoraSpec
) -> None:
    layers = {f"{part}_lora_layers": part_state for part, part_state in state.items()}
    metadata: dict[str, Any] = {}
    if spec.format == "diffusers":  # what diffusers' training scripts save: `lora.down` / `lora.up` keys
        layers = {k: convert_state_dict_to_diffusers(v) for k, v in layers.items()}
    else:  # PEFT keys, with lora_alpha in the header, as `save_lora_weights(..., *_adapter_metadata)` writes
        metadata = {f"{part}_lora_adapter_metadata": _metadata(spec, part) for part in state}
    type(templates.pipe).save_lora_weights(folder, **layers, **metadata, weight_name=WEIGHT_NAME)


def _sgm_name(key: str, layers_per_block: int) -> str:
    """A kohya UNet key under the original Stability (sgm) block names that SDXL trainers publish.

    diffusers reads them back through ``_maybe_map_sgm_blocks_to_diffusers`` (with the UNet's
    config) and has no converter the other way, so this is that mapping reversed: down block ``b``
    layer ``l`` is ``input_blocks_{1 + b * (n + 1) + l}``, up block ``b`` layer ``l`` is
    ``output_blocks_{b * (n + 1) + l}`` (``n`` layers per block), inner index 0 for resnets and 1
    for attentions; the mid block is ``middle_block_{0, 1, 2}`` (resnet, attention, resnet).
    """
    step = layers_per_block + 1
    inner = {"resnets": 0, "attentions": 1}
    match = _DIFFUSERS_BLOCK.match(key)
    if match is None:
        return key  # text encoders, and UNet parts outside the blocks
    kind, block, part, layer, rest = match["kind"], match["block"], match["part"], int(match["layer"]), match["rest"]
    if kind == "mid_block":
        index = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[part, layer]
        return f"lora_unet_middle_block_{index}_{rest}"
    number = 1 + int(block) * step + layer if kind == "down_blocks" else int(block) * step + layer
    name = "input_blocks" if kind == "down_blocks" else "output_blocks"
    return f"lora_unet_{name}_{number}_{inner[part]}_{rest}"


def _save_kohya(folder: Path, templates: Templates, state: dict[str, dict[str, torch.Tensor]], spec: LoraSpec) -> None:
    alpha = spec.alpha or spec.rank
    if spec.format == "kohya-flux":  # the transformer under BFL's names, CLIP through diffusers' converter
        gen = torch.Generator().manual_seed(spec.seed + 2)
        kohya = kohya_flux_state(templates.parts["transformer"], spec.rank, alpha, gen)
        state = {part: part_state for part, part_state in state.items() if part != "transformer"}
    else:
        kohya = {}
    prefixed = {f"{part}.{k}": v for part, part_state in state.items() for k, v in part_state.items()}
    converted = convert_state_dict_to_kohya(prefixed) if prefixed else {}
    if spec.format == "kohya-sgm":
        layers_per_block = templates.pipe.unet.config.layers_per_block
        converted = {_sgm_name(k, layers_per_block): v for k, v in converted.items()}
    kohya |= {k: torch.tensor(float(alpha)) if k.endswith(".alpha") else v for k, v in converted.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        kohya,
        folder / WEIGHT_NAME,
        metadata={"format": "pt", "ss_network_dim": str(spec.rank), "ss_network_alpha": str(alpha)},
    )


def _save_xlabs(folder: Path, templates: Templates, spec: LoraSpec) -> None:
    gen = torch.Generator().manual_seed(spec.seed + 2)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(xlabs_state(templates.parts["transformer"], spec.rank, gen), folder / WEIGHT_NAME)


class _Canary:
    """Unpickling this writes the canary file: proof that someone unpickled an untrusted file."""

    def __reduce__(self) -> tuple[Any, ...]:
        code = (
            "import os, pathlib; pathlib.Path(os.environ.get("
            f"{CANARY_ENV!r}, {CANARY_DEFAULT!r})).write_text('unpickled')"
        )
        return (exec, (code,))


def _save_pickle(folder: Path, state: dict[str, dict[str, torch.Tensor]]) -> None:
    # A plain pickle (deterministic bytes): torch.load(weights_only=False) or pickle.load runs the canary.
    tensors = {f"unet.{k}": v.tolist() for k, v in list(state["unet"].items())[:2]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PICKLE_NAME).write_bytes(pickle.dumps({"canary": _Canary(), **tensors}, protocol=2))


def _corrupt(folder: Path) -> None:
    """Overwrite the start of the JSON header: the file no longer parses as safetensors."""
    path = folder / WEIGHT_NAME
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))


def write_lora(folder: Path, templates: Templates, spec: LoraSpec) -> list[str]:
    """Write the LoRA files of one repo into `folder`; returns the file names written."""
    state = peft_state(templates, spec)
    if spec.damage == "pickle":
        _save_pickle(folder, state)
        return [PICKLE_NAME]
    if spec.format in ("kohya", "kohya-sgm", "kohya-flux"):
        _save_kohya(folder, templates, state, spec)
    elif spec.format == "xlabs":
        _save_xlabs(folder, templates, spec)
    else:
        _save_diffusers(folder, templates, state, spec)
    canonicalise(folder / WEIGHT_NAME)
    names = [WEIGHT_NAME]
    if spec.damage == "corrupt":
        _corrupt(folder)
    if spec.pivotal_tokens:
        gen = torch.Generator().manual_seed(spec.seed + 1)
        n = len(spec.pivotal_tokens)
        emb = {name: torch.randn((n, size), generator=gen) for name, size in templates.embedding_sizes().items()}
        save_file(emb, folder / EMBEDDINGS_NAME, metadata={"format": "pt"})
        names.append(EMBEDDINGS_NAME)
    return names
