"""The swap engine on the tiny zoo's real FLUX.1 pipeline, checked against diffusers' own LoRA path.

Every Flux format of the zoo (PEFT keys under ``transformer.``, kohya with BFL names and alphas,
XLabs, a CLIP text-encoder part) goes through ``FluxPipeline.lora_state_dict``; lorafarm's fused
and unfused outputs must equal what diffusers makes with ``load_lora_weights`` + ``fuse_lora``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionXLPipeline
from diffusers.utils import logging as diffusers_logging
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import AdapterIncompatible
from worker.adapter import ParsedAdapter, read_adapter
from worker.engine import SwapEngine
from worker.families import pipeline_family

WEIGHTS = "pytorch_lora_weights.safetensors"
FORMATS = ["diffusers", "kohya", "xlabs", "te"]
PARTS = ("transformer", "text_encoder", "text_encoder_2", "vae")
FUSED_ATOL = 1e-4  # fp32: lorafarm's one addmm vs PEFT's W + (B @ A) * s
UNFUSED_ATOL = 2e-3  # fp32: the low-rank path at inference vs a fused weight
FLUX = pipeline_family(FluxPipeline)

diffusers_logging.set_verbosity_error()


def load_pipe(zoo: Path, dtype: torch.dtype = torch.float32) -> Any:
    pipe = FluxPipeline.from_pretrained(zoo / "tiny/flux-base", dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: Any, prompt: str = "a cat") -> np.ndarray:
    out = pipe(
        prompt,
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return np.asarray(out.images)


def parse(zoo: Path, name: str, family: Any = FLUX) -> ParsedAdapter:
    return read_adapter(
        zoo / "tiny" / name / WEIGHTS, key=f"tiny/{name}@test", max_bytes=4 << 20, max_rank=64, family=family
    )


def snapshot(pipe: Any) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{name}": tensor.detach().clone()
        for part in PARTS
        for name, tensor in getattr(pipe, part).state_dict().items()
    }


def changed(pipe: Any, reference: dict[str, torch.Tensor]) -> list[str]:
    now = snapshot(pipe)
    assert now.keys() == reference.keys()
    return [name for name, tensor in now.items() if not torch.equal(tensor, reference[name])]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe(zoo_dir: Path) -> Any:
    return load_pipe(zoo_dir)


@pytest.fixture(scope="module")
def pristine_state(pipe: Any) -> dict[str, torch.Tensor]:
    return snapshot(pipe)


@pytest.fixture(scope="module")
def shared_engine(pipe: Any) -> SwapEngine:
    return SwapEngine(pipe)


@pytest.fixture
def engine(shared_engine: SwapEngine, pipe: Any, pristine_state: dict[str, torch.Tensor]) -> Iterator[SwapEngine]:
    yield shared_engine
    shared_engine.restore()
    assert changed(pipe, pristine_state) == []


@pytest.fixture(scope="module")
def adapters(zoo_dir: Path) -> dict[str, ParsedAdapter]:
    found = {f"flux-lora-{f}": parse(zoo_dir, f"flux-lora-{f}") for f in [*FORMATS, "a", "b", "c"]}
    # An SDXL LoRA parsed for its own base: it names UNet layers this transformer does not have.
    found["sdxl-lora-a"] = parse(zoo_dir, "sdxl-lora-a", pipeline_family(StableDiffusionXLPipeline))
    return found


@pytest.fixture(scope="module")
def base_image(pipe: Any) -> np.ndarray:
    return generate(pipe)


def diffusers_reference(zoo: Path, names: list[str], scales: list[float] | None = None) -> np.ndarray:
    """The image diffusers makes with these LoRAs loaded (and fused, when there is one)."""
    ref = load_pipe(zoo)
    for i, name in enumerate(names):
        ref.load_lora_weights(str(zoo / "tiny" / name), weight_name=WEIGHTS, adapter_name=f"x{i}")
    if scales is not None:
        ref.set_adapters([f"x{i}" for i in range(len(names))], scales)
    else:
        ref.fuse_lora()
    return generate(ref)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_and_unfused_match_diffusers_fuse(
    fmt: str, zoo_dir: Path, pipe: Any, engine: SwapEngine, adapters: dict[str, ParsedAdapter], base_image: Any
) -> None:
    name = f"flux-lora-{fmt}"
    want = diffusers_reference(zoo_dir, [name])
    assert np.abs(want - base_image).max() > 0.05

    report = engine.apply([(adapters[name], 1.0)])
    assert report.changed and report.mode == "fused" and report.touched == len(adapters[name].layers)
    np.testing.assert_allclose(generate(pipe), want, atol=FUSED_ATOL, rtol=0)

    engine.apply([(adapters[name], 1.0)], mode="unfused")
    np.testing.assert_allclose(generate(pipe), want, atol=UNFUSED_ATOL, rtol=0)


def test_every_kind_of_flux_linear_is_targeted(adapters: dict[str, ParsedAdapter]) -> None:
    """Attention and its text stream, both feed-forwards, single-block MLP and output, modulation."""
    targets = {*adapters["flux-lora-diffusers"].layers, *adapters["flux-lora-kohya"].layers}
    block, single = "transformer.transformer_blocks.1.", "transformer.single_transformer_blocks.1."
    for module in ("attn.to_q", "attn.add_k_proj", "attn.to_add_out", "ff.net.2", "ff_context.net.0.proj"):
        assert block + module in targets, module
    for module in ("norm1.linear", "norm1_context.linear"):  # kohya's img_mod_lin / txt_mod_lin
        assert block + module in targets, module
    for module in ("proj_mlp", "proj_out", "norm.linear", "attn.to_v"):
        assert single + module in targets, module
    assert {t.split(".", 1)[0] for t in adapters["flux-lora-te"].layers} == {"transformer", "text_encoder"}


def test_kohya_fused_qkv_is_split_and_alpha_folded(adapters: dict[str, ParsedAdapter]) -> None:
    kohya = adapters["flux-lora-kohya"].layers
    qkv = [kohya[f"transformer.transformer_blocks.0.attn.to_{p}"] for p in "qkv"]
    assert all(torch.equal(layer.down, qkv[0].down) for layer in qkv)  # one down matrix, as trained
    assert {tuple(layer.up.shape) for layer in qkv} == {(32, 4)}
    # diffusers' Flux converter folds alpha / rank into the factors and returns no alpha
    assert {layer.scale for layer in kohya.values()} == {1.0}
    assert {layer.scale for layer in adapters["flux-lora-diffusers"].layers.values()} == {8 / 4}


def test_kohya_linear1_at_flux1_width_is_split_onto_q_k_v_and_mlp(tmp_path: Path, zoo_dir: Path) -> None:
    """``single_blocks_N_linear1`` (written only at FLUX.1's real widths) reaches four real-width targets."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from devhub.bfl import kohya_flux_state
    from worker.adapter import validate
    from worker.engine import target_modules

    with torch.device("meta"):  # two real-width blocks: shapes only, no weights
        transformer = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)
    real = kohya_flux_state(transformer, rank=4, alpha=2.0, gen=torch.Generator().manual_seed(0))
    assert real["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * 3072 + 12288, 4)
    save_file(real, tmp_path / WEIGHTS)
    adapter = read_adapter(tmp_path / WEIGHTS, key="real@test", max_bytes=1 << 30, max_rank=64, family=FLUX)
    layers = adapter.layers
    single = "transformer.single_transformer_blocks.0."
    split = [layers[single + m] for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
    assert [layer.up.shape[0] for layer in split] == [3072, 3072, 3072, 12288]
    assert all(torch.equal(layer.down, split[0].down) for layer in split)  # one down matrix, alpha folded in
    parts = dict.fromkeys(("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"))
    validate(adapter, target_modules(FluxPipeline(**parts, transformer=transformer), FLUX.components))
    tiny = parse(zoo_dir, "flux-lora-kohya").layers  # a tiny transformer cannot have FLUX.1's widths
    assert single + "proj_mlp" not in tiny and single + "proj_out" in tiny


def test_composition_matches_diffusers_set_adapters(
    zoo_dir: Path, pipe: Any, engine: SwapEngine, adapters: dict[str, ParsedAdapter]
) -> None:
    want = diffusers_reference(zoo_dir, ["flux-lora-a", "flux-lora-b"], [0.7, 0.3])
    pair = [(adapters["flux-lora-a"], 0.7), (adapters["flux-lora-b"], 0.3)]
    engine.apply(pair)
    np.testing.assert_allclose(generate(pipe), want, atol=UNFUSED_ATOL, rtol=0)
    engine.apply(pair, mode="unfused")
    np.testing.assert_allclose(generate(pipe), want, atol=UNFUSED_ATOL, rtol=0)


def test_sdxl_keys_declared_for_flux_are_refused(zoo_dir: Path) -> None:
    with pytest.raises(AdapterIncompatible, match="keys outside"):
        parse(zoo_dir, "flux-lora-misfit")


def test_incompatible_adapter_leaves_the_base_untouched(
    pipe: Any, engine: SwapEngine, adapters: dict[str, ParsedAdapter]
) -> None:
    engine.apply([(adapters["flux-lora-a"], 1.0)])
    before, active = snapshot(pipe), engine.active
    with pytest.raises(AdapterIncompatible, match="no layer unet"):
        engine.apply([(adapters["flux-lora-b"], 1.0), (adapters["sdxl-lora-a"], 1.0)])
    assert engine.active == active and changed(pipe, before) == []


GOOD = ["flux-lora-a", "flux-lora-b", "flux-lora-c", "flux-lora-diffusers", "flux-lora-kohya", "flux-lora-xlabs"]
adapter_sets = st.lists(
    st.tuples(st.sampled_from([*GOOD, "flux-lora-te"]), st.sampled_from([1.0, 0.7, 0.3, -0.5])),
    max_size=3,
    unique_by=lambda pair: pair[0],
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("apply"), adapter_sets, st.sampled_from(["fused", "unfused"])),
        st.tuples(st.just("fail"), adapter_sets, st.sampled_from(["apply", "load"])),
        st.tuples(st.just("restore"), st.just([]), st.just("")),
    ),
    min_size=1,
    max_size=8,
)


