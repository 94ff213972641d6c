"""The OpenAI Images API: ``POST /v1/images/generations``, ``GET /v1/models``, and the images' URLs.

A request is read into the Hugging Face body (``router.openai_images``), then planned, enqueued
and awaited by ``router.generation`` like every other route: the same resolution, composition,
limits and backpressure. Errors under ``/v1/`` take OpenAI's shape (``router.errors``) with the
same statuses and ``Retry-After``. An image answered as ``url`` stays fetchable while its result
lives (``keys.RESULT_TTL_S`` from when it was made); with an API key, its URL is signed.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from common import errors, keys
from common.schemas import MAX_IMAGES
from common.tenants import Tenant
from router.errors import responses
from router.generation import (
    ENQUEUE_ERRORS,
    IMAGE_HEADERS,
    RESULT_ERRORS,
    generate,
    image_headers,
    plan_job,
    read_body,
    stored_images,
)
from router.jobs import MEDIA_TYPES
from router.openai_images import (
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    ModelCard,
    ModelList,
    card,
    parse_generation,
    signature,
)
from router.services import Services, services
from router.tenants import admit, authorize

JobId = Annotated[str, Path(pattern=r"^[0-9A-Za-z_-]{1,64}$", description="Job id (`x-request-id`).")]

_BODY = ImageGenerationRequest.model_json_schema(ref_template="#/components/schemas/{model}")
_BODY.pop("$defs", None)  # LoraPath: a component already (router.app adds the Hugging Face body's parts)
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "OpenAI's body, lorafarm's parameters beside its own (JSON, whatever the Content-Type says).",
        "content": {"application/json": {"schema": _BODY}},
    }
}
_GENERATE_ERRORS = responses(*ENQUEUE_ERRORS, *RESULT_ERRORS, errors.Timeout, dialect="openai")
_IMAGE_ERRORS = responses(
    errors.InvalidRequest,
    errors.Unauthorized,
    errors.JobNotFound,
    errors.JobNotReady,
    errors.RedisUnavailable,
    *RESULT_ERRORS,
    dialect="openai",
)

api = APIRouter(prefix="/v1", tags=["openai"])


@api.post(
    "/images/generations",
    summary="Generate images (OpenAI Images API): a LoRA or a served base, n images after one swap",
    response_class=JSONResponse,
    responses={200: {"model": ImagesResponse, "headers": IMAGE_HEADERS}, **_GENERATE_ERRORS},
    openapi_extra=_REQUEST_BODY,
)
async def create_images(request: Request, tenant: Annotated[Tenant | None, Depends(admit)]) -> JSONResponse:
    svc = services(request)
    ask = parse_generation(await read_body(request))
    repo_id, prefer = (ask.model, ()) if ask.model else (svc.settings.base, (svc.settings.base,))
    request.state.repo = repo_id
    timeout_s = svc.settings.request_timeout_s
    job = await plan_job(
        svc, repo_id, ask.body, prefer=prefer, fmt=ask.output_format, timeout_s=timeout_s, images=ask.images
    )
    request.state.job_id = job.id
    result, images = await generate(svc, job, timeout_s=timeout_s, gone=request.is_disconnected, tenant=tenant)
    answer = ImagesResponse(
        created=int(time.time()), data=[], model=repo_id, output_format=ask.output_format, size=ask.size
    )
    for index, (image, seed) in enumerate(zip(images, job.seeds, strict=False)):
        if ask.response_format == "url":
            answer.data.append(ImageData(url=_image_url(request, svc, job.id, index), seed=seed))
        else:
            answer.data.append(ImageData(b64_json=base64.b64encode(image).decode("ascii"), seed=seed))
    if ask.response_format == "url":
        answer.expires_at = int(result.finished_at + keys.RESULT_TTL_S)
    headers = image_headers(job.id, result, seed=job.seed)
    return JSONResponse(answer.model_dump(exclude_none=True), headers=headers)


@api.get(
    "/images/{job_id}/{index}",
    name="openai_image",
    summary="Image `index` of a job answered with `response_format=url`, while its result lives",
    response_class=Response,
    responses={
        200: {
            "description": "The image, in the request's `output_format`.",
            "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in MEDIA_TYPES.values()},
        },
        **_IMAGE_ERRORS,
    },
)
async def get_image(
    request: Request,
    job_id: JobId,
    index: Annotated[int, Path(ge=0, lt=MAX_IMAGES, description="Which image of the job (from 0).")],
    sig: Annotated[str | None, Query(max_length=64, description="The URL's signature (with an API key).")] = None,
) -> Response:
    svc = services(request)
    request.state.job_id = job_id
    key = svc.settings.api_key
    expected = signature(key.get_secret_value(), job_id, index) if key is not None else ""
    if key is not None and not hmac.compare_digest((sig or "").encode(), expected.encode()):
        raise errors.Unauthorized("this image URL is not signed by this router: use the URL the answer gave")
    result, images = await stored_images(svc.queue, job_id)
    if index >= len(images):
        raise errors.InvalidRequest(f"index: the job made {len(images)} image(s); index {index} is past them")
    left = max(0, int(result.finished_at + keys.RESULT_TTL_S - time.time()))
    return Response(
        images[index],
        media_type=result.content_type or "application/octet-stream",
        headers={"Cache-Control": f"private, max-age={left}"},
    )


@api.get(
    "/models",
    summary="The served bases and the adapters the farm's workers hold (OpenAI's list of models)",
    response_model=ModelList,
    responses=responses(errors.Unauthorized, errors.RedisUnavailable, dialect="openai"),
    dependencies=[Depends(authorize)],
)
async def list_models(request: Request) -> ModelList:
    svc = services(request)
    pools = svc.settings.pools
    live = await asyncio.gather(*(svc.queue.live_workers(p) for p in pools))
    cards: dict[str, ModelCard] = {p.lower(): card(p, "base", p) for p in pools}
    for pool, workers in zip(pools, live, strict=True):
        for worker in workers:
            for key in sorted({*worker.fused, *worker.cached}):
                repo = key.split("@", 1)[0]
                cards.setdefault(repo.lower(), card(repo, "lora", pool))
    bases = [c for c in cards.values() if c.kind == "base"]
    loras = sorted((c for c in cards.values() if c.kind == "lora"), key=lambda c: c.id)
    return ModelList(data=[*bases, *loras])


def _image_url(request: Request, svc: Services, job_id: str, index: int) -> str:
    url = str(request.url_for("openai_image", job_id=job_id, index=str(index)))
    key = svc.settings.api_key
    return url if key is None else f"{url}?sig={signature(key.get_secret_value(), job_id, index)}"
