"""Batch benchmark: images per second for four one-image jobs against one job of four images.

Three ways to make 4 images, side by side, median seconds of ``--repeats`` runs each:

- ``n=1 x4``: four pipeline calls of one image (four jobs of ``n`` 1 on a warm adapter);
- ``n=4 loop``: one job of 4 images as the worker runs it where one call is not bit-identical to
  one image alone (``batch="loop"`` in the family table: every family on CPU today);
- ``n=4 one call``: one pipeline call with a generator per image (``batch="one_call"``).

On the tiny SDXL base of the zoo, through the worker's own ``generate``; and on the SDXL-shaped
UNet (2.57 B parameters, ``bench.sdxl``, seeded random weights, no VAE or text encoders: the
prompt embeddings are given and the latents returned), through ``StableDiffusionXLPipeline``
itself, where the loop is four one-image calls by construction, so only ``n=1 x4`` and one call
are timed.

    python -m bench.batch [--steps 1] [--repeats 3] [--size 256] [--device cpu] [--skip-sdxl]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

N = 4


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median_s(run: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``run`` over ``repeats`` runs, after one warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tiny_sdxl(steps: int, repeats: int) -> dict[str, float]:
    """Seconds for 4 images on the tiny SDXL base, each way, through ``worker.pipeline.generate``."""
    from diffusers import DiffusionPipeline

    from common.schemas import Job
    from devhub.zoo import build_zoo
    from worker.families import pipeline_family
    from worker.pipeline import generate

    with tempfile.TemporaryDirectory() as root:
        build_zoo(Path(root))
        pipe = DiffusionPipeline.from_pretrained(f"{root}/tiny/sdxl-base", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    family = pipeline_family(type(pipe))

    def job(images: int, seed: int = 1) -> Job:
        return Job(pool="tiny/sdxl-base", prompt="an elephant", seed=seed, images=images, num_inference_steps=steps)

    def singles() -> None:
        for seed in range(1, N + 1):
            generate(pipe, job(1, seed), family=family, steps=steps)

    return {
        "n=1 x4": median_s(singles, repeats),
        "n=4 loop": median_s(lambda: generate(pipe, job(N), family=family, steps=steps, batch="loop"), repeats),
        "n=4 one call": median_s(lambda: generate(pipe, job(N), family=family, steps=steps, batch="one_call"), repeats),
    }


def sdxl_unet(steps: int, repeats: int, size: int, device: str) -> dict[str, float]:
    """Seconds for 4 images' latents with the SDXL-shaped UNet, four calls against one call."""
    from bench.sdxl import build_pipe

    log("building the SDXL-shaped UNet (seeded random weights, fp32)")
    pipe = build_pipe(device, torch.float32, text_encoders=False)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    embeds = {
        "prompt_embeds": torch.randn(1, 77, 2048, generator=gen),
        "pooled_prompt_embeds": torch.randn(1, 1280, generator=gen),
        "negative_prompt_embeds": torch.randn(1, 77, 2048, generator=gen),
        "negative_pooled_prompt_embeds": torch.randn(1, 1280, generator=gen),
    }
    embeds = {k: v.to(device) for k, v in embeds.items()}
    call = {"num_inference_steps": steps, "height": size, "width": size, "output_type": "latent", **embeds}

    def images(seeds: list[int]) -> None:
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        with torch.inference_mode():
            pipe(**call, generator=generators, num_images_per_prompt=len(seeds))

    def singles() -> None:
        for seed in range(1, N + 1):
            images([seed])

    log(f"timing the SDXL-shaped UNet at {size}x{size}, {steps} step(s)")
    return {
        "n=1 x4": median_s(singles, repeats),
        "n=4 one call": median_s(lambda: images(list(range(1, N + 1))), repeats),
    }


def table(rows: dict[str, dict[str, float]]) -> str:
    ways = ["n=1 x4", "n=4 loop", "n=4 one call"]
    lines = [
        "| model | " + " | ".join(f"{w}: s (images/s)" for w in ways) + " | one call / n=1 x4 |",
        "|---|" + "---|" * (len(ways) + 1),
    ]
    for name, times in rows.items():
        cells = [f"{times[w]:.3f} ({N / times[w]:.2f})" if w in times else "= n=1 x4" for w in ways]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {times['n=1 x4'] / times['n=4 one call']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="SDXL-shaped UNet: image side in pixels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-sdxl", action="store_true", help="only the tiny base")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = {f"tiny SDXL base, 64x64, {args.steps} step(s)": tiny_sdxl(args.steps, args.repeats)}
    log(f"tiny base: {rows}")
    if not args.skip_sdxl:
        name = f"SDXL-shaped UNet, {args.size}x{args.size}, {args.steps} step(s)"
        rows[name] = sdxl_unet(args.steps, args.repeats, args.size, args.device)
    print(table(rows))
    threads = torch.get_num_threads()
    print(f"\ncommand: python -m bench.batch {shlex.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {threads}, ")
    print(f"torch {torch.__version__}, median of {args.repeats} runs after one warm-up")


if __name__ == "__main__":
    main()
