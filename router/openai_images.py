"""The OpenAI Images API dialect, in pure code: its request body read as lorafarm's, its answers' shapes.

``POST /v1/images/generations`` (``router.api_openai``) takes OpenAI's body (``model``, ``prompt``,
``n``, ``size``, ``response_format``, ``output_format``) plus lorafarm's extras at the top level
(``seed``, ``num_inference_steps``, ``guidance_scale``, ``negative_prompt``, ``loras``: what an
OpenAI SDK sends as ``extra_body``). ``parse_generation`` turns it into the Hugging Face body the
other routes plan from (``InferenceRequest``), so every route builds its job the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common import errors
from common.schemas import MAX_IMAGES, MAX_PROMPT_CHARS, MAX_SEED, ImageFormat, InferenceRequest, LoraPath, Number
from router.errors import describe_validation

_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


class ImageGenerationRequest(BaseModel):
    """OpenAI's image generation body, with lorafarm's parameters beside OpenAI's own."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(
        default=None, min_length=1, max_length=200, description="A LoRA or a served base (default: the default base)."
    )
    n: Annotated[int, Number] = Field(
        default=1, ge=1, le=MAX_IMAGES, description="Images to make (at most `LORAFARM_IMAGES_MAX`)."
    )
    size: str | None = Field(
        default=None, max_length=16, description="`WIDTHxHEIGHT` (e.g. `1024x1024`), or `auto`: the base's own."
    )
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: ImageFormat = "png"
    # lorafarm's parameters (an OpenAI SDK's ``extra_body``), as in the Hugging Face body's ``parameters``
    seed: Annotated[int | None, Number] = Field(
        default=None, ge=0, le=MAX_SEED, description="Seed of the first image; image k has seed + k."
    )
    num_inference_steps: Annotated[int | None, Number] = Field(default=None, ge=1, le=150)
    guidance_scale: Annotated[float | None, Number] = Field(default=None, ge=0.0, le=30.0)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    loras: list[LoraPath] | None = Field(
        default=None, description="Adapters to compose: `{path: repo id or https://huggingface.co/org/name, scale}`."
    )
    # Sent by OpenAI clients, and meaningless here: accepted and ignored.
    user: str | None = Field(default=None, max_length=256, description="Ignored.")
    quality: str | None = Field(default=None, max_length=32, description="Ignored.")
    style: str | None = Field(default=None, max_length=32, description="Ignored.")


@dataclass(frozen=True)
class Generation:
    """An image generation request, read: what to run, how many, and how to answer."""

    model: str | None
    images: int
    body: InferenceRequest
    output_format: ImageFormat
    response_format: Literal["b64_json", "url"]
    size: str | None


def parse_generation(raw: bytes) -> Generation:
    """The request of an OpenAI body; ``InvalidRequest`` (422) for a body it does not take."""
    try:
        data = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.InvalidRequest("the body is not JSON text") from exc
    if not isinstance(data, dict):
        raise errors.InvalidRequest('the body must be a JSON object: {"model": ..., "prompt": "a prompt"}')
    try:
        req = ImageGenerationRequest.model_validate(data)
    except ValidationError as exc:
        raise errors.InvalidRequest(describe_validation(exc)) from exc
    if not req.prompt.strip():
        raise errors.InvalidRequest("prompt must not be blank")
    if req.model is not None and not req.model.strip():
        raise errors.InvalidRequest(
            "model must not be blank: a LoRA or a served base, or no model for the default base"
        )
    width, height = parse_size(req.size)
    params = {
        "seed": req.seed,
        "num_inference_steps": req.num_inference_steps,
        "guidance_scale": req.guidance_scale,
        "negative_prompt": req.negative_prompt,
        "width": width,
        "height": height,
        "loras": None if req.loras is None else [lora.model_dump() for lora in req.loras],
    }
    try:
        body = InferenceRequest.model_validate({"inputs": req.prompt, "parameters": params})
    except ValidationError as exc:
        # Only the size can fail here: every other field was checked with the same bounds above.
        problem = describe_validation(exc).replace("parameters.", "")
        raise errors.InvalidRequest(f"size {req.size}: {problem}") from exc
    size = None if width is None else req.size
    model = req.model.strip() if req.model else None
    return Generation(model, req.n, body, req.output_format, req.response_format, size)


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    """Width and height of ``WIDTHxHEIGHT``; ``(None, None)`` for ``auto`` or none (the base's own)."""
    if size is None or size == "auto":
        return None, None
    found = _SIZE.fullmatch(size)
    if found is None:
        raise errors.InvalidRequest(f"size: 'WIDTHxHEIGHT' (e.g. '1024x1024') or 'auto', not {size[:16]!r}")
    return int(found.group(1)), int(found.group(2))


class ImageData(BaseModel):
    """One image of the answer: its bytes (``b64_json``) or where to fetch them (``url``), and its seed."""

    b64_json: str | None = None
    url: str | None = None
    seed: int = Field(description="Seed of this image: the same request with `n` 1 and this seed gives its bytes.")


class ImagesResponse(BaseModel):
    """The answer to ``POST /v1/images/generations``, as OpenAI's SDKs parse it (extra fields are kept)."""

    created: int = Field(description="Unix time of the answer.")
    data: list[ImageData]
    model: str
    output_format: ImageFormat
    size: str | None = None
    expires_at: int | None = Field(default=None, description="With `url`: Unix time until which the URLs answer.")


class ModelCard(BaseModel):
    """One model of ``GET /v1/models``: a served base, or an adapter the farm's workers hold."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default=0, description="0: lorafarm does not know when the repo was made.")
    owned_by: str = Field(description="The repo's owner (the part of its id before the slash).")
    kind: Literal["base", "lora"]
    base: str = Field(description="The served base it runs on (its own id for a base).")


class ModelList(BaseModel):
    """The answer to ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


def card(repo_id: str, kind: Literal["base", "lora"], base: str) -> ModelCard:
    """The model card of a repo."""
    return ModelCard(id=repo_id, owned_by=repo_id.split("/", 1)[0], kind=kind, base=base)


def signature(secret: str, job_id: str, index: int) -> str:
    """The ``sig`` of an image URL: an HMAC of the job and image with the router's API key."""
    digest = hmac.new(secret.encode(), f"{job_id}/{index}".encode(), hashlib.sha256).hexdigest()
    return digest[:32]
