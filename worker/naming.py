"""How lorafarm names what an adapter touches, in one place.

A *target* is ``<component>.<module path>``: the pipeline attribute that holds the model
(``unet``, ``transformer``, ``text_encoder``...) and the module's path inside it as
``named_modules`` spells it. CLIP text encoders are named without a leading ``text_model.``:
transformers 5 dropped that level from ``CLIPTextModel`` while LoRAs on the Hub (and kohya's
``lora_te1_text_model_...``) still carry it, so both spellings must meet on one name.

Pivotal-tuning embeddings name their rows per text encoder (``clip_l``/``clip_g`` in diffusers'
SDXL scripts); a text encoder's tokenizer is the pipeline attribute of the same suffix.
"""

from __future__ import annotations

import re

#: Pivotal-tuning file entries -> the text encoder they belong to.
EMBEDDING_COMPONENTS = {
    "clip_l": "text_encoder",
    "clip_g": "text_encoder_2",
    "text_encoders_0": "text_encoder",
    "text_encoders_1": "text_encoder_2",
}
_CLIP_LEVEL = "text_model."
#: A PEFT tensor key: ``<module>.lora_A.weight`` (down) or ``<module>.lora_B.weight`` (up).
_PEFT_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<side>[AB])\.weight")
#: Where the module name ends in the stored key of each format (PEFT, diffusers, kohya).
_LORA_SUFFIX = re.compile(r"\.(lora_[AB]|lora\.(down|up)|lora_(down|up))\.weight$")


def target_name(component: str, module_path: str) -> str:
    """The canonical target of ``module_path`` inside ``component``."""
    return f"{component}.{module_path.removeprefix(_CLIP_LEVEL)}"


def component_of(target: str) -> str:
    """The pipeline component a target lives in."""
    return target.split(".", 1)[0]


def tokenizer_of(component: str) -> str:
    """The tokenizer attribute paired with a text encoder (``text_encoder_2`` -> ``tokenizer_2``)."""
    return component.replace("text_encoder", "tokenizer")


def peft_module(key: str) -> tuple[str, str] | None:
    """``(module, "A" | "B")`` of a PEFT tensor key; ``None`` for any other key."""
    match = _PEFT_KEY.fullmatch(key)
    return None if match is None else (match["module"], match["side"])


def alpha_key(stored_key: str) -> str:
    """The key of the ``alpha`` a converter returns beside a stored LoRA tensor key."""
    return _LORA_SUFFIX.sub("", stored_key) + ".alpha"
