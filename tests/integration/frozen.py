"""The negative control of the compile tests, run in a process of its own (``test_compile_flux.py``).

``python -m tests.integration.frozen ZOO BASE`` compiles the base's denoiser blocks (regional
compilation, which is quicker than the whole denoiser and holds every LoRA target of the tiny
FLUX.1 base) with inductor's freezing on, which ``CompiledDenoiser`` refuses: the weights become
constants of the graph. It then runs ``check_steps`` with one fused LoRA and prints ``caught: <the assertion>`` when the
check fails, as it must (exit 0); ``missed`` (exit 1) when the stale graph passed it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from tests.integration.compiling import SIZE, check_steps, draw, load, parse
from worker.compiled import compiled_graphs


def main(zoo: Path, base: str) -> int:
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(1)
    served, eager = load(zoo, base), load(zoo, base)
    adapter = parse(zoo, served, "flux-lora-a" if "flux" in base else "sdxl-lora-a")
    getattr(served.pipe, served.family.denoiser).compile_repeated_blocks(dynamic=False)
    with torch._inductor.config.patch(freezing=True):  # the deliberate mistake
        draw(served)
    assert compiled_graphs() >= 1, "nothing was compiled"
    print(f"compiled {compiled_graphs()} graph(s) at {SIZE}x{SIZE} with freezing on", flush=True)
    try:
        check_steps(served, eager, {"a": adapter}, [([("a", 1.0)], "fused", "a cat")])
    except AssertionError as exc:
        print(f"caught: {exc}", flush=True)
        return 0
    print("missed: the frozen graph passed the equality check", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
