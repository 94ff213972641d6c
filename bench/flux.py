"""FLUX.1-dev transformer shapes, built offline: a contiguous run of real-width blocks with seeded
random weights, and LoRA files for them in diffusers and kohya formats. Used by ``bench.swap``.

The whole FLUX.1-dev transformer (19 double-stream and 38 single-stream blocks, 11.9 B parameters,
23.8 GB in bf16) does not fit a 24 GB CPU machine next to its pristine copies, so the benchmark
builds ``blocks`` (double, single) of them at their real width: hidden 3072, 24 heads of 128,
MLP ratio 4. Two double and four single blocks keep the full model's 1:2 ratio, so the full
model is 9.5 times that run (an extrapolation, labelled as such). ``--blocks 19,38`` builds the
real thing (a GPU).

Every tensor is filled from a seed derived from its name (``bench.sdxl.fill``), so the drift check
recomputes "fresh" values instead of keeping a second copy of the model. LoRA files come from the
tiny zoo's own writers (``devhub.loras``, ``devhub.bfl``) applied to these shapes: the diffusers
format on the targets of diffusers' DreamBooth-LoRA script plus the single blocks' ``proj_mlp`` and
``proj_out``; kohya under Black Forest Labs' names on every linear of every block, with
``single_blocks_N_linear1`` (fused q, k, v and MLP input), which diffusers' converter splits at
these real widths only.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.sdxl import fill

# fmt: off
FLUX1_DEV = dict(  # black-forest-labs/FLUX.1-dev transformer/config.json
    patch_size=1, in_channels=64, num_attention_heads=24, attention_head_dim=128, joint_attention_dim=4096,
    pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
# fmt: on
FULL_BLOCKS = (19, 38)
DEFAULT_BLOCKS = (2, 4)
DEFAULT_RANKS = "16,64"
WEIGHTS = "pytorch_lora_weights.safetensors"
#: Tokens of one denoising step at 1024x1024: 64x64 latent patches, T5's 512.
STEP_TOKENS = (4096, 512)


def build_pipe(device: str, dtype: torch.dtype, blocks: tuple[int, int] = DEFAULT_BLOCKS) -> Any:
    """A FluxPipeline holding only the transformer of ``blocks`` (double, single) real-width blocks."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.set_default_dtype(dtype)  # so that to_empty allocates the final dtype, never fp32 first
    try:
        with torch.device("meta"):
            transformer = FluxTransformer2DModel(**FLUX1_DEV, num_layers=blocks[0], num_single_layers=blocks[1])
    finally:
        torch.set_default_dtype(torch.float32)
    if device != "meta":
        transformer.to_empty(device=device).eval().requires_grad_(False)
        fill(transformer, "transformer")
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )


def targeted(pipe: Any) -> dict[str, set[str]]:
    """Every linear of the transformer: a superset of what either format targets (drift is checked on all)."""
    return {"transformer": {n for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear)}}


def block_count(blocks: tuple[int, int]) -> int:
    return blocks[0] + blocks[1]


def full_model_factor(blocks: tuple[int, int]) -> float | None:
    """How many times the measured run the full model is; ``None`` unless its double:single ratio is 1:2."""
    double, single = blocks
    return FULL_BLOCKS[0] / double if double and single == 2 * double else None


def write_loras(root: Path, rank: int, fmt: str, blocks: tuple[int, int] = DEFAULT_BLOCKS, n: int = 2) -> list[Path]:
    """n LoRA files of one rank and format for these shapes, through the tiny zoo's writers."""
    from devhub.loras import LoraSpec, Templates, write_lora

    templates = Templates(build_pipe("meta", torch.bfloat16, blocks))
    # diffusers' Flux LoRA script saves PEFT keys under ``transformer.`` (the zoo's "peft" format)
    zoo_format = {"diffusers": "peft", "kohya": "kohya-flux"}[fmt]
    paths = []
    for i in range(n):
        folder = root / f"flux-r{rank}-{fmt}-{i}"
        # kohya: alpha = rank / 2, as sd-scripts' Flux examples train; diffusers: alpha = rank
        spec = LoraSpec(seed=rank * 100 + i, format=zoo_format, rank=rank, alpha=rank / 2 if fmt == "kohya" else None)  # type: ignore[arg-type]
        write_lora(folder, templates, spec)
        paths.append(to_bf16(folder / WEIGHTS))
    return paths


