"""The generation path every image route shares: plan → enqueue → wait → result.

A route parses its own request shape into an ``InferenceRequest`` and calls these in turn: the
sync routes plan, then ``generate`` (enqueue and wait); the job API plans, binds its idempotency
key, then enqueues alone. So a step added here (say, admission before enqueueing) holds for
every route at once. The route builds its HTTP answer (``image_headers``); nothing here reads a
request beyond its body (``read_body``). The errors each step can raise are declared here once,
so every route's OpenAPI entry names them alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import Request

from common import errors
from common.hub import Destination, HubResolver, validate_repo_id
from common.schemas import ImageFormat, InferenceRequest, Job, JobResult
from common.tenants import Tenant
from router.admission import RATE_HEADERS, quota
from router.jobs import MAX_BODY_BYTES, adapter_specs, build_job, check_family, compose, random_seed
from router.queue import JobQueue
from router.services import Services

log = logging.getLogger("router")

#: What planning and enqueueing a job can raise: the sync routes and ``POST /jobs`` alike.
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
    errors.RateLimited,
    errors.ConcurrencyLimited,
    errors.KeyQueueFull,
    errors.QueueFull,
    errors.NoWorker,
    errors.RedisUnavailable,
    errors.HubUnavailable,
)
#: What the result of a job that made no image carries (``images_of`` raises it again).
RESULT_ERRORS = (
    errors.JobCancelled,
    errors.UnsafeAdapterFormat,
    errors.AdapterCorrupt,
    errors.AdapterIncompatible,
    errors.AdapterTooLarge,
    errors.DisabledRepo,
    errors.HubUnavailable,
    errors.JobFailed,
    errors.InternalError,
)

#: The headers of an image answer (``image_headers``), as OpenAPI declares them.
IMAGE_HEADERS = {
    name: {"description": text, "schema": {"type": "string"}}
    for name, text in {
        "x-request-id": "Job id.",
        "x-compute-time": "Seconds the worker spent (swap and inference).",
        "x-worker-id": "Worker that generated the image.",
        "x-adapter-warm": "true when the adapters were already fused (no swap).",
        "x-seed": "Seed used (random when the request named none).",
        "x-swap-time": "Seconds the worker spent making the adapters active (0 when warm).",
        "x-base-switch": "none; warm / cold: a multi-base worker first made the base active from host memory / disk.",
    }.items()
}
#: The headers of an answer to a request a key's rate admitted (or refused), as OpenAPI declares them.
ADMISSION_HEADERS = {
    name: {"description": f"With a key that has a rate limit: {text}", "schema": {"type": "string"}}
    for name, text in RATE_HEADERS.items()
}

#: Polled while waiting: True once nobody waits for the image any more (the client went away).
Gone = Callable[[], Awaitable[bool]]


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
) -> tuple[Destination, list[Destination]]:
    """Destinations of the repo named and of each composed adapter (resolved concurrently)."""
    for name in (repo_id, *adapter_ids):
        validate_repo_id(name)
    found = await asyncio.gather(*(resolver.resolve(n, prefer=prefer) for n in (repo_id, *adapter_ids)))
    return found[0], list(found[1:])


async def plan_job(
    svc: Services,
    repo_id: str,
    body: InferenceRequest,
    *,
    prefer: tuple[str, ...],
    fmt: ImageFormat,
    timeout_s: float,
    images: int = 1,
) -> Job:
    """Resolve the repo and its composed adapters on the Hub, then build the job (not enqueued yet).

    ``images``: how many the job makes (at most ``max_images``, checked here for every route).
    """
    params = body.parameters
    limit = svc.settings.max_images
    if not 1 <= images <= limit:
        raise errors.InvalidRequest(f"n: 1 to {limit} images a request, not {images}")
    specs = adapter_specs(params)
    main, extras = await resolve_all(svc.resolver, repo_id, [a.id for a in specs], prefer)
    pool, adapters = compose(
        main, list(zip(extras, [a.scale for a in specs], strict=True)), lora_scale=params.lora_scale
    )
    seed = params.seed if params.seed is not None else random_seed()
    return build_job(body, pool, adapters, fmt, seed=seed, timeout_s=timeout_s, images=images)


async def enqueue(svc: Services, job: Job, tenant: Tenant | None = None) -> str:
    """Put the job on its pool: on the worker placement picks (adapter affinity), else the shared stream.

    Admission: a key's job counts against its concurrency and its share of the pool (``quota``);
    its rate was taken before planning (``router.tenants.admit``).
    """
    workers = await svc.queue.live_workers(job.pool)
    check_family(job, workers)
    settings = svc.settings
    target = svc.fleet.place(job.adapters, workers, time.time(), job.id) if settings.affinity else None
    live = sum(1 for w in workers if w.status != "draining")
    limits = quota(
        tenant,
        fair=settings.tenant_keys,
        live_workers=live,
        per_worker=settings.tenant_share_per_worker,
        queue_max=settings.queue_max,
        queue_share=settings.tenant_queue_share,
    )
    name = tenant.name if tenant is not None else None
    return await svc.queue.submit(job, worker_id=target, workers=workers, tenant=name, quota=limits)


async def generate(
    svc: Services, job: Job, *, timeout_s: float, gone: Gone, tenant: Tenant | None = None
) -> tuple[JobResult, list[bytes]]:
    """Enqueue the planned job and wait for its images: ``Timeout`` (the job cancelled) past ``timeout_s``.

    A job that Redis loses while it is waited for (a failover to a replica that never had it) is
    enqueued again under the same id, once: whichever run writes the result first is the answer.
    """
    await enqueue(svc, job, tenant)
    try:
        found = await svc.queue.wait(job.id, timeout_s, stop=gone, lost=lambda: enqueue(svc, job, tenant))
    except asyncio.CancelledError:
        await asyncio.shield(_cancel_quietly(svc.queue, job.id))
        raise
    finally:
        svc.fleet.finished(job.id)
    if found is None:
        await _cancel_quietly(svc.queue, job.id)
        if await gone():
            log.info("event=client_gone job=%s (cancelled)", job.id)
        raise errors.Timeout(f"no image within {timeout_s:g}s; the job was cancelled")
    result, images = found
    return result, images_of(result, images, expected=job.images)


def images_of(result: JobResult, images: list[bytes], *, expected: int | None = None) -> list[bytes]:
    """The images of a done job; the error its result names otherwise (one of ``RESULT_ERRORS``).

    ``expected``: the images the job asked, when the caller knows it; fewer is an internal error.
    """
    if result.status != "done" or not images:
        raise errors.error_from_type(result.error_type or "internal_error", result.error or "the job failed")
    if expected is not None and len(images) < expected:
        log.error("event=images_missing job=%s images=%d expected=%d", result.job_id, len(images), expected)
        raise errors.InternalError("the job made fewer images than it was asked")
    return images


async def stored_images(queue: JobQueue, job_id: str) -> tuple[JobResult, list[bytes]]:
    """The result and images of a done job, read again after its answer (the job API, image URLs).

    ``JobNotFound`` once expired (``RESULT_TTL_S``), ``JobCancelled``, ``JobNotReady`` while it runs,
    or the error the job failed with.
    """
    found = await queue.result(job_id)
    if found is None:
        status = await queue.status(job_id)
        if status is None:
            raise errors.JobNotFound(f"no job {job_id} (or its result expired)")
        if status.state == "cancelled":
            raise errors.JobCancelled("the job was cancelled")
        raise errors.JobNotReady(f"the job is {status.state}; its events say when it is done")
    result, images = found
    return result, images_of(result, images)


def image_headers(job_id: str, result: JobResult, *, seed: int | None = None) -> dict[str, str]:
    """The ``IMAGE_HEADERS`` of an image answer; ``x-seed`` only where the seed is known."""
    headers = {
        "x-request-id": job_id,
        "x-compute-time": f"{result.compute_s:.3f}",
        "x-worker-id": result.worker_id or "",
        "x-adapter-warm": "true" if result.warm else "false",
        "x-swap-time": f"{result.swap_s:.4f}",
        "x-base-switch": result.base_switch,
    }
    if seed is not None:
        headers["x-seed"] = str(seed)
    return headers


async def _cancel_quietly(queue: JobQueue, job_id: str) -> None:
    try:
        await queue.cancel(job_id)
    except errors.RedisUnavailable:
        log.warning("event=cancel_failed job=%s", job_id)
