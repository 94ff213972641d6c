"""The HTTP routes: generate (by repo path or ``lora`` header), health, readiness, status."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from common import errors
from common.hub import HubResolver, Route, validate_repo_id
from common.schemas import InferenceRequest, Job, WorkerState
from router.errors import responses
from router.fleet import Fleet
from router.jobs import MAX_BODY_BYTES, MEDIA_TYPES, build_job, compose, parse_body, pick_format, random_seed
from router.queue import JobQueue
from router.settings import RouterSettings

log = logging.getLogger("router")


@dataclass
class Services:
    """What the routes use, built by the app's lifespan."""

    settings: RouterSettings
    queue: JobQueue
    resolver: HubResolver
    fleet: Fleet


def services(request: Request) -> Services:
    return request.app.state.services


_bearer = HTTPBearer(auto_error=False, description="Needed when the router has an API key.")


async def authorize(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Refuse the request (401) unless it carries the configured API key."""
    key = services(request).settings.api_key
    if key is None:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, key.get_secret_value().encode()):
        raise errors.Unauthorized("a valid API key is needed: Authorization: Bearer <key>")


# --- OpenAPI declarations -----------------------------------------------------------------

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "Inference API text-to-image body (JSON, whatever the Content-Type says).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}},
    }
}
IMAGE_HEADERS = {
    name: {"description": text, "schema": {"type": "string"}}
    for name, text in {
        "x-request-id": "Job id.",
        "x-compute-time": "Seconds the worker spent (swap and inference).",
        "x-worker-id": "Worker that generated the image.",
        "x-adapter-warm": "true when the adapters were already fused (no swap).",
        "x-seed": "Seed used (random when the request named none).",
        "x-swap-time": "Seconds the worker spent making the adapters active (0 when warm).",
    }.items()
}
_IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image, in the format the Accept header asks (jpeg by default).",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
        "headers": IMAGE_HEADERS,
    }
}
#: What resolving and enqueueing a job can answer: the sync routes and ``POST /jobs`` alike.
ENQUEUE_ERRORS = (
    errors.InvalidRequest,
    errors.Unauthorized,
    errors.RepoNotFound,
    errors.GatedRepo,
    errors.PrivateRepo,
    errors.DisabledRepo,
    errors.UnsupportedModel,
    errors.BaseNotServed,
    errors.UnsafeAdapterFormat,
    errors.AdapterTooLarge,
    errors.AdapterIncompatible,
    errors.QueueFull,
    errors.NoWorker,
    errors.RedisUnavailable,
    errors.HubUnavailable,
)
_GENERATE_ERRORS = responses(
    *ENQUEUE_ERRORS,
    errors.AdapterCorrupt,
    errors.Timeout,
    errors.JobCancelled,
    errors.JobFailed,
    errors.InternalError,
)


class Health(BaseModel):
    status: str


class PoolStatus(BaseModel):
    pool: str
    queue_depth: int
    workers: list[WorkerState]


class FarmStatus(BaseModel):
    default_base: str
    pools: list[PoolStatus]


router = APIRouter()


@router.post(
    "/models/{repo_id:path}",
    summary="Generate an image with a LoRA (routed to its base's pool) or a served base",
    response_class=Response,
    responses={**_IMAGE_RESPONSE, **_GENERATE_ERRORS},
    openapi_extra=_REQUEST_BODY,
    dependencies=[Depends(authorize)],
)
async def generate_model(
    repo_id: str,
    request: Request,
    lora: Annotated[
        str | None, Header(description="LoRA repo id to apply; the repo of the path is then its preferred base.")
    ] = None,
) -> Response:
    body = parse_body(await read_body(request))
    lora = (lora or "").strip()
    if lora and lora != repo_id:
        # A Hub client aimed at a base with the LoRA in a header (`InferenceClient(headers={"lora": ...})`).
        validate_repo_id(repo_id)
        return await generate(request, lora, body, prefer=(repo_id,))
    return await generate(request, repo_id, body, prefer=())


@router.post(
    "/",
    summary="Generate on the default base, with the LoRA named by the `lora` header if any",
    response_class=Response,
    responses={**_IMAGE_RESPONSE, **_GENERATE_ERRORS},
    openapi_extra=_REQUEST_BODY,
    dependencies=[Depends(authorize)],
)
async def generate_default(
    request: Request,
    lora: Annotated[str | None, Header(description="LoRA repo id to apply (its base's pool).")] = None,
) -> Response:
    body = parse_body(await read_body(request))
    base = services(request).settings.base
    return await generate(request, (lora or "").strip() or base, body, prefer=(base,))


@router.get("/health", response_model=Health, summary="The process is alive (no I/O)")
async def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Health,
    summary="Redis answers: the router can take requests",
    responses=responses(errors.RedisUnavailable),
)
async def ready(request: Request) -> Health:
    await services(request).queue.ping()
    return Health(status="ready")


@router.get(
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
        return PoolStatus(pool=pool, queue_depth=depth, workers=sorted(workers, key=lambda w: w.worker_id))

    pools = await asyncio.gather(*(pool_status(p) for p in svc.settings.pools))
    return FarmStatus(default_base=svc.settings.base, pools=list(pools))


# --- the generation path ------------------------------------------------------------------


async def read_body(request: Request) -> bytes:
    """The raw body, refused past ``MAX_BODY_BYTES`` without reading it all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise errors.InvalidRequest(f"the body is over {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise errors.InvalidRequest(f"the body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def resolve_all(
    resolver: HubResolver, repo_id: str, adapter_ids: list[str], prefer: tuple[str, ...]
) -> tuple[Route, list[Route]]:
    """Routes of the repo named and of each composed adapter (resolved concurrently)."""
    for name in (repo_id, *adapter_ids):
        validate_repo_id(name)
    routes = await asyncio.gather(*(resolver.resolve(n, prefer=prefer) for n in (repo_id, *adapter_ids)))
    return routes[0], list(routes[1:])


async def plan_job(
    request: Request, repo_id: str, body: InferenceRequest, *, prefer: tuple[str, ...], timeout_s: float
) -> Job:
    """Resolve the repo and its composed adapters, then build the job (sync route and job API alike)."""
    svc = services(request)
    request.state.repo = repo_id
    params = body.parameters
    specs = params.adapters or []
    main, extra_routes = await resolve_all(svc.resolver, repo_id, [a.id for a in specs], prefer)
    pool, adapters = compose(
        main, list(zip(extra_routes, [a.scale for a in specs], strict=True)), lora_scale=params.lora_scale
    )
    fmt = pick_format(request.headers.get("accept"))
    seed = params.seed if params.seed is not None else random_seed()
    job = build_job(body, pool, adapters, fmt, seed=seed, timeout_s=timeout_s)
    request.state.job_id = job.id
    return job


async def enqueue(svc: Services, job: Job) -> str:
    """Put the job on its pool: on the worker placement picks (adapter affinity), else the shared stream."""
    workers = await svc.queue.live_workers(job.pool)
    target = svc.fleet.place(job.adapters, workers, time.time(), job.id) if svc.settings.affinity else None
    return await svc.queue.submit(job, worker_id=target, workers=workers)


async def generate(request: Request, repo_id: str, body: InferenceRequest, *, prefer: tuple[str, ...]) -> Response:
    """Resolve, enqueue, wait, answer the image (or the job's error)."""
    svc = services(request)
    settings = svc.settings
    job = await plan_job(request, repo_id, body, prefer=prefer, timeout_s=settings.request_timeout_s)
    seed = job.seed
    await enqueue(svc, job)
    try:
        found = await svc.queue.wait(job.id, settings.request_timeout_s, stop=request.is_disconnected)
    except asyncio.CancelledError:
        await asyncio.shield(_cancel_quietly(svc.queue, job.id))
        raise
    finally:
        svc.fleet.finished(job.id)
    if found is None:
        await _cancel_quietly(svc.queue, job.id)
        if await request.is_disconnected():
            log.info("event=client_gone job=%s (cancelled)", job.id)
        raise errors.Timeout(f"no image within {settings.request_timeout_s:g}s; the job was cancelled")
    result, image = found
    if result.status != "done" or image is None:
        raise errors.error_from_type(result.error_type or "internal_error", result.error or "the job failed")
    headers = {
        "x-request-id": job.id,
        "x-compute-time": f"{result.compute_s:.3f}",
        "x-worker-id": result.worker_id or "",
        "x-adapter-warm": "true" if result.warm else "false",
        "x-seed": str(seed),
        "x-swap-time": f"{result.swap_s:.4f}",
    }
    return Response(image, media_type=result.content_type or MEDIA_TYPES[job.format], headers=headers)


async def _cancel_quietly(queue: JobQueue, job_id: str) -> None:
    try:
        await queue.cancel(job_id)
    except errors.RedisUnavailable:
        log.warning("event=cancel_failed job=%s", job_id)
