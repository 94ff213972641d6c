"""The swap engine on the tiny zoo's real SDXL pipeline, checked against diffusers' own LoRA path."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import logging as diffusers_logging
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from common.errors import (
    AdapterCorrupt,
    AdapterError,
    AdapterIncompatible,
    AdapterTooLarge,
    UnsafeAdapterFormat,
)
from tests.integration.pipes import changed, generate, load_pipe, snapshot
from worker.adapter import ParsedAdapter, read_adapter
from worker.engine import SwapEngine
from worker.families import pipeline_family

WEIGHTS = "pytorch_lora_weights.safetensors"
MAX_BYTES = 4 * 2**20  # the zoo's sdxl-lora-huge is just over this
MAX_RANK = 64
FORMATS = ["diffusers", "peft", "kohya", "kohya-sgm", "listbase", "rank32", "pivotal"]
PIVOTAL_PROMPT = "a photo of <s0><s1>"
FUSED_ATOL = 1e-4  # fp32: lorafarm's one addmm vs PEFT's W + (B @ A) * s
UNFUSED_ATOL = 2e-3  # fp32: the low-rank path at inference vs a fused weight, through two steps

SDXL = pipeline_family(StableDiffusionXLPipeline)

diffusers_logging.set_verbosity_error()


def parse(zoo: Path, name: str, *, unet_config: Any = None, **caps: int) -> ParsedAdapter:
    """``unet_config``: what maps kohya files with the original Stability block names (the worker passes it)."""
    folder = zoo / "tiny" / name
    embeddings = folder / "embeddings.safetensors"
    return read_adapter(
        folder / WEIGHTS,
        key=f"tiny/{name}@test",
        embeddings=embeddings if embeddings.exists() else None,
        max_bytes=caps.get("max_bytes", MAX_BYTES),
        max_rank=caps.get("max_rank", MAX_RANK),
        family=SDXL,
        denoiser_config=unet_config,
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: a second intra-op thread only adds contention on a shared 2-core machine."""
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
def adapters(zoo_dir: Path, pipe: Any) -> dict[str, ParsedAdapter]:
    names = [f"sdxl-lora-{f}" for f in [*FORMATS, "a", "b", "c", "misfit", "badkeys"]] + ["sd15-lora"]
    return {name: parse(zoo_dir, name, unet_config=pipe.unet.config) for name in names}


@pytest.fixture(scope="module")
def base_image(pipe: Any) -> np.ndarray:
    return generate(pipe)


def diffusers_reference(zoo: Path, name: str, prompt: str) -> np.ndarray:
    """The image diffusers itself makes with this LoRA loaded and fused."""
    ref = load_pipe(zoo)
    folder = zoo / "tiny" / name
    ref.load_lora_weights(str(folder), weight_name=WEIGHTS, adapter_name="x")
    if (folder / "embeddings.safetensors").exists():
        rows = load_file(folder / "embeddings.safetensors")
        for part, file_key in (("", "clip_l"), ("_2", "clip_g")):
            ref.load_textual_inversion(
                rows[file_key],
                token=["<s0>", "<s1>"],
                tokenizer=getattr(ref, f"tokenizer{part}"),
                text_encoder=getattr(ref, f"text_encoder{part}"),
            )
    ref.fuse_lora()
    return generate(ref, prompt)


# rank32 and listbase take the diffusers format's path again, larger or under a list-valued base: slow.
@pytest.mark.parametrize(
    "fmt", [pytest.param(f, marks=pytest.mark.slow) if f in ("rank32", "listbase") else f for f in FORMATS]
)
def test_fused_and_unfused_match_diffusers_fuse(
    fmt: str,
    zoo_dir: Path,
    pipe: Any,
    engine: SwapEngine,
    adapters: dict[str, ParsedAdapter],
    base_image: Any,
) -> None:
    name = f"sdxl-lora-{fmt}"
    prompt = PIVOTAL_PROMPT if fmt == "pivotal" else "a cat"
    want = diffusers_reference(zoo_dir, name, prompt)
    assert np.abs(want - (generate(pipe, prompt) if fmt == "pivotal" else base_image)).max() > 0.05

    report = engine.apply([(adapters[name], 1.0)])
    assert report.changed and report.mode == "fused" and report.touched == len(adapters[name].layers)
    np.testing.assert_allclose(generate(pipe, prompt), want, atol=FUSED_ATOL, rtol=0)

    engine.apply([(adapters[name], 1.0)], mode="unfused")
    np.testing.assert_allclose(generate(pipe, prompt), want, atol=UNFUSED_ATOL, rtol=0)


