"""Swap benchmark: diffusers' stock path and hotswap against lorafarm's engine on real model shapes.

The UNet (2.57 B parameters) and both text encoders (CLIP ViT-L and bigG) are built offline from
the SDXL base 1.0 configurations with seeded random weights; LoRAs on the attention projections
(UNet to_q/k/v/out.0, text encoders q/k/v/out_proj) are written in diffusers and kohya formats.
Each method runs in its own process (so its peak RSS is its own and one model is in memory at a
time) and alternates two LoRAs: median seconds per swap, then the max abs difference of every
targeted base weight from its fresh value after all swaps and the method's own cleanup.

    python -m bench.swap [--quick] [--device cuda --dtype fp16] [--ranks 8,32] [--formats diffusers,kohya]

``--family flux``: FLUX.1-dev's transformer instead, a run of real-width blocks (``bench.flux``,
``--blocks 2,4``; ``--device cuda --blocks 19,38`` for the whole transformer), rank 16 and 64 LoRAs.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench import flux, goals, sdxl
from bench.goals import Verdict
from bench.sdxl import drift, fill

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: fused-cold is fused with the adapter file parsed again on every swap (no host cache), as the
#: stock path reads and converts it on every swap; fused and unfused time the apply alone.
METHODS = ("stock", "hotswap", "fused", "fused-cold", "unfused")
LORAFARM = ("fused", "fused-cold", "unfused")
#: The model shapes per family: build_pipe, targeted, write_loras, hotswap (bench.sdxl, bench.flux).
SHAPES: dict[str, Any] = {"sdxl": sdxl, "flux": flux}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
    """diffusers hotswap=True into the denoiser (diffusers refuses to hotswap text encoders)."""

    def __init__(self, pipe: Any, shapes: Any) -> None:
        self.pipe, self.shapes, self.started, self.extra = pipe, shapes, False, {}

    def swap(self, path: Path) -> dict[str, float]:
        start = time.perf_counter()
        self.shapes.hotswap(self.pipe, path, self.started)
        self.started = True
        return {"swap": time.perf_counter() - start}

    def cleanup(self) -> None:
        self.pipe.unload_lora_weights()


class Lorafarm:
    """lorafarm's engine: adapters parsed once (the host cache), then applied fused or unfused;
    ``cold``: parsed again on every swap, and the parse counted in the swap's time."""

    def __init__(self, pipe: Any, mode: str, max_rank: int, *, cold: bool = False) -> None:
        from worker.engine import SwapEngine

        self.pipe, self.mode, self.max_rank, self.cold = pipe, mode, max_rank, cold
        self.engine = SwapEngine(pipe)
        self.parsed: dict[Path, Any] = {}
        self.extra: dict[str, Any] = {}
        self.untimed = () if cold else ("parse+stage",)

    def swap(self, path: Path) -> dict[str, float]:
        from worker.adapter import read_adapter

        out = {}
        if self.cold or path not in self.parsed:
            start = time.perf_counter()
            adapter = read_adapter(
                path,
                key=str(path),
                max_bytes=1 << 30,
                max_rank=self.max_rank,
                family=self.engine.family,
                denoiser_config=self.engine.denoiser_config,
            )
            self.parsed[path] = self.engine.stage(adapter)
            out["parse+stage"] = time.perf_counter() - start
        # The cold run shows its apply beside the parse (parts column), timed in the same swaps.
        applied = self.engine.apply([(self.parsed[path], 1.0)], mode=self.mode).seconds  # type: ignore[arg-type]
        out["apply" if self.cold else "swap"] = applied
        return out

    def cleanup(self) -> None:
        self.engine.restore()
        self.extra["pristine_gib"] = self.engine.pristine_bytes / 2**30


def make_method(name: str, pipe: Any, rank: int, shapes: Any) -> Any:
    if name == "stock":
        return Stock(pipe)
    if name == "hotswap":
        return Hotswap(pipe, shapes)
    if name == "fused-cold":
        return Lorafarm(pipe, "fused", rank, cold=True)
    return Lorafarm(pipe, name, rank)


# --- one method, in its own process --------------------------------------------------------------


