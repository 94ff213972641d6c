"""The asynchronous job API: ``POST /jobs`` → 202 and a ``Location``; status, result, events, cancel.

A job is the sync route's job (same body, same resolution, same ``Job``), enqueued without
waiting. Its state lives in Redis (``keys.job_status``), so any router replica answers for it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from common import errors
from common.schemas import MAX_IMAGES, InferenceRequest, JobState, JobStatus
from common.tenants import Tenant
from router.errors import responses
from router.events import TERMINAL, job_events
from router.generation import (
    ADMISSION_HEADERS,
    ENQUEUE_ERRORS,
    IMAGE_HEADERS,
    RESULT_ERRORS,
    enqueue,
    image_headers,
    plan_job,
    read_body,
    stored_images,
)
from router.jobs import MEDIA_TYPES, parse_body, pick_format
from router.services import services
from router.tenants import admit, authorize

MAX_IDEMPOTENCY_KEY = 255

JobId = Annotated[str, Path(pattern=r"^[0-9A-Za-z_-]{1,64}$", description="Job id, from `POST /jobs`.")]


class JobRequest(InferenceRequest):
    """The sync route's body plus ``model``: a LoRA or a served base (default: the ``lora`` header or base),
    and ``n``: the images to make (image k with seed ``seed + k``; one swap for all)."""

    model: str | None = Field(default=None, min_length=1, max_length=200, description="Repo id to run.")
    n: int = Field(
        default=1,
        ge=1,
        le=MAX_IMAGES,
        description="Images to make (at most the router's `LORAFARM_IMAGES_MAX`); fetch image k with `?index=k`.",
    )


class JobView(BaseModel):
    """A job as the API shows it; fields without a value are left out."""

    id: str
    status: JobState
    model: str | None = Field(default=None, description="Repo id named (in the answer to `POST /jobs`).")
    seed: int | None = Field(default=None, description="Seed used (in the answer to `POST /jobs`).")
    seeds: list[int] | None = Field(
        default=None, description="Seed of each image, in order (in the answer to `POST /jobs`, when `n` > 1)."
    )
    position: int | None = Field(
        default=None,
        description="While queued: jobs ahead of it in its pool's queue (waiting or in hand); for a job "
        "parked behind its key's fair share, its own key's jobs ahead of it.",
    )
    step: int | None = Field(default=None, description="While running: denoising steps done.")
    steps: int | None = Field(default=None, description="While running: denoising steps in all.")
    worker_id: str | None = None
    error: str | None = None
    error_type: str | None = None
    compute_time: float | None = Field(default=None, description="When done: seconds of swap and inference.")
    adapter_warm: bool | None = Field(default=None, description="When done: the adapters were already fused.")
    updated_at: float | None = None


# --- OpenAPI declarations -----------------------------------------------------------------


def _job_request_body() -> dict[str, Any]:
    # The body is read raw (like the sync routes); its parts are components (router.app).
    schema = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {
        "requestBody": {
            "required": True,
            "description": "The sync route's body plus `model` (JSON, whatever the Content-Type says).",
            "content": {"application/json": {"schema": schema}},
        }
    }


_VIEW = {"model": JobView}
_RESULT_HEADERS = {name: header for name, header in IMAGE_HEADERS.items() if name != "x-seed"}
_LOOKUP_ERRORS = (errors.InvalidRequest, errors.Unauthorized, errors.JobNotFound, errors.RedisUnavailable)
_SUBMIT_ERRORS = responses(*ENQUEUE_ERRORS)
_RESULT_ERRORS = responses(*_LOOKUP_ERRORS, errors.JobNotReady, *RESULT_ERRORS)


# --- wiring -------------------------------------------------------------------------------


api = APIRouter(tags=["jobs"], dependencies=[Depends(authorize)])


def _location(request: Request, job_id: str) -> str:
    return f"{request.scope.get('root_path', '')}/jobs/{job_id}"


# --- routes -------------------------------------------------------------------------------


@api.post(
    "/jobs",
    summary="Enqueue a generation; answers 202 at once with the job's id and a Location",
    status_code=202,
    response_model=JobView,
    response_model_exclude_none=True,
    responses={
        202: {
            "description": "Enqueued (or, with a known Idempotency-Key, the job it made before).",
            "headers": ADMISSION_HEADERS,
        },
        **_SUBMIT_ERRORS,
    },
    openapi_extra=_job_request_body(),
)
async def create_job(
    request: Request,
    tenant: Annotated[Tenant | None, Depends(admit)],
    lora: Annotated[str | None, Header(description="LoRA to apply when the body names no model.")] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=MAX_IDEMPOTENCY_KEY,
            description="A retry with the same key returns the job the first request made.",
        ),
    ] = None,
) -> Response:
    svc = services(request)
    track = svc.tracker
    model, images, body = parse_job_body(await read_body(request))
    key = idempotency_key.strip() if idempotency_key else None
    if key:
        existing = await track.lookup(key)
        if existing is not None:
            return await _replay(request, existing)
    base = svc.settings.base
    repo_id, prefer = (model, ()) if model else ((lora or "").strip() or base, (base,))
    request.state.repo = repo_id
    fmt = pick_format(request.headers.get("accept"))
    job = await plan_job(
        svc, repo_id, body, prefer=prefer, fmt=fmt, timeout_s=svc.settings.job_timeout_s, images=images
    )
    request.state.job_id = job.id
    if key:
        existing = await track.bind(key, job.id)
        if existing is not None:
            return await _replay(request, existing)
    try:
        await enqueue(svc, job, tenant)
    except errors.LorafarmError:
        if key:
            await track.unbind(key, job.id)
        raise
    view = JobView(
        id=job.id,
        status="queued",
        model=repo_id,
        seed=job.seed,
        seeds=job.seeds if job.images > 1 else None,
        position=await track.position(job.id),
    )
    return _answer(view, 202, {"Location": _location(request, job.id)})


@api.get(
    "/jobs/{job_id}",
    summary="The job's state: queued (position), running (step k of n), done, failed, cancelled",
    response_model=JobView,
    response_model_exclude_none=True,
    responses=responses(*_LOOKUP_ERRORS),
)
async def get_job(request: Request, job_id: JobId) -> Response:
    return _answer(await view_of(request, job_id), 200)


@api.get(
    "/jobs/{job_id}/result",
    summary="An image of a done job: the first, or `index` k of n (409 while it is queued or running)",
    response_class=Response,
    responses={
        200: {
            "description": "The image, in the format the Accept header of `POST /jobs` asked.",
            "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in MEDIA_TYPES.values()},
            "headers": _RESULT_HEADERS,
        },
        **_RESULT_ERRORS,
    },
)
async def get_result(
    request: Request,
    job_id: JobId,
    index: Annotated[int, Query(ge=0, lt=MAX_IMAGES, description="Which image of a job of n (from 0).")] = 0,
) -> Response:
    request.state.job_id = job_id
    result, done = await stored_images(services(request).queue, job_id)
    if index >= len(done):
        raise errors.InvalidRequest(f"index: the job made {len(done)} image(s); index {index} is past them")
    headers = image_headers(job_id, result)
    return Response(done[index], media_type=result.content_type or "application/octet-stream", headers=headers)


@api.get(
    "/jobs/{job_id}/events",
    summary="Server-Sent Events of the job's states, in order, ending with done, failed or cancelled",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`data:` lines hold the job's state as JSON (the fields of `GET /jobs/{id}`); "
            "`:` lines are keep-alive comments.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **responses(*_LOOKUP_ERRORS),
    },
)
async def get_events(request: Request, job_id: JobId) -> StreamingResponse:
    svc = services(request)
    request.state.job_id = job_id
    if await svc.queue.status(job_id) is None:
        raise errors.JobNotFound(f"no job {job_id} (or it expired)")

    async def read(job: str) -> JobStatus | None:
        return await status_with_position(request, job)

    body = job_events(svc.tracker, read, job_id, max_s=svc.settings.job_timeout_s + 60)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


@api.delete(
    "/jobs/{job_id}",
    summary="Cancel the job: 200 once cancelled (or already over), 202 while a running job stops",
    response_model=JobView,
    response_model_exclude_none=True,
    responses={
        202: {"description": "Cancel asked; the worker stops at its next step.", **_VIEW},
        **responses(*_LOOKUP_ERRORS),
    },
)
async def cancel_job(request: Request, job_id: JobId) -> Response:
    svc = services(request)
    request.state.job_id = job_id
    status = await svc.queue.status(job_id)
    if status is None:
        raise errors.JobNotFound(f"no job {job_id} (or it expired)")
    if status.state in TERMINAL:
        return _answer(await view_of(request, job_id), 200)
    if await svc.queue.cancel(job_id):
        # Removed unclaimed: no worker will say so, so tell the event streams here.
        cancelled = await svc.queue.status(job_id) or JobStatus(job_id=job_id, state="cancelled")
        await svc.tracker.announce(cancelled)
    view = await view_of(request, job_id)
    return _answer(view, 200 if view.status in TERMINAL else 202)


# --- helpers ------------------------------------------------------------------------------


def parse_job_body(raw: bytes) -> tuple[str | None, int, InferenceRequest]:
    """``model``, ``n`` and the sync route's body, validated by the sync route's own parser."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        parse_body(raw)  # raises the sync route's message for this body
        raise errors.InvalidRequest("the body must be a JSON object")
    model = data.pop("model", None)
    if model is not None and (not isinstance(model, str) or not model.strip() or len(model) > 200):
        raise errors.InvalidRequest("model: a repo id (a string of at most 200 characters)")
    images = data.pop("n", 1)
    if isinstance(images, float) and images.is_integer():
        images = int(images)
    if not isinstance(images, int) or isinstance(images, bool) or not 1 <= images <= MAX_IMAGES:
        raise errors.InvalidRequest(f"n: an integer from 1 to {MAX_IMAGES} (images to make)")
    return (model.strip() if model else None), images, parse_body(json.dumps(data).encode())


