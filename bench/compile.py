"""Compile benchmark: the denoiser eager against ``torch.compile``, and adapter swaps on the compiled one.

On the SDXL base 1.0 UNet (``bench.sdxl``, seeded random weights), the tiny zoo's SDXL-architecture
UNet (``--model tiny-sdxl``: the one the tests compile, quick on a CPU) or a FLUX.1-dev-shaped block
set (``bench.flux``: real widths, ``--flux-blocks`` double and single blocks), called directly at one served size with
the batch the pipeline uses (SDXL: 2, classifier-free guidance; FLUX.1: 1). Each mode runs in a
process of its own with a fresh inductor cache (``--warm-cache`` keeps the default one), so the
compile time is a cold start's: compile time (the first call), median seconds per step, then
``--swaps`` swaps (two rank-8 attention LoRAs alternating, every fourth swap unfused through the
fixed-shape factors, every tenth a restore), each followed by one step, counting the graphs
compiled meanwhile (recompiles) and timing each swap.

    python -m bench.compile [--model sdxl|flux] [--size 128] [--modes eager,default] [--scope blocks]
    python -m bench.compile --device cuda --dtype fp16 --size 1024 --modes eager,default,reduce-overhead
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import torch

from bench.swap import DTYPES, log, machine

RANK = 8
ATTENTION = (".to_q", ".to_k", ".to_v", ".to_out.0")


def build(spec: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    """The pipeline (denoiser only) on the device, and one step's inputs at the served size."""
    device, dtype, size = spec["device"], DTYPES[spec["dtype"]], spec["size"]
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    if spec["model"] in ("sdxl", "tiny-sdxl"):
        if spec["model"] == "sdxl":
            from bench.sdxl import build_pipe

            pipe = build_pipe(device, dtype, text_encoders=False)
        else:
            from devhub.bases import make_sdxl

            pipe = make_sdxl(0)  # fp32 on the CPU, as the zoo writes it
            if (device, dtype) != ("cpu", torch.float32):
                pipe.unet.to(device=device, dtype=dtype)
        config, latent = pipe.unet.config, size // 8
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs = {
            "sample": rand(2, config.in_channels, latent, latent),
            "timestep": torch.tensor(500.0, device=device),
            "encoder_hidden_states": rand(2, 77, config.cross_attention_dim),
            "added_cond_kwargs": {"text_embeds": rand(2, pooled), "time_ids": rand(2, 6)},
        }
        return pipe, inputs
    from bench.flux import build_pipe as build_flux

    pipe = build_flux(device, dtype, tuple(spec["flux_blocks"]))
    tokens = (size // 16) ** 2
    inputs = {
        "hidden_states": rand(1, tokens, 64),
        "encoder_hidden_states": rand(1, 512, 4096),
        "pooled_projections": rand(1, 768),
        "timestep": torch.tensor([0.5], device=device, dtype=dtype),
        "guidance": torch.tensor([3.5], device=device, dtype=dtype),
        "img_ids": torch.zeros(tokens, 3, device=device, dtype=dtype),
        "txt_ids": torch.zeros(512, 3, device=device, dtype=dtype),
    }
    return pipe, inputs


def loras(engine: Any, n: int = 2) -> list[Any]:
    """Rank-8 LoRAs on the denoiser's attention projections, small random values."""
    from worker.adapter import LoraLayer, ParsedAdapter, weight_of
    from worker.fusion import compute_dtype

    out = []
    for i in range(n):
        gen = torch.Generator().manual_seed(i)
        layers = {}
        for target, module in engine.modules.items():
            if target.startswith(f"{engine.family.denoiser}.") and target.endswith(ATTENTION):
                weight = weight_of(module)
                dtype = compute_dtype(weight)
                down = (torch.randn(RANK, weight.shape[1], generator=gen) / weight.shape[1] ** 0.5).to(weight.device)
                up = (torch.randn(weight.shape[0], RANK, generator=gen) * 0.01).to(weight.device)
                layers[target] = LoraLayer(down.to(dtype), up.to(dtype), 1.0)
        out.append(ParsedAdapter(key=f"bench/lora-{i}", layers=layers))
    return out


def run_mode(spec: dict[str, Any]) -> dict[str, Any]:
    """One mode in this process: compile (unless eager), steps, then swaps with a step after each."""
    from worker.compiled import check_config, compile_module, compiled_graphs
    from worker.engine import SwapEngine
    from worker.lowrank import FixedRank

    mode, device = spec["mode"], spec["device"]
    start = time.perf_counter()
    pipe, inputs = build(spec)
    log(f"{mode}: {spec['model']}-shaped denoiser built in {time.perf_counter() - start:.0f} s")
    # Compiled: fixed-shape unfused factors (what a worker serving unfused or auto has); eager: plain hooks.
    padded = mode != "eager" and not spec["fused_only"]
    engine = SwapEngine(pipe, fixed=FixedRank(2 * RANK, ATTENTION) if padded else None)
    denoiser = getattr(pipe, engine.family.denoiser)

    def step() -> float:
        begin = time.perf_counter()
        with torch.inference_mode():
            denoiser(**inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - begin

    row: dict[str, Any] = {"mode": mode, "padded_mib": engine.padded_bytes / 2**20}
    if mode != "eager":
        check_config(mode, device)
        compile_module(denoiser, mode, spec["scope"])
        row["compile_s"] = step()
        row["graphs"] = compiled_graphs()
        step()  # CUDA graph trees: the first call warms up, the second records, later ones replay
    step()
    row["step_s"] = statistics.median(step() for _ in range(spec["steps"]))
    graphs, swaps, steps = compiled_graphs() if mode != "eager" else 0, {"fused": [], "unfused": []}, []
    adapters = loras(engine)
    for i in range(spec["swaps"]):
        if i % 10 == 9:
            engine.restore()
        else:
            kind = "unfused" if i % 4 == 3 and not spec["fused_only"] else "fused"
            swaps[kind].append(engine.apply([(adapters[i % 2], 1.0)], kind).seconds)
        steps.append(step())
    engine.restore()
    row["recompiles"] = compiled_graphs() - graphs if mode != "eager" else 0
    row["fused_swap_s"] = statistics.median(swaps["fused"])
    row["unfused_swap_s"] = statistics.median(swaps["unfused"]) if swaps["unfused"] else None
    row["swap_step_s"] = statistics.median(steps)
    row["max_swap_step_s"] = max(steps)
    log(f"{mode}: {json.dumps(row)}")
    return row


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def table(rows: list[dict[str, Any]]) -> str:
    eager = next((r["step_s"] for r in rows if r["mode"] == "eager"), None)
    lines = [
        "| mode | first call s (compile, cold cache) | s/step | vs eager | fused swap s | unfused swap s "
        "| recompiles / swaps | s/step during swaps, median / max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['step_s'] / eager:.2f}x" if eager else "-"
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        lines.append(
            f"| {r['mode']} | {compile_s} | {r['step_s']:.3f} | {ratio} | {r['fused_swap_s']:.4f} "
            f"| {_seconds(r['unfused_swap_s'])} | {r['recompiles']} / {r['swaps']} "
            f"| {r['swap_step_s']:.3f} / {r['max_swap_step_s']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sdxl", choices=["sdxl", "tiny-sdxl", "flux"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--size", type=int, default=128, help="served image width and height")
    parser.add_argument("--modes", default="eager,default", help="eager and torch.compile modes, one process each")
    parser.add_argument("--scope", default="blocks", choices=["denoiser", "blocks"])
    parser.add_argument("--flux-blocks", default="1,2", help="FLUX.1 double,single blocks (the real model: 19,38)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median) before the swaps")
    parser.add_argument("--swaps", type=int, default=100)
    parser.add_argument("--fused-only", action="store_true", help="no fixed-shape unfused factors, fused swaps only")
    parser.add_argument("--warm-cache", action="store_true", help="keep the default inductor cache")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_mode(json.loads(args.worker))), flush=True)
        return
    command = "python -m bench.compile " + shlex.join(sys.argv[1:] if argv is None else argv)
    started, load_before = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), os.getloadavg()[0]
    rows = []
    for mode in args.modes.split(","):
        spec = {**vars(args), "mode": mode, "flux_blocks": [int(n) for n in args.flux_blocks.split(",")]}
        with tempfile.TemporaryDirectory(prefix="bench-compile-") as cache:
            env = dict(os.environ) if args.warm_cache else {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            worker = [sys.executable, "-m", "bench.compile", "--worker", json.dumps(spec)]
            proc = subprocess.run(worker, stdout=subprocess.PIPE, text=True, check=True, env=env)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        rows.append({**json.loads(line.removeprefix("RESULT ")), "swaps": args.swaps})
    what = {"sdxl": "SDXL base 1.0 UNet", "tiny-sdxl": "the tiny zoo's SDXL-architecture UNet"}.get(
        args.model, f"FLUX.1-dev blocks ({args.flux_blocks} double,single)"
    )
    print(f"\ncommand: {command}\nmachine: {machine(args.device)}\ndate: {started}")
    print(f"{what}, {args.dtype} on {args.device}, {args.size}x{args.size}, scope {args.scope}")
    print(f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"command": command, "machine": machine(args.device), "rows": rows}, out)


if __name__ == "__main__":
    main()
