"""Base switch benchmark: how long a multi-base worker takes to make a warm base active again.

The SDXL base 1.0 UNet (2.57 B parameters; with ``--text-encoders`` also CLIP ViT-L and bigG),
built from its real configuration with seeded weights (``bench/sdxl.py``), is held by
``worker.residency.BaseWeights`` as a multi-base worker holds a base: a host copy (pinned on
CUDA), and a device copy while active. Timed, each repeated: the warm switch (host to device,
the host copy kept: what a switch back costs), the offload (device to a new host copy: what a
base that kept no copy costs to leave), and with ``--cold`` the cold load (the base's safetensors
files read again, then to the device). After the last switch every tensor on the device is
compared with its host copy.

On a CPU the "device" is the same memory: a switch is a memory copy, not a PCIe transfer, and
there is no target to meet. On CUDA the warm switch of the pipeline (``--text-encoders``) in fp16
is held to ``goals.BASE_SWITCH_GPU_S`` (``bench/gpu_baseswitch.sh`` runs that).

    python -m bench.baseswitch [--device cuda] [--dtype fp16] [--text-encoders] [--repeats 5] [--cold]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench import goals
from bench.sdxl import build_pipe
from worker.residency import BaseWeights

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def timed(step: Any) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def save_components(pipe: Any, folder: Path) -> None:
    """The pipeline's models as a Hub repo holds them (``<component>/*.safetensors``), for cold loads."""
    for name, model in pipe.components.items():
        if isinstance(model, torch.nn.Module):
            model.save_pretrained(folder / name, safe_serialization=True)
    pipe.register_to_config(_name_or_path=str(folder))


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtype = DTYPES[args.dtype]
    started = time.perf_counter()
    pipe = build_pipe("cpu", dtype, args.text_encoders)
    built_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="lorafarm-baseswitch-") as tmp:
        if args.cold:
            save_components(pipe, Path(tmp))
        weights = BaseWeights(pipe, args.device, pin=args.device == "cuda")
        nbytes = weights.nbytes
        weights.load_warm()  # first copy (allocations), not timed
        warm, offload, cold = [], [], []
        for _ in range(args.repeats):
            weights.free_device()
            warm.append(timed(weights.load_warm))
        for _ in range(args.repeats):
            weights.drop_host()
            offload.append(timed(weights.to_host))
        if args.cold:
            for _ in range(max(1, args.repeats // 2)):
                weights.to_disk()
                cold.append(timed(lambda: weights.load_cold(keep_host=True)))
        ok = weights.matches_host()
    return {
        "device": args.device,
        "dtype": args.dtype,
        "components": [n for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)],
        "bytes": nbytes,
        "built_s": built_s,
        "warm_switch_s": warm,
        "offload_s": offload,
        "cold_load_s": cold,
        "exact": ok,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "machine": machine(args.device),
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine(device: str) -> str:
    out = f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    return out if device == "cpu" else f"{out}, {torch.cuda.get_device_name()}"


def report(result: dict[str, Any], command: str) -> str:
    gb = result["bytes"] / 1e9
    rows = ["| step | median s | min s | GB/s (median) | runs |", "|---|---|---|---|---|"]
    for label, key in (
        ("warm switch: host copy to device", "warm_switch_s"),
        ("offload: device to a new host copy", "offload_s"),
        ("cold load: files to host copy to device", "cold_load_s"),
    ):
        times = result[key]
        if times:
            median = statistics.median(times)
            rows.append(f"| {label} | {median:.3f} | {min(times):.3f} | {gb / median:.1f} | {len(times)} |")
    cpu = result["device"] == "cpu"
    lines = [
        *rows,
        "",
        f"{', '.join(result['components'])} in {result['dtype']}: {gb:.2f} GB; every tensor equal to its host "
        f"copy after the switches: {result['exact']}; peak RSS {result['peak_rss_gib']:.1f} GiB.",
    ]
    if cpu:
        lines.append('On a CPU, "device" and host are the same memory: these are memory copies, not PCIe transfers.')
    else:
        median = statistics.median(result["warm_switch_s"])
        verdict = goals.at_most("warm base switch on the GPU", median, goals.BASE_SWITCH_GPU_S, " s", ".3f")
        lines.append(verdict.line())
    lines += [f"Machine: {result['machine']}. Run {result['when']}.", f"Command: `{command}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.baseswitch", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--text-encoders", action="store_true", help="the UNet and both text encoders (the pipeline)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="also time cold loads from safetensors files")
    ap.add_argument("--json", type=Path, default=None, help="write the measurements here too")
    args = ap.parse_args(argv)
    result = run(args)
    command = "python -m bench.baseswitch " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(report(result, command))
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
