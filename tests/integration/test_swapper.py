"""EngineSwapper on the tiny SDXL pipeline, adapters fetched from devhub: fixed modes, ``auto``, calibration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import HfApi

from common.errors import AdapterIncompatible
from common.schemas import AdapterRef, adapter_set_key
from tests.integration.pipes import changed, generate, load_pipe, snapshot
from worker.calibrate import calibrate, synthetic_adapter
from worker.engine import SwapEngine
from worker.modes import COST_KINDS, CostTracker
from worker.settings import WorkerSettings
from worker.store import AdapterStore
from worker.swapper import EngineSwapper, Outlook

WEIGHTS = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def pipe(zoo_dir: Path) -> Any:
    torch.set_num_threads(1)
    return load_pipe(zoo_dir)


@pytest.fixture
def engine(pipe: Any) -> Iterator[SwapEngine]:
    engine = SwapEngine(pipe, pristine="device")
    yield engine
    engine.restore()


@pytest.fixture
def store(engine: SwapEngine, pipe: Any, devhub_url: str, hf_cache: Path) -> Iterator[AdapterStore]:
    settings = WorkerSettings(base="tiny/sdxl-base", hf_endpoint=devhub_url, hf_cache_dir=str(hf_cache))
    store = AdapterStore(settings, engine=engine)
    yield store
    store.close()


def ref(devhub_url: str, name: str) -> AdapterRef:
    repo = f"tiny/{name}"
    return AdapterRef(repo_id=repo, revision=HfApi(endpoint=devhub_url).model_info(repo).sha, weight_name=WEIGHTS)


def costs(*, fused: float, unfused_swap: float, step: float, restore: float = 0.0) -> CostTracker:
    tracker = CostTracker()
    for kind, value in zip(COST_KINDS, (fused, restore, unfused_swap, step), strict=True):
        tracker.observe(kind, value)
    return tracker


#: Fusing is dear, the low-rank path cheap: a one-off adapter over a few steps goes unfused.
CHEAP_UNFUSED = {"fused": 1.0, "unfused_swap": 0.01, "step": 0.01}


def test_fixed_modes_apply_as_named_and_the_base_comes_back_exact(
    pipe: Any, engine: SwapEngine, store: AdapterStore, devhub_url: str
) -> None:
    base = snapshot(pipe)
    a = ref(devhub_url, "sdxl-lora-diffusers")
    for mode in ("fused", "unfused"):
        swapper = EngineSwapper(engine, store, mode=mode)
        outcome = swapper.swap([a])
        assert (outcome.changed, outcome.mode) == (True, mode)
        assert engine.active.mode == mode
        touched = changed(pipe, base)
        assert bool(touched) == (mode == "fused"), touched  # unfused leaves every weight as it was
        assert swapper.swap([a]).changed is False
        swapper.swap([])
        assert changed(pipe, base) == []


def test_auto_unfuses_a_one_off_and_fuses_a_run_of_the_same_adapter(
    engine: SwapEngine, store: AdapterStore, devhub_url: str
) -> None:
    a, b = ref(devhub_url, "sdxl-lora-diffusers"), ref(devhub_url, "sdxl-lora-peft")
    swapper = EngineSwapper(engine, store, mode="auto", costs=costs(**CHEAP_UNFUSED))
    # One job of 2 steps for A, then B: 0.01 + 2 * 0.01 unfused beats 1.0 fused.
    assert swapper.swap([a], Outlook(steps=2, upcoming=[adapter_set_key([b])])).mode == "unfused"
    # B with 200 more jobs of B queued behind it: fusing once is cheaper than 201 * 25 slower steps.
    assert swapper.swap([b], Outlook(steps=25, upcoming=[adapter_set_key([b])] * 200)).mode == "fused"
    assert engine.active.mode == "fused"


def test_auto_without_measurements_fuses(engine: SwapEngine, store: AdapterStore, devhub_url: str) -> None:
    swapper = EngineSwapper(engine, store, mode="auto")
    assert swapper.swap([ref(devhub_url, "sdxl-lora-diffusers")], Outlook(steps=1)).mode == "fused"


def test_real_swaps_feed_the_cost_tracker(engine: SwapEngine, store: AdapterStore, devhub_url: str) -> None:
    tracker = CostTracker()
    swapper = EngineSwapper(engine, store, mode="fused", costs=tracker)
    swapper.swap([ref(devhub_url, "sdxl-lora-diffusers")])
    assert tracker.values["fused_apply_s"] > 0
    assert "unfused_swap_s" not in tracker.values


def test_auto_images_match_the_fused_ones_closely(
    pipe: Any, engine: SwapEngine, store: AdapterStore, devhub_url: str
) -> None:
    a = ref(devhub_url, "sdxl-lora-kohya")
    EngineSwapper(engine, store, mode="fused").swap([a])
    fused = generate(pipe)
    engine.restore()
    swapper = EngineSwapper(engine, store, mode="auto", costs=costs(**CHEAP_UNFUSED))
    assert swapper.swap([a], Outlook(steps=2)).mode == "unfused"
    assert abs(generate(pipe) - fused).max() < 2e-3


def test_a_failed_switch_leaves_the_swapper_in_step_with_the_engine(
    pipe: Any, engine: SwapEngine, store: AdapterStore, devhub_url: str
) -> None:
    base = snapshot(pipe)
    a = ref(devhub_url, "sdxl-lora-diffusers")
    swapper = EngineSwapper(engine, store, mode="fused")
    swapper.swap([a])
    with pytest.raises(AdapterIncompatible):
        swapper.swap([ref(devhub_url, "sdxl-lora-misfit")])
    # Validation fails before anything is touched: A is still on, and the swapper knows it.
    assert swapper.active() == [a.key] == engine.active.keys
    assert swapper.swap([a]).changed is False
    swapper.swap([])
    assert changed(pipe, base) == []


def test_calibration_measures_every_cost_and_leaves_the_base_exact(pipe: Any, engine: SwapEngine) -> None:
    base = snapshot(pipe)
    adapter = synthetic_adapter(engine)
    assert adapter.layers and all(t.startswith("unet.") for t in adapter.layers)
    tracker = calibrate(engine)
    costs = tracker.costs()
    assert costs is not None
    assert costs.fused_apply_s > 0 and costs.unfused_swap_s > 0 and costs.restore_s > 0
    assert costs.unfused_step_s >= 0
    assert engine.active.adapters == ()
    assert changed(pipe, base) == []
