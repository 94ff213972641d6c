"""The tiny model zoo: three base pipelines and LoRAs for them, good and bad, as Hub repo folders.

Each repo is `root/<org>/<name>/` with its files, a README.md whose YAML front matter is the
model card the Hub shows, and a hidden `.devhub.json` with hub-side flags (gated, private,
disabled). Everything is seeded: two builds write the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devhub.bases import make_flux, make_sd15, make_sdxl, save_pipeline
from devhub.loras import LoraSpec, Templates, canonicalise, write_lora
from devhub.repo import write_card, write_flags

SDXL_BASE = "tiny/sdxl-base"
SD15_BASE = "tiny/sd15-base"
FLUX_BASE = "tiny/flux-base"
BASE_TAGS = ["diffusers", "text-to-image"]
LORA_TAGS = ["text-to-image", "diffusers", "lora"]


@dataclass(frozen=True)
class LoraRepo:
    """One LoRA repo of the zoo: its weights, the base its card names, and its hub flags."""

    repo_id: str
    spec: LoraSpec
    base: str = SDXL_BASE  # the base whose shapes the weights are made for
    card_base: str | list[str] | None = None  # what the card declares (default: `base`)
    card: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)


def _catalogue(seed: int) -> list[LoraRepo]:
    s = seed * 1000

    def spec(n: int, **kw: Any) -> LoraSpec:
        return LoraSpec(seed=s + n, **kw)

    return [
        LoraRepo("tiny/sdxl-lora-diffusers", spec(1)),
        LoraRepo("tiny/sdxl-lora-peft", spec(2, format="peft", alpha=8)),
        LoraRepo("tiny/sdxl-lora-kohya", spec(3, format="kohya", alpha=2, text_encoders=True)),
        # kohya under the original Stability block names (input_blocks...), as many SDXL trainers publish
        LoraRepo("tiny/sdxl-lora-kohya-sgm", spec(8, format="kohya-sgm", alpha=2, text_encoders=True)),
        LoraRepo("tiny/sdxl-lora-listbase", spec(4), card_base=[SDXL_BASE]),
        LoraRepo(
            "tiny/sdxl-lora-pivotal",
            spec(5, pivotal_tokens=("<s0>", "<s1>")),
            card={"instance_prompt": "a photo of <s0><s1>"},
        ),
        LoraRepo("tiny/sdxl-lora-rank32", spec(6, rank=32, text_encoders=True)),
        LoraRepo("tiny/sd15-lora", spec(7, text_encoders=True), base=SD15_BASE),
        LoraRepo("tiny/sdxl-lora-a", spec(11)),
        LoraRepo("tiny/sdxl-lora-b", spec(12)),
        LoraRepo("tiny/sdxl-lora-c", spec(13)),
        LoraRepo("tiny/sdxl-lora-gated", spec(21), flags={"gated": "manual"}),
        LoraRepo("tiny/sdxl-lora-private", spec(22), flags={"private": True}),
        LoraRepo("tiny/sdxl-lora-disabled", spec(23), flags={"disabled": True}),
        LoraRepo("tiny/sdxl-lora-pickle", spec(24, damage="pickle")),
        LoraRepo("tiny/sdxl-lora-misfit", spec(25, damage="misfit")),
        LoraRepo("tiny/sdxl-lora-badkeys", spec(26, damage="badkeys")),
        LoraRepo("tiny/sdxl-lora-corrupt", spec(27, damage="corrupt")),
        LoraRepo("tiny/sdxl-lora-nan", spec(28, damage="nan")),
        # rank 256 makes the file pass 4 MiB (size-cap tests) while it stays a valid LoRA
        LoraRepo("tiny/sdxl-lora-huge", spec(29, rank=256)),
        LoraRepo("tiny/lora-unserved-base", spec(30), card_base="someone/unserved-base"),
        *_flux_catalogue(spec),
    ]


def _flux_catalogue(spec: Any) -> list[LoraRepo]:
    """FLUX.1 LoRAs with keys as the trainers publish them (diffusers/PEFT, kohya, XLabs)."""
    return [
        # diffusers' DreamBooth-LoRA Flux script: PEFT keys under transformer., lora_alpha in the header
        LoraRepo("tiny/flux-lora-diffusers", spec(41, format="peft", alpha=8), base=FLUX_BASE),
        LoraRepo("tiny/flux-lora-kohya", spec(42, format="kohya-flux", alpha=2, text_encoders=True), base=FLUX_BASE),
        LoraRepo("tiny/flux-lora-xlabs", spec(43, format="xlabs"), base=FLUX_BASE),
        LoraRepo("tiny/flux-lora-te", spec(44, format="peft", text_encoders=True), base=FLUX_BASE),
        LoraRepo("tiny/flux-lora-a", spec(45, format="peft"), base=FLUX_BASE),
        LoraRepo("tiny/flux-lora-b", spec(46, format="peft"), base=FLUX_BASE),
        LoraRepo("tiny/flux-lora-c", spec(47, format="peft"), base=FLUX_BASE),
        # an SDXL LoRA's keys (unet.*), its card naming the Flux base
        LoraRepo("tiny/flux-lora-misfit", spec(48, format="peft"), base=SDXL_BASE, card_base=FLUX_BASE),
    ]


def _write_base(root: Path, repo_id: str, pipe: Any, arch: str) -> None:
    folder = root / repo_id
    save_pipeline(pipe, folder)
    for weights in sorted(folder.rglob("*.safetensors")):
        canonicalise(weights)
    meta = {"license": "mit", "library_name": "diffusers", "pipeline_tag": "text-to-image", "tags": BASE_TAGS}
    write_card(
        folder,
        meta,
        f"# {repo_id}\n\nA tiny, randomly initialised {arch} pipeline for tests. "
        "It draws noise (64x64, two steps, in the demo farm).",
    )
    write_flags(folder)


def _write_lora_repo(root: Path, repo: LoraRepo, templates: Templates) -> None:
    folder = root / repo.repo_id
    names = write_lora(folder, templates, repo.spec)
    meta: dict[str, Any] = {
        "tags": LORA_TAGS,
        "base_model": repo.card_base if repo.card_base is not None else repo.base,
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "license": "mit",
        **repo.card,
    }
    body = (
        f"# {repo.repo_id}\n\nA tiny {repo.spec.format}-format LoRA (rank {repo.spec.rank}) for tests. "
        f"Files: {', '.join(names)}."
    )
    if repo.spec.damage:
        body += f"\n\nDeliberately broken: {repo.spec.damage}."
    write_card(folder, meta, body)
    write_flags(folder, **repo.flags)


def _not_a_pipeline(root: Path) -> None:
    folder = root / "tiny/not-a-pipeline"
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["BertForSequenceClassification"], "model_type": "bert", "hidden_size": 8}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    meta = {"library_name": "transformers", "pipeline_tag": "text-classification", "tags": ["transformers"]}
    write_card(folder, meta, "# tiny/not-a-pipeline\n\nA text classifier config: neither a LoRA nor a pipeline.")
    write_flags(folder)


def build_zoo(root: Path, seed: int = 0) -> list[str]:
    """Write the whole zoo under `root`; returns the repo ids. Same seed, same bytes."""
    root = Path(root)
    sdxl, sd15, flux = make_sdxl(seed), make_sd15(seed), make_flux(seed)
    _write_base(root, SDXL_BASE, sdxl, "SDXL-architecture")
    _write_base(root, SD15_BASE, sd15, "SD 1.5-architecture")
    _write_base(root, FLUX_BASE, flux, "FLUX.1-dev-architecture")
    templates = {SDXL_BASE: Templates(sdxl), SD15_BASE: Templates(sd15), FLUX_BASE: Templates(flux)}
    ids = [SDXL_BASE, SD15_BASE, FLUX_BASE]
    for repo in _catalogue(seed):
        _write_lora_repo(root, repo, templates[repo.base])
        ids.append(repo.repo_id)
    _not_a_pipeline(root)
    ids.append("tiny/not-a-pipeline")
    return ids


def build_many_loras(root: Path, n: int, base: str = SDXL_BASE, seed: int = 0) -> list[str]:
    """Write `n` distinct small diffusers-format LoRAs `tiny/sdxl-lora-NNN` for `base`."""
    factories = {SDXL_BASE: (make_sdxl, "tiny/sdxl-lora-"), SD15_BASE: (make_sd15, "tiny/sd15-lora-")}
    if base not in factories:
        raise ValueError(f"no tiny base {base!r}; known: {sorted(factories)}")
    make, prefix = factories[base]
    root = Path(root)
    templates = Templates(make())  # only the shapes matter, and they do not depend on the seed
    width = max(3, len(str(n - 1)))
    ids = []
    for i in range(n):
        repo = LoraRepo(f"{prefix}{i:0{width}d}", LoraSpec(seed=seed * 1_000_000 + 100_000 + i), base=base)
        _write_lora_repo(root, repo, templates)
        ids.append(repo.repo_id)
    return ids
