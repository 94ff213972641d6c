"""Adapter naming: one canonical target per base module, whatever spelling a LoRA file used."""

from __future__ import annotations

import pytest

from worker.naming import alpha_key, component_of, peft_module, target_name, tokenizer_of


def test_clip_layers_meet_on_one_name_with_or_without_text_model() -> None:
    with_level = target_name("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj")
    without = target_name("text_encoder", "encoder.layers.0.self_attn.q_proj")
    assert with_level == without == "text_encoder.encoder.layers.0.self_attn.q_proj"
    assert target_name("transformer", "transformer_blocks.0.attn.to_q") == "transformer.transformer_blocks.0.attn.to_q"
    assert component_of(with_level) == "text_encoder"


def test_tokenizers_pair_with_their_text_encoder() -> None:
    assert tokenizer_of("text_encoder") == "tokenizer"
    assert tokenizer_of("text_encoder_2") == "tokenizer_2"


def test_peft_keys_name_their_module_and_side() -> None:
    assert peft_module("single_transformer_blocks.1.proj_out.lora_A.weight") == (
        "single_transformer_blocks.1.proj_out",
        "A",
    )
    assert peft_module("attn.to_out.0.lora_B.weight") == ("attn.to_out.0", "B")
    assert peft_module("attn.to_q.lora.down.weight") is None
    assert peft_module("attn.to_q.lora_magnitude_vector") is None


@pytest.mark.parametrize(
    "stored",
    [
        "unet.mid_block.attentions.0.proj_in.lora.down.weight",
        "unet.mid_block.attentions.0.proj_in.lora_A.weight",
        "unet.mid_block.attentions.0.proj_in.lora_down.weight",
    ],
)
def test_alpha_sits_beside_the_module_in_every_format(stored: str) -> None:
    assert alpha_key(stored) == "unet.mid_block.attentions.0.proj_in.alpha"
