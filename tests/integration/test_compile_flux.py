"""A compiled tiny FLUX.1 base: twenty swaps without one recompile, serving what eager serves; and the
negative control, a compile with the weights frozen into the graph, which the same check catches.

Here the transformer's repeated blocks are compiled (``LORAFARM_COMPILE_SCOPE=blocks``, diffusers'
regional compilation: the blocks hold every fixed-shape unfused target but the final ``proj_out``),
so that the suite covers that scope too; ``test_compile.py`` compiles the whole SDXL UNet.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from tests.integration.compiling import Base, Step, apply, changed_modes, check_steps, compiled, load, parse, png
from worker.adapter import ParsedAdapter
from worker.compiled import compiled_graphs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
diffusers_logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parents[2]
BASE = "tiny/flux-base"
NAMES = ["diffusers", "kohya", "xlabs", "te", "a", "b", "c"]
STEPS: list[Step] = [
    ([("diffusers", 1.0)], "fused", "a cat"),
    ([("kohya", 1.0)], "fused", "a cat"),
    ([("xlabs", 1.0)], "unfused", "a cat"),
    ([("te", 1.0)], "unfused", "a cat"),
    ([("a", 0.7), ("b", 0.3)], "fused", "a cat"),
    ([("a", 0.7), ("b", 0.3)], "unfused", "a cat"),
    ([("a", 0.4), ("b", 0.6)], "unfused", "a cat"),
    ([], "restore", "a cat"),
    ([("c", 1.0)], "unfused", "a cat"),
    ([("c", -0.8)], "fused", "a cat"),
    ([("kohya", 0.5)], "unfused", "a cat"),
    ([("a", 1.0), ("b", 1.0), ("c", 1.0), ("diffusers", 1.0)], "unfused", "a cat"),
    ([("a", 1.0), ("b", 1.0), ("c", 1.0), ("diffusers", 1.0)], "fused", "a cat"),
    ([], "restore", "a cat"),
    ([("xlabs", 0.7), ("te", 0.7)], "fused", "a cat"),
    ([("diffusers", 1.0)], "unfused", "a cat"),
    ([("diffusers", 1.2)], "fused", "a cat"),
    # five rank-4 LoRAs on one module: rank 20, over the compiled maximum of 16, so fused instead
    ([("a", 1.0), ("b", 1.0), ("c", 1.0), ("diffusers", 1.0), ("te", 1.0)], "unfused", "a cat"),
    ([("te", 1.0)], "fused", "a cat"),
    ([], "restore", "a cat"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def served(zoo_dir: Path) -> Base:
    return compiled(zoo_dir, BASE, scope="blocks")


@pytest.fixture(scope="module")
def eager(zoo_dir: Path) -> Base:
    return load(zoo_dir, BASE)


@pytest.fixture(scope="module")
def adapters(zoo_dir: Path, served: Base) -> dict[str, ParsedAdapter]:
    return {name: parse(zoo_dir, served, f"flux-lora-{name}") for name in NAMES}


def test_twenty_swaps_never_recompile_the_transformer_and_serve_what_eager_serves(
    served: Base, eager: Base, adapters: dict[str, ParsedAdapter]
) -> None:
    assert served.denoiser is not None
    graphs = compiled_graphs()
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            modes = check_steps(served, eager, adapters, STEPS)
            # and the same request twice, or after swapping away and back, gives the same bytes
            apply(served, adapters, [("a", 1.0)], "unfused")
            first = png(served)
            apply(served, adapters, [("b", 1.0)], "fused")
            apply(served, adapters, [("a", 1.0)], "unfused")
            assert png(served) == png(served) == first
    finally:
        served.engine.restore()
        eager.engine.restore()
    assert compiled_graphs() == graphs and served.denoiser.recompiles == 0
    assert changed_modes(STEPS, modes) == [17]


def test_negative_control_weights_frozen_into_the_graph_fail_the_equality_check(zoo_dir: Path) -> None:
    """A fresh process compiles the transformer with inductor's freezing on (what the worker refuses):
    the graph keeps the base weights as constants, so a fused LoRA changes nothing and ``check_steps``
    fails. Without this, a check that could not fail would prove nothing."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.frozen", str(zoo_dir), BASE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "caught: step 0 [('a', 1.0)] fused: compiled image is" in proc.stdout, proc.stdout