def test_conv_lora_matches_diffusers(zoo_dir: Path, tmp_path: Path, pipe: Any, engine: SwapEngine) -> None:
    """LoRAs on resnet convolutions (down: k x k, up: 1 x 1) flatten to one matrix product."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    unet = load_pipe(zoo_dir).unet
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["conv1", "conv2", "to_q"], init_lora_weights=False)
    gen = torch.Generator().manual_seed(7)
    state = get_peft_model_state_dict(inject_adapter_in_model(config, unet))
    state = {k: torch.randn(v.shape, generator=gen) * 0.2 for k, v in state.items()}
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=state, unet_lora_adapter_metadata=config.to_dict(), weight_name=WEIGHTS
    )
    adapter = read_adapter(
        tmp_path / WEIGHTS,
        key="conv@test",
        max_bytes=MAX_BYTES,
        max_rank=MAX_RANK,
        family=SDXL,
    )
    conv = adapter.layers["unet.down_blocks.0.resnets.0.conv1"]
    assert conv.down.dim() == 4 and conv.up.shape[2:] == (1, 1) and conv.scale == 2.0

    ref = load_pipe(zoo_dir)
    ref.load_lora_weights(str(tmp_path), weight_name=WEIGHTS)
    ref.fuse_lora()
    want = generate(ref)
    engine.apply([(adapter, 1.0)])
    np.testing.assert_allclose(generate(pipe), want, atol=FUSED_ATOL, rtol=0)
    engine.apply([(adapter, 1.0)], mode="unfused")
    np.testing.assert_allclose(generate(pipe), want, atol=UNFUSED_ATOL, rtol=0)


@pytest.mark.parametrize("name", ["sdxl-lora-kohya", "sdxl-lora-kohya-sgm"])
def test_kohya_text_encoders_and_alpha_are_normalised(name: str, adapters: dict[str, ParsedAdapter]) -> None:
    kohya = adapters[name]
    parts = {target.split(".", 1)[0] for target in kohya.layers}
    assert parts == {"unet", "text_encoder", "text_encoder_2"}
    assert {layer.scale for layer in kohya.layers.values()} == {2 / 4}  # alpha 2, rank 4
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" in kohya.layers
    assert "text_encoder.encoder.layers.0.self_attn.q_proj" in kohya.layers


def test_stability_block_names_need_the_unet_config(zoo_dir: Path, engine: SwapEngine) -> None:
    raw = load_file(zoo_dir / "tiny/sdxl-lora-kohya-sgm" / WEIGHTS)
    assert any(k.startswith("lora_unet_input_blocks_3_1_") for k in raw)
    assert any(k.startswith("lora_unet_middle_block_1_") for k in raw)
    assert any(k.startswith("lora_unet_output_blocks_1_1_") for k in raw)
    assert not any("down_blocks" in k or "up_blocks" in k for k in raw)
    # Without the UNet's layout the block numbers cannot be mapped: refused, not half-applied.
    with pytest.raises(AdapterIncompatible):
        engine.stage(parse(zoo_dir, "sdxl-lora-kohya-sgm"))


def test_composition_matches_diffusers_set_adapters(
    zoo_dir: Path, pipe: Any, engine: SwapEngine, adapters: dict[str, ParsedAdapter]
) -> None:
    ref = load_pipe(zoo_dir)
    for name in ("a", "b"):
        ref.load_lora_weights(str(zoo_dir / "tiny" / f"sdxl-lora-{name}"), weight_name=WEIGHTS, adapter_name=name)
    ref.set_adapters(["a", "b"], [0.7, 0.3])
    want = generate(ref)

    pair = [(adapters["sdxl-lora-a"], 0.7), (adapters["sdxl-lora-b"], 0.3)]
    engine.apply(pair)
    np.testing.assert_allclose(generate(pipe), want, atol=UNFUSED_ATOL, rtol=0)
    engine.apply(pair, mode="unfused")
    np.testing.assert_allclose(generate(pipe), want, atol=UNFUSED_ATOL, rtol=0)
    assert engine.active.keys == ["tiny/sdxl-lora-a@test", "tiny/sdxl-lora-b@test"]
    assert engine.active.mode == "unfused"


def test_same_set_again_does_nothing(engine: SwapEngine, adapters: dict[str, ParsedAdapter]) -> None:
    pair = [(adapters["sdxl-lora-a"], 0.7), (adapters["sdxl-lora-b"], 0.3)]
    assert engine.apply(pair).changed
    again = engine.apply(list(reversed(pair)))
    assert not again.changed and again.touched == 0
    assert engine.apply([(adapters["sdxl-lora-a"], 0.7), (adapters["sdxl-lora-b"], 0.4)]).changed
    assert engine.pristine_bytes > 0


def test_restore_is_bit_exact_against_a_fresh_pipeline(
    zoo_dir: Path, pipe: Any, engine: SwapEngine, adapters: dict[str, ParsedAdapter]
) -> None:
    for name in ("sdxl-lora-kohya", "sdxl-lora-rank32", "sdxl-lora-peft"):
        engine.apply([(adapters[name], 1.3)])
    engine.apply([(adapters["sdxl-lora-a"], 1.0)], mode="unfused")
    engine.restore()
    assert changed(pipe, snapshot(load_pipe(zoo_dir))) == []
    assert engine.active.adapters == ()


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("sdxl-lora-corrupt", AdapterCorrupt),
        ("sdxl-lora-nan", AdapterCorrupt),
        ("sdxl-lora-huge", AdapterTooLarge),
    ],
)
def test_unreadable_adapters_raise_their_typed_error(zoo_dir: Path, name: str, error: type[AdapterError]) -> None:
    with pytest.raises(error):
        parse(zoo_dir, name)


def test_rank_over_the_cap_is_too_large(zoo_dir: Path) -> None:
    with pytest.raises(AdapterTooLarge, match="rank 32"):
        parse(zoo_dir, "sdxl-lora-rank32", max_rank=16)


def test_pickle_is_refused_and_never_unpickled(zoo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = tmp_path / "canary"
    monkeypatch.setenv("LORAFARM_PICKLE_CANARY", str(canary))
    folder = zoo_dir / "tiny/sdxl-lora-pickle"
    with pytest.raises(UnsafeAdapterFormat):
        read_adapter(
            folder / "pytorch_lora_weights.bin",
            key="tiny/sdxl-lora-pickle@test",
            max_bytes=MAX_BYTES,
            max_rank=MAX_RANK,
            family=SDXL,
        )
    assert not canary.exists()


@pytest.mark.parametrize("name", ["sdxl-lora-misfit", "sdxl-lora-badkeys", "sd15-lora"])
def test_incompatible_adapter_leaves_the_active_set_and_base_untouched(
    name: str, pipe: Any, engine: SwapEngine, adapters: dict[str, ParsedAdapter]
) -> None:
    engine.apply([(adapters["sdxl-lora-a"], 1.0)])
    before, active = snapshot(pipe), engine.active
    with pytest.raises(AdapterIncompatible):
        engine.apply([(adapters["sdxl-lora-b"], 1.0), (adapters[name], 1.0)])
    with pytest.raises(AdapterIncompatible):
        engine.stage(adapters[name])
    assert engine.active == active
    assert changed(pipe, before) == []


def test_pivotal_tokens_live_with_their_adapter(
    pipe: Any, engine: SwapEngine, adapters: dict[str, ParsedAdapter], zoo_dir: Path
) -> None:
    pivotal = adapters["sdxl-lora-pivotal"]
    sizes = {part: len(getattr(pipe, f"tokenizer{part}")) for part in ("", "_2")}
    rows = load_file(zoo_dir / "tiny/sdxl-lora-pivotal/embeddings.safetensors")
    engine.apply([(pivotal, 1.0)])
    for part, file_key in (("", "clip_l"), ("_2", "clip_g")):
        tokenizer, encoder = getattr(pipe, f"tokenizer{part}"), getattr(pipe, f"text_encoder{part}")
        ids = tokenizer.convert_tokens_to_ids(["<s0>", "<s1>"])
        assert ids == [sizes[part], sizes[part] + 1]
        assert torch.equal(encoder.get_input_embeddings().weight[ids], rows[file_key])
    engine.apply([(adapters["sdxl-lora-a"], 1.0)], mode="unfused")
    for part in ("", "_2"):
        tokenizer = getattr(pipe, f"tokenizer{part}")
        assert len(tokenizer) == sizes[part]
        assert "<s0>" not in tokenizer.get_vocab()
        assert getattr(pipe, f"text_encoder{part}").get_input_embeddings().num_embeddings == sizes[part]


def test_parsing_is_thread_safe(zoo_dir: Path, adapters: dict[str, ParsedAdapter]) -> None:
    results: list[ParsedAdapter] = []
    threads = [threading.Thread(target=lambda: results.append(parse(zoo_dir, "sdxl-lora-kohya"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    want = adapters["sdxl-lora-kohya"].layers
    for parsed in results:
        assert parsed.layers.keys() == want.keys()
        assert all(torch.equal(parsed.layers[t].up, want[t].up) for t in want)


GOOD = ["sdxl-lora-a", "sdxl-lora-b", "sdxl-lora-c", "sdxl-lora-kohya", "sdxl-lora-peft", "sdxl-lora-pivotal"]
BAD = ["sdxl-lora-misfit", "sdxl-lora-badkeys", "sd15-lora"]
adapter_sets = st.lists(
    st.tuples(st.sampled_from(GOOD), st.sampled_from([1.0, 0.7, 0.3, -0.5])),
    max_size=3,
    unique_by=lambda pair: pair[0],
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("apply"), adapter_sets, st.sampled_from(["fused", "unfused"])),
        st.tuples(st.just("fail"), adapter_sets, st.sampled_from(BAD)),
        st.tuples(st.just("restore"), st.just([]), st.just("")),
    ),
    min_size=1,
    max_size=8,
)


@pytest.mark.slow
@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=operations)
def test_any_sequence_then_restore_is_bit_exact(
    ops: list[tuple[str, list[tuple[str, float]], str]],
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
            if extra == "unfused":  # unfused writes no base weight (pivotal tokens grow the embeddings)
                assert [n for n in changed(pipe, pristine_state) if "token_embedding" not in n] == []
        elif kind == "fail":
            before, active = snapshot(pipe), engine.active
            with pytest.raises(AdapterIncompatible):
                engine.apply([*wanted, (adapters[extra], 1.0)])
            assert engine.active == active and changed(pipe, before) == []
        else:
            engine.restore()
    engine.restore()
    assert changed(pipe, pristine_state) == []
    assert (
        len(pipe.tokenizer)
        == len(pipe.tokenizer_2)
        == pristine_state["text_encoder.embeddings.token_embedding.weight"].shape[0]
    )


@pytest.mark.slow
def test_bf16_thirty_swaps_then_restore_is_bit_exact(zoo_dir: Path, adapters: dict[str, ParsedAdapter]) -> None:
    pipe = load_pipe(zoo_dir, torch.bfloat16)
    before = snapshot(pipe)
    engine = SwapEngine(pipe)
    kohya = adapters["sdxl-lora-kohya"]
    staged = engine.stage(kohya)
    # a CPU multiplies half-precision factors slowly: they are kept in fp32, the weights stay bf16
    assert {layer.up.dtype for layer in staged.layers.values()} == {torch.float32}

    engine.apply([(staged, 1.0)])
    target = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    layer, module = kohya.layers[target], engine.modules[target]
    base = before[target.removeprefix("unet.").join(("unet.", ".weight"))].double()
    want = (base + layer.scale * layer.up.double() @ layer.down.double()).to(torch.bfloat16)
    assert module.weight.dtype == torch.bfloat16
    assert torch.equal(module.weight, want)  # one rounding, as a bf16 addmm with fp32 accumulation

    cycle = ["sdxl-lora-a", "sdxl-lora-b", "sdxl-lora-kohya", "sdxl-lora-c", "sdxl-lora-peft"]
    for i in range(30):
        first, second = adapters[cycle[i % 5]], adapters[cycle[(i + 2) % 5]]
        mode = "unfused" if i % 7 == 6 else "fused"
        engine.apply([(first, 1.0), (second, 0.5)] if i % 3 else [(first, 0.8)], mode)
    assert np.isfinite(generate(pipe)).all()
    engine.restore()
    assert changed(pipe, before) == []
