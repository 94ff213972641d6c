"""The one table from error class to HTTP status, and the handlers that answer ``{"error", "error_type"}``.

The OpenAI dialect (every path under ``/v1/``) answers the same errors, with the same statuses
and ``Retry-After``, in OpenAI's shape: ``{"error": {"message", "type", "code", "param"}}``, its
``code`` being lorafarm's ``error_type``, so OpenAI's SDKs raise their own exception classes.
No answer carries a traceback, an internal URL or the input echoed back at length.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from common import errors

log = logging.getLogger("router")

STATUS: dict[type[errors.LorafarmError], int] = {
    errors.InvalidRequest: 422,
    errors.Unauthorized: 401,
    errors.RepoNotFound: 404,
    errors.GatedRepo: 403,
    errors.PrivateRepo: 403,
    errors.DisabledRepo: 403,
    errors.UnsupportedModel: 400,
    errors.BaseNotServed: 400,
    errors.UnsafeAdapterFormat: 400,
    errors.AdapterTooLarge: 413,
    errors.AdapterCorrupt: 400,
    errors.AdapterIncompatible: 400,
    errors.NoWorker: 503,
    errors.RedisUnavailable: 503,
    errors.HubUnavailable: 503,
    errors.QueueFull: 429,
    errors.RateLimited: 429,
    errors.ConcurrencyLimited: 429,
    errors.KeyQueueFull: 429,
    errors.Limited: 429,
    errors.Unavailable: 503,
    errors.Timeout: 504,
    errors.JobNotFound: 404,
    errors.JobNotReady: 409,
    errors.JobCancelled: 410,
    errors.JobFailed: 500,
    errors.InternalError: 500,
    errors.LorafarmError: 500,
}

#: Seconds suggested when an Unavailable error carries no estimate of its own.
DEFAULT_RETRY_AFTER_S = 5

#: Paths of the OpenAI dialect: their errors take OpenAI's shape.
OPENAI_PREFIX = "/v1/"

#: OpenAI's error ``type`` by status; any other 4xx is ``invalid_request_error``, any 5xx ``server_error``.
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}

Dialect = Literal["hf", "openai"]


class ErrorBody(BaseModel):
    """Every error answer: a human message and a stable machine type."""

    error: str
    error_type: str


class OpenAIErrorDetail(BaseModel):
    """The error of an OpenAI-dialect answer: lorafarm's message, OpenAI's type, lorafarm's type as ``code``."""

    message: str
    type: str
    code: str
    param: str | None = None


class OpenAIErrorBody(BaseModel):
    """Every error answer of the OpenAI dialect (``/v1/...``)."""

    error: OpenAIErrorDetail


def openai_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    return OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(message: str, error_type: str, status: int, dialect: Dialect) -> dict[str, Any]:
    """The JSON body of an error answer in the dialect of its route."""
    if dialect == "openai":
        detail = OpenAIErrorDetail(message=message, type=openai_type(status), code=error_type)
        return OpenAIErrorBody(error=detail).model_dump()
    return ErrorBody(error=message, error_type=error_type).model_dump()


def status_of(exc: errors.LorafarmError) -> int:
    """HTTP status of an error: the entry of its class or of its nearest listed ancestor."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(
    exc: errors.LorafarmError, headers: dict[str, str] | None = None, dialect: Dialect = "hf"
) -> JSONResponse:
    """The JSON answer of a lorafarm error, with ``Retry-After`` for 429 and 503."""
    status = status_of(exc)
    out = dict(headers or {})
    if status in (429, 503):
        retry = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER_S
        out["Retry-After"] = str(max(1, math.ceil(retry)))
    body = error_body(exc.message, exc.error_type, status, dialect)
    return JSONResponse(body, status_code=status, headers=out)


def dialect_of(request: Request) -> Dialect:
    """The dialect of the route a request reached, by its path (below any ``root_path``)."""
    path, root = request.scope.get("path", ""), request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return "openai" if path.startswith(OPENAI_PREFIX) else "hf"


def describe_validation(exc: ValidationError | RequestValidationError, limit: int = 5) -> str:
    """``loc: message`` of the first few problems, never the input values."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def responses(*types: type[errors.LorafarmError], dialect: Dialect = "hf") -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the errors a route can answer (each named once)."""
    out: dict[int | str, dict[str, Any]] = {}
    model = OpenAIErrorBody if dialect == "openai" else ErrorBody
    for cls in dict.fromkeys(types):
        status = STATUS[cls]
        entry = out.setdefault(status, {"model": model, "description": ""})
        names = [n for n in entry["description"].split(", ") if n]
        entry["description"] = ", ".join([*names, cls.error_type])
        if status in (429, 503):
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"},
                }
            }
    return out


def _http_error_type(status: int) -> str:
    return {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")


def install(app: FastAPI) -> None:
    """Register the handlers: lorafarm errors, validation, HTTP errors, and anything unexpected."""

    @app.exception_handler(errors.LorafarmError)
    async def _lorafarm(request: Request, exc: errors.LorafarmError) -> JSONResponse:
        return _answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _answer(request, errors.InvalidRequest(describe_validation(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        body = error_body(detail, _http_error_type(exc.status_code), exc.status_code, dialect_of(request))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("event=internal_error path=%s", request.url.path)
        return _answer(request, errors.InternalError("internal error"))


def _answer(request: Request, exc: errors.LorafarmError) -> JSONResponse:
    request.state.error_type = exc.error_type
    headers = {}
    job_id = getattr(request.state, "job_id", None)
    if job_id:
        headers["x-request-id"] = job_id
    if isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(exc, headers, dialect_of(request))