def run_method(spec: dict[str, Any]) -> dict[str, Any]:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    method, device, shapes = spec["method"], spec["device"], SHAPES[spec["family"]]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    pipe = shapes.build_pipe(device, DTYPES[spec["dtype"]], **spec["shape"])
    modules = shapes.targeted(pipe)
    log(f"{method}: {spec['family']}-shaped model built in {time.perf_counter() - start:.0f} s")
    tokens = spec.get("step_tokens")
    base_step = shapes.step_seconds(pipe, tokens) if tokens else None
    rows = []
    for number, config in enumerate(spec["configs"]):
        paths = [Path(p) for p in config["paths"]]
        runner = make_method(method, pipe, config["rank"], shapes)
        phases: dict[str, list[float]] = {}
        totals = []
        for i in range(config["swaps"]):
            times = runner.swap(paths[i % len(paths)])
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= spec["warmup"]:  # the first swaps allocate (pristine copies, PEFT layers): not timed
                untimed = getattr(runner, "untimed", ())  # the warm lorafarm runs leave the parse out
                totals.append(sum(v for k, v in times.items() if k not in untimed))
            for phase, seconds in times.items():
                if i >= spec["warmup"] or phase == "parse+stage":
                    phases.setdefault(phase, []).append(seconds)
        if tokens and number == 0:  # one step with the last adapter on: fused weights, hooks or PEFT layers
            runner.extra["step_s"] = shapes.step_seconds(pipe, tokens)
        runner.cleanup()
        worst, changed = drift(pipe, modules)
        row = {
            "method": method,
            "rank": config["rank"],
            "format": config["format"],
            "swaps": config["swaps"],
            "median_s": statistics.median(totals),
            "min_s": min(totals),
            "parts": {k: statistics.median(v) for k, v in phases.items() if k != "swap"},
            "drift": worst,
            "changed": changed,
            **runner.extra,
        }
        rows.append(row)
        log(f"{method}: {json.dumps(row)}")
        if changed:  # reset the drifted weights for the next configuration
            for part, names in modules.items():
                fill(getattr(pipe, part), part, only=names)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    gpu = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"rows": rows, "peak_rss_gib": peak, "peak_gpu_gib": gpu, "base_step_s": base_step}


# --- the driver ----------------------------------------------------------------------------------


def machine(device: str) -> str:
    import diffusers
    import peft
    import transformers

    cpu = platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    where = f"{os.cpu_count()} CPU cores ({cpu})"
    if device == "cuda":
        where = f"{torch.cuda.get_device_name()}, {where}"
    return (
        f"{where}; torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}, "
        f"transformers {transformers.__version__}"
    )


