"""A compiled tiny SDXL base: twenty swaps of every kind without one recompile, serving what eager serves.

One compiled pipeline for the module (CPU inductor; a cold compile takes minutes on 2 cores),
beside an eager one that gives the reference images (``tests.integration.compiling``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from common.errors import AdapterIncompatible, InvalidRequest
from tests.integration.compiling import RANK, Base, Step, apply, changed_modes, check_steps, compiled, load, parse, png
from worker.adapter import ParsedAdapter
from worker.compiled import CompiledDenoiser, CompileFailed, compiled_graphs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
diffusers_logging.set_verbosity_error()

BASE = "tiny/sdxl-base"
PIVOTAL = "a photo of <s0><s1>"
NAMES = ["diffusers", "peft", "kohya", "kohya-sgm", "listbase", "rank32", "pivotal", "a", "b", "c"]
#: Twenty swaps: every format, compositions, strength changes, both modes, restores, and an unfused
#: set over the compiled maximum rank (32 > 16), which the policy applies fused. Strengths stay where the
#: tiny random base is not chaotic (``tests.integration.compiling``).
STEPS: list[Step] = [
    ([("diffusers", 1.0)], "fused", "a cat"),
    ([("peft", 1.0)], "fused", "a cat"),
    ([("kohya", 1.0)], "unfused", "a cat"),
    ([("kohya-sgm", 0.8)], "fused", "a cat"),
    ([("a", 0.7), ("b", 0.3)], "fused", "a cat"),
    ([("a", 0.7), ("b", 0.3)], "unfused", "a cat"),
    ([("a", 0.5), ("b", 0.5)], "unfused", "a cat"),
    ([], "restore", "a cat"),
    ([("listbase", 1.0)], "unfused", "a cat"),
    ([("rank32", 0.5)], "unfused", "a cat"),
    ([("c", -0.5)], "fused", "a cat"),
    ([("pivotal", 1.0)], "fused", PIVOTAL),
    ([("a", 0.4), ("b", 0.4), ("c", 0.4), ("kohya", 0.4)], "unfused", "a cat"),
    ([("kohya", 1.3)], "fused", "a cat"),
    ([("pivotal", 0.6)], "unfused", PIVOTAL),
    ([], "restore", "a cat"),
    ([("peft", 0.6), ("c", 0.4)], "fused", "a cat"),
    ([("peft", 0.6), ("c", 0.4)], "unfused", "a cat"),
    ([("rank32", 0.5), ("a", 1.0)], "fused", "a cat"),
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
    return compiled(zoo_dir, BASE)


@pytest.fixture(scope="module")
def eager(zoo_dir: Path) -> Base:
    return load(zoo_dir, BASE)


@pytest.fixture(scope="module")
def adapters(zoo_dir: Path, served: Base) -> dict[str, ParsedAdapter]:
    return {name: parse(zoo_dir, served, f"sdxl-lora-{name}") for name in NAMES}


@pytest.fixture
def restored(served: Base, eager: Base) -> Iterator[None]:
    yield
    served.engine.restore()
    eager.engine.restore()


def test_twenty_swaps_of_every_kind_never_recompile_and_serve_what_eager_serves(
    served: Base, eager: Base, adapters: dict[str, ParsedAdapter], restored: None
) -> None:
    assert served.denoiser is not None and served.denoiser.seconds is not None
    graphs = compiled_graphs()
    with torch.compiler.set_stance("fail_on_recompile"):
        modes = check_steps(served, eager, adapters, STEPS)
    assert compiled_graphs() == graphs and served.denoiser.recompiles == 0
    # The unfused steps went through the fixed-shape factors, except the one over the maximum rank.
    assert changed_modes(STEPS, modes) == [9]


def test_the_same_request_gives_the_same_bytes_across_swaps(
    served: Base, adapters: dict[str, ParsedAdapter], restored: None
) -> None:
    with torch.compiler.set_stance("fail_on_recompile"):
        base = png(served)
        apply(served, adapters, [("a", 1.0)], "fused")
        first, again = png(served), png(served)
        apply(served, adapters, [("b", 1.0)], "unfused")
        other = png(served)
        apply(served, adapters, [("a", 1.0)], "fused")
        back = png(served)
        served.engine.restore()
        assert png(served) == base
    assert first == again == back
    assert len({base, first, other}) == 3


def test_an_unfused_set_over_the_maximum_rank_is_refused_when_the_policy_says_so(
    zoo_dir: Path, adapters: dict[str, ParsedAdapter]
) -> None:
    refusing = load(zoo_dir, BASE, fixed_rank=RANK, overflow="refuse")
    with pytest.raises(AdapterIncompatible, match="rank 32, over the compiled maximum of 16"):
        apply(refusing, adapters, [("rank32", 1.0)], "unfused")
    assert refusing.engine.active.adapters == ()
    assert apply(refusing, adapters, [("a", 1.0), ("b", 1.0)], "unfused") == "unfused"


def test_freezing_weights_into_the_graph_is_refused_at_compile_time(eager: Base) -> None:
    """Freezing would make every swap a silent no-op (``frozen.py`` shows it): the worker must not start."""
    denoiser = CompiledDenoiser(eager.pipe, eager.family, sizes=[(64, 64)])
    with torch._inductor.config.patch(freezing=True), pytest.raises(CompileFailed, match="freezing"):
        denoiser.compile()
    assert denoiser.seconds is None


def test_a_shape_not_warmed_up_is_refused_when_the_worker_says_so(served: Base) -> None:
    assert served.denoiser is not None
    strict = CompiledDenoiser(served.pipe, served.family, sizes=[(64, 64)], new_sizes="refuse")
    strict.shapes = set(served.denoiser.shapes)
    strict.admit(served.family.call_kwargs("x", steps=2, seed=0, width=64, height=64))
    with pytest.raises(InvalidRequest, match="128x64"):
        strict.admit(served.family.call_kwargs("x", steps=2, seed=0, width=128, height=64))
    # Without classifier-free guidance the batch halves: another shape.
    with pytest.raises(InvalidRequest, match="batch 1"):
        strict.admit(served.family.call_kwargs("x", steps=2, seed=0, width=64, height=64, guidance_scale=1.0))