@pytest.mark.slow
@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=operations)
def test_any_sequence_then_restore_is_bit_exact(
    ops: list[tuple[str, list[tuple[str, float]], str]],
    zoo_dir: Path,
    pipe: Any,
    shared_engine: SwapEngine,
    pristine_state: dict[str, torch.Tensor],
    adapters: dict[str, ParsedAdapter],
) -> None:
    engine = shared_engine
    for kind, chosen, extra in ops:
        wanted = [(adapters[name], scale) for name, scale in chosen]
        if kind == "apply":
            engine.apply(wanted, mode="unfused" if extra == "unfused" else "fused")
            if extra == "unfused":  # unfused writes no base weight
                assert changed(pipe, pristine_state) == []
        elif kind == "fail":
            before, active = snapshot(pipe), engine.active
            with pytest.raises(AdapterIncompatible):
                if extra == "load":  # the file is refused while parsing: nothing reaches the engine
                    engine.apply([*wanted, (parse(zoo_dir, "flux-lora-misfit"), 1.0)])
                else:
                    engine.apply([*wanted, (adapters["sdxl-lora-a"], 1.0)])
            assert engine.active == active and changed(pipe, before) == []
        else:
            engine.restore()
    engine.restore()
    assert changed(pipe, pristine_state) == []