async def status_with_position(request: Request, job_id: str) -> JobStatus | None:
    """The stored status, with the queue position filled in while queued."""
    status = await services(request).queue.status(job_id)
    if status is not None and status.state == "queued":
        status.position = await services(request).tracker.position(job_id)
    return status


async def view_of(request: Request, job_id: str) -> JobView:
    request.state.job_id = job_id
    status = await status_with_position(request, job_id)
    if status is None:
        raise errors.JobNotFound(f"no job {job_id} (or it expired)")
    view = JobView(
        id=job_id,
        status=status.state,
        position=status.position,
        step=status.step,
        steps=status.steps,
        worker_id=status.worker_id,
        error=status.error,
        error_type=status.error_type,
        updated_at=status.updated_at,
    )
    if status.state == "done":
        found = await services(request).queue.result(job_id)
        if found is not None:
            view.compute_time, view.adapter_warm = round(found[0].compute_s, 4), found[0].warm
    return view


async def _replay(request: Request, job_id: str) -> Response:
    try:
        view = await view_of(request, job_id)
    except errors.JobNotFound:
        view = JobView(id=job_id, status="queued")  # bound a moment ago, not enqueued yet
    headers = {"Location": _location(request, job_id), "Idempotent-Replayed": "true"}
    return _answer(view, 202, headers)


def _answer(view: JobView, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(view.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers)