def plan(args: argparse.Namespace, files: dict[tuple[int, str], list[Path]]) -> list[dict[str, Any]]:
    """Per method: every configuration; the first (rank 8, first format) gets the full swap count."""
    specs = []
    for method in args.methods:
        full = args.stock_swaps if method == "stock" else args.swaps
        configs = [
            {
                "rank": rank,
                "format": fmt,
                "paths": [str(p) for p in paths],
                "swaps": max(full if j == 0 else full // 5, args.warmup + 1),
            }
            for j, ((rank, fmt), paths) in enumerate(files.items())
        ]
        specs.append(
            {
                "method": method,
                "configs": configs,
                "device": args.device,
                "dtype": args.dtype,
                "family": args.family,
                "shape": shape_options(args),
                "step_tokens": args.step_tokens,
                "threads": args.threads,
                "warmup": args.warmup,
            }
        )
    return specs


def shape_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of the family's ``build_pipe`` and ``write_loras``."""
    if args.family == "flux":
        return {"blocks": args.blocks}
    return {"text_encoders": args.text_encoders}


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| method | rank | format | median s/swap | min s/swap | parts, median s | swaps | max abs drift "
        "| tensors drifted | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for row in result["rows"]:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in row["parts"].items()) or "-"
            if "pristine_gib" in row:
                parts += f", pristine {row['pristine_gib']:.2f} GiB"
            lines.append(
                f"| {row['method']} | {row['rank']} | {row['format']} | {row['median_s']:.3f} | {row['min_s']:.3f} "
                f"| {parts} | {row['swaps']} | {row['drift']:.3g} | {row['changed']} | {result['peak_rss_gib']:.1f} |"
            )
    return "\n".join(lines)


def ratios(results: list[dict[str, Any]]) -> list[str]:
    by = {(r["method"], r["rank"], r["format"]): r["median_s"] for res in results for r in res["rows"]}
    return [
        f"stock / {other}, rank {rank} {fmt}: {seconds / by[other, rank, fmt]:.1f}x"
        for (method, rank, fmt), seconds in by.items()
        if method == "stock"
        for other in ("fused", "fused-cold", "unfused", "hotswap")
        if (other, rank, fmt) in by
    ]


def verdicts(results: list[dict[str, Any]], device: str) -> list[Verdict]:
    """The targets of issue 3 (``bench.goals``) against this run's rows: drift of every lorafarm
    row, the unfused swap, the fused apply at rank 8, and the stock path over the fused apply."""
    rows = {(r["method"], r["rank"], r["format"]): r for res in results for r in res["rows"]}
    fused_target = goals.FUSED_SWAP_GPU_S if device == "cuda" else goals.FUSED_SWAP_CPU_S
    out = []
    for (method, rank, fmt), row in rows.items():
        what = f"{method}, rank {rank} {fmt}"
        if method in LORAFARM:
            drifted = f"{what}: max abs drift after {row['swaps']} swaps"
            out.append(goals.at_most(drifted, row["drift"], goals.MAX_DRIFT))
        if method == "unfused":
            out.append(goals.at_most(f"{what}: median swap", row["median_s"], goals.UNFUSED_SWAP_S, " s"))
        if method == "fused" and rank == 8:
            out.append(goals.at_most(f"{what}: median swap on {device}", row["median_s"], fused_target, " s"))
        if method == "fused" and ("stock", rank, fmt) in rows:
            speedup = rows["stock", rank, fmt]["median_s"] / row["median_s"]
            out.append(goals.at_least(f"{what}: stock / fused, median", speedup, goals.FUSED_SPEEDUP, "x"))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="lowest rank, diffusers format, 10 swaps (stock 4)")
    parser.add_argument("--family", default="sdxl", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--ranks", help="default: 8,32 for sdxl, 16,64 for flux")
    parser.add_argument("--formats", default="diffusers,kohya")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--swaps", type=int, default=100, help="swaps on the first configuration (a fifth on the rest)")
    parser.add_argument("--stock-swaps", type=int, default=30, help="the same for the stock path (seconds a swap)")
    parser.add_argument("--warmup", type=int, default=2, help="first swaps left out of the timing (not of the drift)")
    parser.add_argument("--no-text-encoders", dest="text_encoders", action="store_false", help="sdxl: UNet only")
    parser.add_argument("--blocks", type=pair, default=flux.DEFAULT_BLOCKS, help="flux: DOUBLE,SINGLE blocks (2,4)")
    parser.add_argument(
        "--step-tokens",
        type=pair,
        help="flux: also time one transformer step at IMAGE,TEXT tokens (4096,512: 1024x1024; default on cuda)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads of every method (on a shared CPU, 1 spares them spin-waits)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step_tokens and args.family != "flux":
        parser.error("--step-tokens times a Flux transformer step (--family flux)")
    args.ranks = args.ranks or SHAPES[args.family].DEFAULT_RANKS
    if args.family == "flux" and args.device == "cuda" and args.step_tokens is None:
        args.step_tokens = flux.STEP_TOKENS
    if args.quick:
        args.ranks = args.ranks.split(",")[0]
        args.formats, args.swaps, args.stock_swaps, args.warmup = "diffusers", 10, 4, 1
    args.methods = args.methods.split(",")
    return args


def pair(text: str) -> tuple[int, int]:
    """``2,4`` -> (2, 4)."""
    first, second = (int(x) for x in text.split(","))
    return first, second


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Write the LoRA files, then run each method in a process of its own."""
    shapes, results = SHAPES[args.family], []
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        files = {}
        for rank in (int(r) for r in args.ranks.split(",")):
            for fmt in args.formats.split(","):
                files[rank, fmt] = shapes.write_loras(Path(tmp), rank, fmt, **shape_options(args))
                log(f"LoRA rank {rank} {fmt}: {files[rank, fmt][0].stat().st_size / 1e6:.1f} MB each")
        for spec in plan(args, files):  # one process each: its own peak RSS, one model in memory at a time
            worker = [sys.executable, "-m", "bench.swap", "--worker", json.dumps(spec)]
            proc = subprocess.run(worker, stdout=subprocess.PIPE, text=True, check=True)
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
            results.append(json.loads(line.removeprefix("RESULT ")))
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_method(json.loads(args.worker))), flush=True)
        return
    command = "python -m bench.swap " + shlex.join(sys.argv[1:] if argv is None else argv)
    started, load_before = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), os.getloadavg()[0]
    results = run_all(args)
    shapes = SHAPES[args.family]
    print(f"\ncommand: {command}\nmachine: {machine(args.device)}\ndate: {started}")
    what = shapes.describe(**shape_options(args))
    print(f"{args.dtype} on {args.device}, {what}, torch threads {args.threads or torch.get_num_threads()}")
    print(f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}\n")
    print(table(results))
    print("\n" + "\n".join(ratios(results)))
    print("\n" + "\n".join(v.line() for v in verdicts(results, args.device)))
    if hasattr(shapes, "report"):
        print("\n" + "\n".join(shapes.report(results, device=args.device, **shape_options(args))))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "machine": machine(args.device), "results": results}))


if __name__ == "__main__":
    main()
