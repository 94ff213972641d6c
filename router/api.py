"""The Inference API routes (generate by repo path or ``lora`` header), a model's pool and family,
health, readiness, status.

The job API (``router.api_jobs``) generates through the same ``router.generation``; the widget
pages are ``router.widget``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel

from common import errors
from common.hub import validate_repo_id
from common.schemas import InferenceRequest, WorkerState
from common.tenants import Tenant
from router.errors import responses
from router.generation import (
    ADMISSION_HEADERS,
    ENQUEUE_ERRORS,
    IMAGE_HEADERS,
    RESULT_ERRORS,
    generate,
    image_headers,
    plan_job,
    read_body,
    resolve_all,
)
from router.jobs import MEDIA_TYPES, compose, parse_body, pick_format, pool_family
from router.services import services
from router.tenants import admit, authorize

# --- OpenAPI declarations -----------------------------------------------------------------

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "Inference API text-to-image body (JSON, whatever the Content-Type says).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}},
    }
}
_IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image, in the format the Accept header asks (jpeg by default).",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
        "headers": {**IMAGE_HEADERS, **ADMISSION_HEADERS},
    }
}
_GENERATE_ERRORS = responses(*ENQUEUE_ERRORS, *RESULT_ERRORS, errors.Timeout)


class Health(BaseModel):
    status: str


class PoolStatus(BaseModel):
    pool: str
    #: The base's pipeline family (``sdxl``, ``sd15``, ``flux``), as its workers announce it.
    family: str | None = None
    queue_depth: int
    workers: list[WorkerState]


class ModelInfo(BaseModel):
    """Where a request for a model goes, and what its pool's family takes (the widget reads it)."""

    model: str
    #: The served base whose pool takes the model's jobs.
    pool: str
    adapter: bool
    #: The pool's family as its live workers announce it; ``None`` while none is live.
    family: str | None = None
    negative_prompt: bool = True
    #: Why a negative prompt is refused; empty when it is taken.
    negative_prompt_refused: str = ""
    size_multiple: int | None = None


class FarmStatus(BaseModel):
    default_base: str
    pools: list[PoolStatus]


api = APIRouter()


@api.post(
    "/models/{repo_id:path}",
    summary="Generate an image with a LoRA (routed to its base's pool) or a served base",
    response_class=Response,
    responses={**_IMAGE_RESPONSE, **_GENERATE_ERRORS},
    openapi_extra=_REQUEST_BODY,
)
async def generate_model(
    repo_id: str,
    request: Request,
    tenant: Annotated[Tenant | None, Depends(admit)],
    lora: Annotated[
        str | None, Header(description="LoRA repo id to apply; the repo of the path is then its preferred base.")
    ] = None,
) -> Response:
    body = parse_body(await read_body(request))
    lora = (lora or "").strip()
    if lora and lora != repo_id:
        # A Hub client aimed at a base with the LoRA in a header (`InferenceClient(headers={"lora": ...})`).
        validate_repo_id(repo_id)
        return await _generate(request, lora, body, prefer=(repo_id,), tenant=tenant)
    return await _generate(request, repo_id, body, prefer=(), tenant=tenant)


@api.post(
    "/",
    summary="Generate on the default base, with the LoRA named by the `lora` header if any",
    response_class=Response,
    responses={**_IMAGE_RESPONSE, **_GENERATE_ERRORS},
    openapi_extra=_REQUEST_BODY,
)
async def generate_default(
    request: Request,
    tenant: Annotated[Tenant | None, Depends(admit)],
    lora: Annotated[str | None, Header(description="LoRA repo id to apply (its base's pool).")] = None,
) -> Response:
    body = parse_body(await read_body(request))
    base = services(request).settings.base
    return await _generate(request, (lora or "").strip() or base, body, prefer=(base,), tenant=tenant)


_MODEL_ERRORS = [e for e in ENQUEUE_ERRORS if e not in (errors.QueueFull, errors.NoWorker)]


@api.get(
    "/models/{repo_id:path}",
    response_model=ModelInfo,
    summary="The pool a model's requests go to and the parameters its family takes",
    responses=responses(*_MODEL_ERRORS),
    dependencies=[Depends(authorize)],
)
async def model_info(repo_id: str, request: Request) -> ModelInfo:
    svc = services(request)
    main, _ = await resolve_all(svc.resolver, repo_id, [], ())
    pool, adapters = compose(main, [], lora_scale=None)
    family = pool_family(await svc.queue.live_workers(pool))
    info = ModelInfo(model=repo_id, pool=pool, adapter=bool(adapters))
    if family is None:
        return info
    return info.model_copy(
        update={
            "family": family.name,
            "negative_prompt": family.negative_prompt,
            "negative_prompt_refused": family.no_negative_prompt,
            "size_multiple": family.size_multiple,
        }
    )


@api.get("/health", response_model=Health, summary="The process is alive (no I/O)")
async def health() -> Health:
    return Health(status="ok")


@api.get(
    "/ready",
    response_model=Health,
    summary="Redis answers: the router can take requests",
    responses=responses(errors.RedisUnavailable),
)
async def ready(request: Request) -> Health:
    await services(request).queue.ping()
    return Health(status="ready")


@api.get(
    "/status",
    response_model=FarmStatus,
    summary="Pools, their live workers (with fused adapters) and queue depth",
    responses=responses(errors.Unauthorized, errors.RedisUnavailable),
    dependencies=[Depends(authorize)],
)
async def status(request: Request) -> FarmStatus:
    svc = services(request)

    async def pool_status(pool: str) -> PoolStatus:
        workers, depth = await asyncio.gather(svc.queue.live_workers(pool), svc.queue.depth(pool))
        family = pool_family(workers)
        return PoolStatus(
            pool=pool,
            family=family.name if family else None,
            queue_depth=depth,
            workers=sorted(workers, key=lambda w: w.worker_id),
        )

    pools = await asyncio.gather(*(pool_status(p) for p in svc.settings.pools))
    return FarmStatus(default_base=svc.settings.base, pools=list(pools))


# --- the generation path ------------------------------------------------------------------


async def _generate(
    request: Request, repo_id: str, body: InferenceRequest, *, prefer: tuple[str, ...], tenant: Tenant | None
) -> Response:
    """Plan, enqueue, wait, answer the image (or the job's error)."""
    svc = services(request)
    timeout_s = svc.settings.request_timeout_s
    request.state.repo = repo_id
    fmt = pick_format(request.headers.get("accept"))
    job = await plan_job(svc, repo_id, body, prefer=prefer, fmt=fmt, timeout_s=timeout_s)
    request.state.job_id = job.id
    result, images = await generate(svc, job, timeout_s=timeout_s, gone=request.is_disconnected, tenant=tenant)
    headers = image_headers(job.id, result, seed=job.seed)
    return Response(images[0], media_type=result.content_type or MEDIA_TYPES[job.format], headers=headers)