def test_bf16_swaps_then_restore_is_bit_exact(zoo_dir: Path, adapters: dict[str, ParsedAdapter]) -> None:
    """FLUX.1 is served in bf16: many swaps, compositions and mode changes, then the base exactly."""
    pipe = load_pipe(zoo_dir, torch.bfloat16)
    before = snapshot(pipe)
    engine = SwapEngine(pipe)
    cycle = ["flux-lora-a", "flux-lora-kohya", "flux-lora-b", "flux-lora-xlabs", "flux-lora-te"]
    for i in range(15):
        first, second = adapters[cycle[i % 5]], adapters[cycle[(i + 2) % 5]]
        mode = "unfused" if i % 4 == 3 else "fused"
        engine.apply([(first, 1.0), (second, 0.5)] if i % 3 else [(first, 0.8)], mode)
    assert np.isfinite(generate(pipe)).all()
    engine.restore()
    assert changed(pipe, before) == []


def need(engine: SwapEngine, *layers: ParsedAdapter) -> int:
    """Bytes of pristine copies these adapters need fused together."""
    targets = {t for adapter in layers for t in adapter.layers}
    return sum(engine.modules[t].weight.nbytes for t in targets)


def test_pristine_budget_drops_idle_copies_then_goes_unfused(zoo_dir: Path, adapters: dict[str, ParsedAdapter]) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from worker.metrics import WorkerMetrics

    pipe = load_pipe(zoo_dir)
    before = snapshot(pipe)
    probe = SwapEngine(pipe)
    kohya, a = adapters["flux-lora-kohya"], adapters["flux-lora-a"]  # each targets linears the other does not
    budget = max(need(probe, a), need(probe, kohya))
    assert need(probe, a, kohya) > budget
    engine = SwapEngine(pipe, pristine="host", host_bytes=budget)
    metrics = WorkerMetrics("tiny/flux-base")
    metrics.watch_pristine(engine.pristine_tiers)

    assert engine.apply([(a, 1.0)]).mode == "fused"
    # kohya fits alone: the copies of weights only a touched (pristine again) make room for it
    assert engine.apply([(kohya, 1.0)]).mode == "fused"
    assert 0 < engine.pristine_tiers()["host"] <= budget and engine.pristine_tiers()["device"] == 0
    # a + kohya fused cannot be undone exactly within the budget: the same set goes unfused
    want = diffusers_reference(zoo_dir, ["flux-lora-a", "flux-lora-kohya"], [1.0, 1.0])
    report = engine.apply([(a, 1.0), (kohya, 1.0)])
    assert report.mode == "unfused" and engine.active.mode == "unfused"
    np.testing.assert_allclose(generate(pipe), want, atol=UNFUSED_ATOL, rtol=0)
    assert engine.apply([(a, 1.0), (kohya, 1.0)]).changed is False  # remembered: no second fused attempt

    scraped = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    tiers = {s.labels["tier"]: s.value for f in scraped if f.name == "lorafarm_pristine_bytes" for s in f.samples}
    assert tiers == {"device": 0, "host": engine.pristine_tiers()["host"]}
    engine.restore()
    assert changed(pipe, before) == []
