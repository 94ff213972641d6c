"""Swap benchmark: diffusers' stock path and hotswap against lorafarm's engine on real SDXL shapes.

The UNet (2.57 B parameters) and both text encoders (CLIP ViT-L and bigG) are built offline from
the SDXL base 1.0 configurations with seeded random weights; LoRAs on the attention projections
(UNet to_q/k/v/out.0, text encoders q/k/v/out_proj) are written in diffusers and kohya formats.
Each method runs in its own process (so its peak RSS is its own and one model is in memory at a
time) and alternates two LoRAs: median seconds per swap, then the max abs difference of every
targeted base weight from its fresh value after all swaps and the method's own cleanup.

    python -m bench.swap [--quick] [--device cuda --dtype fp16] [--ranks 8,32] [--formats diffusers,kohya]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
CLIP = dict(vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu")
CLIP_L = dict(CLIP, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
CLIP_G = dict(
    CLIP,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    projection_dim=1280,
    hidden_act="gelu",
)
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
METHODS = ("stock", "hotswap", "fused", "unfused")
WEIGHTS = "pytorch_lora_weights.safetensors"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the model: built on the meta device, then filled in place from per-tensor seeds -------------


def build_pipe(device: str, dtype: torch.dtype, text_encoders: bool) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.set_default_dtype(dtype)  # so that to_empty allocates the final dtype, never fp32 first
    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel(**UNET)
            te1 = CLIPTextModel(CLIPTextConfig(**CLIP_L)) if text_encoders else None
            te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)) if text_encoders else None
    finally:
        torch.set_default_dtype(torch.float32)
    parts = {"unet": unet, "text_encoder": te1, "text_encoder_2": te2}
    for name, model in parts.items():
        if model is not None:
            model.to_empty(device=device).eval().requires_grad_(False)
            fill(model, name)
    pipe = StableDiffusionXLPipeline(
        vae=None, tokenizer=None, tokenizer_2=None, scheduler=EulerDiscreteScheduler(), **parts
    )
    return pipe


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

    pipe = build_meta(text_encoders)
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


def build_meta(text_encoders: bool) -> Any:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    class Shapes:
        pass

    with torch.device("meta"):
        pipe = Shapes()
        pipe.unet = UNet2DConditionModel(**UNET)  # type: ignore[attr-defined]
        if text_encoders:
            pipe.text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L))  # type: ignore[attr-defined]
            pipe.text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))  # type: ignore[attr-defined]
    return pipe


# --- the four methods: swap(path) -> {phase: seconds}, cleanup() leaves the plain base ----------


class Stock:
    """The reference system: load_lora_weights + fuse_lora, then unfuse_lora + unload_lora_weights."""

    def __init__(self, pipe: Any) -> None:
        self.pipe, self.loaded, self.extra = pipe, False, {}

    def swap(self, path: Path) -> dict[str, float]:
        out = {"unfuse+unload": self._unload()}
        start = time.perf_counter()
        self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="default_0")
        self.pipe.fuse_lora()
        self.loaded = True
        out["load+fuse"] = time.perf_counter() - start
        return out

    def cleanup(self) -> None:
        self._unload()

    def _unload(self) -> float:
        start = time.perf_counter()
        if self.loaded:
            self.pipe.unfuse_lora()
            self.pipe.unload_lora_weights()
            self.loaded = False
        return time.perf_counter() - start


class Hotswap:
    """diffusers hotswap=True: the UNet part only (diffusers refuses to hotswap text encoders)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe, self.started, self.extra = pipe, False, {}

    def swap(self, path: Path) -> dict[str, float]:
        start = time.perf_counter()
        pipe = self.pipe
        state, alphas = pipe.lora_state_dict(str(path.parent), weight_name=path.name, unet_config=pipe.unet.config)
        pipe.load_lora_into_unet(
            state, alphas, pipe.unet, adapter_name="default_0", _pipeline=pipe, hotswap=self.started
        )
        self.started = True
        return {"swap": time.perf_counter() - start}

    def cleanup(self) -> None:
        self.pipe.unload_lora_weights()


class Lorafarm:
    """lorafarm's engine: adapters parsed once (the host cache), then applied fused or unfused."""

    def __init__(self, pipe: Any, mode: str, max_rank: int) -> None:
        from worker.engine import SwapEngine

        self.pipe, self.mode, self.max_rank = pipe, mode, max_rank
        self.engine = SwapEngine(pipe)
        self.parsed: dict[Path, Any] = {}
        self.extra: dict[str, Any] = {}

    def swap(self, path: Path) -> dict[str, float]:
        from worker.adapter import read_adapter

        out = {}
        if path not in self.parsed:
            start = time.perf_counter()
            adapter = read_adapter(
                path,
                key=str(path),
                max_bytes=1 << 30,
                max_rank=self.max_rank,
                pipeline_cls=type(self.pipe),
                unet_config=self.pipe.unet.config,
            )
            self.parsed[path] = self.engine.stage(adapter)
            out["parse+stage"] = time.perf_counter() - start
        out["swap"] = self.engine.apply([(self.parsed[path], 1.0)], mode=self.mode).seconds  # type: ignore[arg-type]
        return out

    def cleanup(self) -> None:
        self.engine.restore()
        self.extra["pristine_gib"] = self.engine.pristine_bytes / 2**30


def make_method(name: str, pipe: Any, rank: int) -> Any:
    if name == "stock":
        return Stock(pipe)
    if name == "hotswap":
        return Hotswap(pipe)
    return Lorafarm(pipe, name, rank)


# --- one method, in its own process --------------------------------------------------------------