def to_bf16(path: Path) -> Path:
    """Rewrite a LoRA file in bf16, as Flux trainers save them (the zoo's writers save fp32)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def hotswap(pipe: Any, path: Path, started: bool) -> None:
    """diffusers' hotswap into the transformer's one adapter slot (the first call loads it)."""
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="default_0", hotswap=started)


def step_seconds(pipe: Any, tokens: tuple[int, int], repeats: int = 3) -> float:
    """Median seconds of one transformer forward (one denoising step) at ``tokens`` (image, text)."""
    transformer = pipe.transformer
    weight = next(transformer.parameters())
    image, text = tokens
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen).to(weight)

    inputs = {
        "hidden_states": rand(1, image, FLUX1_DEV["in_channels"]),
        "encoder_hidden_states": rand(1, text, FLUX1_DEV["joint_attention_dim"]),
        "pooled_projections": rand(1, FLUX1_DEV["pooled_projection_dim"]),
        "timestep": torch.tensor([0.5]).to(weight),
        "guidance": torch.tensor([3.5]).to(weight),
        "img_ids": torch.zeros(image, 3).to(weight),
        "txt_ids": torch.zeros(text, 3).to(weight),
        "return_dict": False,
    }
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first call warms up kernels and allocators
            start = time.perf_counter()
            transformer(**inputs)
            if weight.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


# --- reading the results against the targets of issue #11 -----------------------------------------

#: Fused at least this many times faster than the stock path per swap (hence per block).
FUSED_SPEEDUP_TARGET = 8.0
#: lorafarm's fused and unfused swaps leave every touched weight exactly as it was.
DRIFT_TARGET = 0.0
#: A fused rank-16 swap on the whole FLUX.1-dev transformer, bf16 on a GPU.
GPU_FUSED_R16_TARGET_S = 0.040


def describe(blocks: tuple[int, int]) -> str:
    double, single = blocks
    if blocks == FULL_BLOCKS:
        return "the whole FLUX.1-dev transformer (19 double + 38 single blocks)"
    return f"FLUX.1-dev transformer, {double} double + {single} single real-width blocks of 19 + 38"


def report(results: list[dict[str, Any]], *, device: str, blocks: tuple[int, int]) -> list[str]:
    """Per block, the 57-block extrapolation, step times, and a verdict per named target."""
    rows = {(r["method"], r["rank"], r["format"]): r for res in results for r in res["rows"]}
    factor, count = full_model_factor(blocks), block_count(blocks)
    lines = ["| method | rank | format | ms per block | 57 blocks, s (extrapolated) |", "|---|---|---|---|---|"]
    for (method, rank, fmt), row in rows.items():
        whole = f"{row['median_s'] * factor:.3f}" if factor and blocks != FULL_BLOCKS else "-"
        lines.append(f"| {method} | {rank} | {fmt} | {row['median_s'] / count * 1000:.1f} | {whole} |")
    lines += ["", *_step_lines(results), *_verdicts(rows, device=device, blocks=blocks)]
    return lines


def _step_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for res in results:
        if res.get("peak_gpu_gib") is not None:
            lines.append(f"peak GPU memory, {res['rows'][0]['method']}: {res['peak_gpu_gib']:.1f} GiB")
        if res.get("base_step_s") is None:
            continue
        for row in res["rows"][:1]:
            lines.append(
                f"step time, {row['method']} (rank {row['rank']} {row['format']} on): {row['step_s']:.3f} s "
                f"against {res['base_step_s']:.3f} s for the plain base in the same process"
            )
    return lines


def _verdicts(rows: dict[tuple[str, int, str], dict[str, Any]], *, device: str, blocks: tuple[int, int]) -> list[str]:
    lines = []
    for (method, rank, fmt), row in rows.items():
        if method == "stock" and ("fused", rank, fmt) in rows:
            speedup = row["median_s"] / rows["fused", rank, fmt]["median_s"]
            verdict = "met" if speedup >= FUSED_SPEEDUP_TARGET else "NOT met"
            lines.append(
                f"target fused >= {FUSED_SPEEDUP_TARGET:g}x faster than stock, rank {rank} {fmt}: "
                f"{speedup:.1f}x, {verdict}"
            )
        if method in ("fused", "unfused"):
            verdict = "met" if row["drift"] <= DRIFT_TARGET else "NOT met"
            lines.append(
                f"target drift {DRIFT_TARGET:g} after {row['swaps']} swaps, {method} rank {rank} {fmt}: "
                f"{row['drift']:.3g} ({row['changed']} tensors changed), {verdict}"
            )
    fused16 = [r["median_s"] for (m, rank, _), r in rows.items() if m == "fused" and rank == 16]
    if device == "cuda" and blocks == FULL_BLOCKS and fused16:
        worst = max(fused16)
        verdict = "met" if worst <= GPU_FUSED_R16_TARGET_S else "NOT met"
        lines.append(
            f"target fused rank-16 swap <= {GPU_FUSED_R16_TARGET_S * 1000:g} ms: {worst * 1000:.1f} ms, {verdict}"
        )
    else:
        lines.append(
            f"target fused rank-16 swap <= {GPU_FUSED_R16_TARGET_S * 1000:g} ms (whole transformer, GPU): not measured "
            "here; run --device cuda --blocks 19,38"
        )
    return lines
