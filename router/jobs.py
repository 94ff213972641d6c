"""From an HTTP request to a ``Job``: body parsing, output format, adapter composition, the checks
of the pool's family. Pure, no I/O."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence

from pydantic import ValidationError

from common import errors
from common.families import Family, check_parameters, family_of
from common.hub import Destination, repo_of_path
from common.schemas import (
    MAX_SEED,
    AdapterRef,
    AdapterSpec,
    ImageFormat,
    InferenceRequest,
    Job,
    Parameters,
    WorkerState,
)
from router.errors import describe_validation

#: Largest body read; a valid body (prompt, negative prompt, four adapters) is far smaller.
MAX_BODY_BYTES = 64 * 1024

MEDIA_TYPES: dict[ImageFormat, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_ACCEPTED: dict[str, ImageFormat] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/webp": "webp",
    "image/*": "jpeg",
    "*/*": "jpeg",
}


def parse_body(raw: bytes) -> InferenceRequest:
    """The JSON body, whatever the Content-Type said; ``InvalidRequest`` for anything else."""
    if not raw.strip():
        raise errors.InvalidRequest('the body is empty; send JSON {"inputs": "a prompt"}')
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise errors.InvalidRequest("the body is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise errors.InvalidRequest(f"the body is not JSON: {exc.msg} at character {exc.pos}") from exc
    if not isinstance(data, dict):
        raise errors.InvalidRequest('the body must be a JSON object: {"inputs": "a prompt", "parameters": {...}}')
    try:
        # JSON escapes can spell lone surrogates, which no UTF-8 consumer downstream accepts.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise errors.InvalidRequest("the body holds invalid Unicode (a lone surrogate)") from exc
    try:
        return InferenceRequest.model_validate(data)
    except ValidationError as exc:
        raise errors.InvalidRequest(describe_validation(exc)) from exc


def pick_format(accept: str | None) -> ImageFormat:
    """The image format the ``Accept`` header prefers among png, jpeg and webp; jpeg by default."""
    ranked: list[tuple[float, int, ImageFormat]] = []
    for order, item in enumerate((accept or "").split(",")):
        media, *params = (p.strip() for p in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        fmt = _ACCEPTED.get(media.lower())
        if fmt is not None and quality > 0:
            ranked.append((-quality, order, fmt))
    return min(ranked)[2] if ranked else "jpeg"


def adapter_specs(params: Parameters) -> list[AdapterSpec]:
    """The adapters a request composes: ``parameters.adapters``, or its ``loras`` read as the same list.

    A ``loras`` path names a repo (``common.hub.repo_of_path``): a repo id or the Hub page of one;
    anything else is refused (422) and never fetched.
    """
    if params.loras is None:
        return list(params.adapters or [])
    return [
        AdapterSpec(id=repo_of_path(lora.path, where=f"parameters.loras.{i}.path"), scale=lora.scale)
        for i, lora in enumerate(params.loras)
    ]


def compose(
    main: Destination, extras: Sequence[tuple[Destination, float]], *, lora_scale: float | None
) -> tuple[str, list[AdapterRef]]:
    """The pool and the adapters of a request: the repo named (if a LoRA) plus ``parameters.adapters``.

    Every adapter must fit one common served base; the pool is the first of the main repo's.
    """
    adapters: list[AdapterRef] = []
    seen: set[str] = set()
    for dest, scale in extras:
        if dest.adapter is None:
            raise errors.UnsupportedModel(f"{dest.pool} is a base model, not an adapter")
        key = dest.adapter.repo_id.lower()
        if key in seen:
            raise errors.InvalidRequest(f"adapter {dest.adapter.repo_id} is listed twice")
        seen.add(key)
        adapters.append(dest.adapter.model_copy(update={"scale": scale}))
    if main.adapter is not None and main.adapter.repo_id.lower() not in seen:
        scale = 1.0 if lora_scale is None else lora_scale
        adapters.insert(0, main.adapter.model_copy(update={"scale": scale}))
    common = [p for p in main.pools if all(p in dest.pools for dest, _ in extras)]
    if not common:
        names = ", ".join(a.repo_id for a in adapters)
        raise errors.AdapterIncompatible(f"the adapters {names} share no served base model")
    return common[0], adapters


def random_seed() -> int:
    """A seed for a request that named none (returned to the client in ``x-seed``)."""
    return secrets.randbelow(2**32)


def build_job(
    request: InferenceRequest,
    pool: str,
    adapters: list[AdapterRef],
    fmt: ImageFormat,
    *,
    seed: int,
    timeout_s: float,
    images: int = 1,
) -> Job:
    """The job to enqueue; its deadline tells workers when nobody waits for it any more.

    Image k of the job has seed ``seed + k``, which must be a seed a request may name.
    """
    if seed + images - 1 > MAX_SEED:
        raise errors.InvalidRequest(
            f"seed: with {images} images (seeds seed to seed+{images - 1}) at most {MAX_SEED - images + 1}"
        )
    params = request.parameters
    now = time.time()
    return Job(
        pool=pool,
        adapters=adapters,
        prompt=request.inputs,
        negative_prompt=params.negative_prompt,
        num_inference_steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        width=params.width,
        height=params.height,
        seed=seed,
        images=images,
        format=fmt,
        enqueued_at=now,
        deadline=now + timeout_s,
    )


def pool_family(workers: Sequence[WorkerState]) -> Family | None:
    """The family of a pool, as its live workers announce it (their pipeline class); ``None``: unknown."""
    return next((f for f in (family_of(w.pipeline) for w in workers) if f is not None), None)


def check_family(job: Job, workers: Sequence[WorkerState]) -> None:
    """Refuse (``InvalidRequest``, 422) a parameter the pool's family does not take, saying why.

    The worker checks again with the same table (``worker.families``), so a pool whose family is
    not known here yet refuses the same jobs, only later.
    """
    family = pool_family(workers)
    if family is not None:
        check_parameters(family, negative_prompt=job.negative_prompt, width=job.width, height=job.height)