def run_method(spec: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(0)
    dtype, device = DTYPES[spec["dtype"]], spec["device"]
    log(f"{spec['method']}: building the SDXL-shaped model ({spec['dtype']} on {device})")
    start = time.perf_counter()
    pipe = build_pipe(device, dtype, spec["text_encoders"])
    modules = targeted(pipe)
    log(f"{spec['method']}: built in {time.perf_counter() - start:.1f} s")
    rows = []
    for config in spec["configs"]:
        paths = [Path(p) for p in config["paths"]]
        method = spec["method"]
        runner = make_method(method, pipe, config["rank"])
        phases: dict[str, list[float]] = {}
        n = config["swaps"]
        for i in range(n + spec["warmup"]):
            times = runner.swap(paths[i % len(paths)])
            _sync(device)
            for phase, seconds in times.items():
                if i >= spec["warmup"] or phase == "parse+stage":
                    phases.setdefault(phase, []).append(seconds)
            if i % 10 == 9:
                log(f"{method} r{config['rank']} {config['format']}: {i + 1} swaps")
        runner.cleanup()
        worst, changed = drift(pipe, modules)
        row = {
            "method": method,
            "rank": config["rank"],
            "format": config["format"],
            "swaps": n + spec["warmup"],
            "timed": n,
            "median": {k: statistics.median(v) for k, v in phases.items()},
            "drift": worst,
            "changed": changed,
            **runner.extra,
        }
        rows.append(row)
        log(f"{method} r{config['rank']} {config['format']}: {json.dumps(row['median'])} drift {worst:.3g}")
        if changed:  # reset the drifted weights for the next configuration
            for part, names in modules.items():
                fill(getattr(pipe, part), part, only=names)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    gpu = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"rows": rows, "peak_rss_gib": peak, "peak_gpu_gib": gpu}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --- the driver ----------------------------------------------------------------------------------


def machine(device: str) -> str:
    import diffusers
    import peft
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    where = f"{os.cpu_count()} CPU cores ({cpu})"
    if device == "cuda":
        where = f"{torch.cuda.get_device_name()} + {where}"
    return (
        f"{where}, torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}, "
        f"transformers {transformers.__version__}, torch threads {torch.get_num_threads()}"
    )


def plan(args: argparse.Namespace, files: dict[tuple[int, str], list[Path]]) -> Iterator[dict[str, Any]]:
    for method in args.methods:
        configs = []
        for j, ((rank, fmt), paths) in enumerate(files.items()):
            # the stock path costs seconds a swap: its full count on the first configuration only
            swaps = args.swaps if method != "stock" or j == 0 else args.stock_swaps
            configs.append({"rank": rank, "format": fmt, "paths": [str(p) for p in paths], "swaps": swaps})
        yield {
            "method": method,
            "configs": configs,
            "device": args.device,
            "dtype": args.dtype,
            "text_encoders": args.text_encoders,
            "warmup": args.warmup,
        }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| method | rank | format | median s/swap | parts (median s) | swaps (timed) | max abs drift "
        "| tensors drifted | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for row in result["rows"]:
            med = row["median"]
            total = med.get("swap", med.get("load+fuse", 0.0) + med.get("unfuse+unload", 0.0))
            parts = ", ".join(f"{k} {v:.3f}" for k, v in med.items() if k != "swap") or "-"
            lines.append(
                f"| {row['method']} | {row['rank']} | {row['format']} | {total:.4f} | {parts} "
                f"| {row['swaps']} ({row['timed']}) | {row['drift']:.3g} | {row['changed']} "
                f"| {result['peak_rss_gib']:.1f} |"
            )
    return "\n".join(lines)


def ratios(results: list[dict[str, Any]]) -> list[str]:
    by = {(r["method"], r["rank"], r["format"]): r["median"] for res in results for r in res["rows"]}
    out = []
    for (method, rank, fmt), med in by.items():
        if method != "stock":
            continue
        stock_s = med["load+fuse"] + med["unfuse+unload"]
        for other in ("fused", "unfused", "hotswap"):
            if (other, rank, fmt) in by:
                out.append(f"stock / {other}, rank {rank} {fmt}: {stock_s / by[other, rank, fmt]['swap']:.1f}x")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="rank 8, diffusers format, few swaps")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--ranks", default="8,32")
    parser.add_argument("--formats", default="diffusers,kohya")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--swaps", type=int, default=100, help="swaps per method and configuration")
    parser.add_argument("--stock-swaps", type=int, default=10, help="stock swaps after its first configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed swaps first (counted for drift)")
    parser.add_argument("--no-text-encoders", dest="text_encoders", action="store_false")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_method(json.loads(args.worker))), flush=True)
        return
    if args.quick:
        args.ranks, args.formats, args.swaps, args.stock_swaps, args.warmup = "8", "diffusers", 10, 3, 1
    args.methods = args.methods.split(",")
    command = "python -m bench.swap " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        files = {}
        for rank in (int(r) for r in args.ranks.split(",")):
            for fmt in args.formats.split(","):
                files[rank, fmt] = write_loras(Path(tmp), rank, fmt, args.text_encoders)
                log(f"LoRA rank {rank} {fmt}: {files[rank, fmt][0].stat().st_size / 1e6:.1f} MB each")
        for spec in plan(args, files):
            proc = subprocess.run(
                [sys.executable, "-m", "bench.swap", "--worker", json.dumps(spec)],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
            results.append(json.loads(line.removeprefix("RESULT ")))
    print(f"\ncommand: {command}\nmachine: {machine(args.device)}\ndate: {started}")
    print(f"dtype {args.dtype} on {args.device}; text encoders {'included' if args.text_encoders else 'left out'}")
    print(f"load average before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}\n")
    print(table(results))
    print("\n" + "\n".join(ratios(results)))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "results": results}, indent=2))


if __name__ == "__main__":
    main()
