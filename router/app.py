"""``create_app(settings)``: the FastAPI app, its lifespan (Redis clients, queue, Hub resolver), its logs."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.types import Scope

from common.connections import async_client
from common.hub import HubResolver, hub_fetcher
from common.schemas import InferenceRequest
from router import api, api_jobs, api_openai, metrics, widget
from router import errors as http_errors
from router.admission import RATE_HEADERS
from router.fleet import Fleet
from router.observe import ObservedRequest
from router.queue import JobQueue
from router.services import Services
from router.settings import RouterSettings, placement_rules
from router.tenants import KeyDirectory, RateHeaders
from router.tracker import JobTracker

log = logging.getLogger("router")

_QUIET_PATHS = ("/health", "/ready")


def _value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=\\' or not c.isprintable() for c in text):
        return json.dumps(text)
    return text


class RequestLog(ObservedRequest):
    """One structured log line per request: method, path, status, duration, job id, repo, error type."""

    def done(self, scope: Scope, status: int, seconds: float, crashed: bool) -> None:
        state = scope.get("state") or {}
        fields = {
            "event": "request",
            "method": scope.get("method", ""),
            "path": scope.get("path", ""),
            "status": status,
            "duration_ms": f"{seconds * 1000:.1f}",
            "job": state.get("job_id"),
            "repo": state.get("repo"),
            "tenant": getattr(state.get("tenant"), "name", None),
            "error_type": state.get("error_type"),
        }
        line = " ".join(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)
        level = logging.DEBUG if scope.get("path") in _QUIET_PATHS and status < 400 else logging.INFO
        log.log(level, line)


def build_services(settings: RouterSettings) -> tuple[Services, list[Any]]:
    """The queue, the resolver and the job tracker of one app, and the Redis clients to close at shutdown."""
    target = settings.redis_target()
    client = async_client(target, max_connections=settings.redis_max_connections)
    # One connection per waiting request; admitted requests are bounded by the queues' bound.
    waiter = async_client(target, max_connections=settings.queue_max * len(settings.pools) + 16, socket_timeout=10.0)
    queue = JobQueue(
        client,
        worker_ttl_s=settings.worker_ttl_s,
        queue_max=settings.queue_max,
        waiter=waiter,
        replication=settings.replication(),
    )
    token = settings.hf_token
    resolver = HubResolver(
        hub_fetcher(settings.hf_endpoint, token, settings.hub_timeout_s),
        served=settings.pools,
        allow_gated=settings.allow_gated,
        allow_private=settings.allow_private,
        max_adapter_bytes=settings.max_adapter_bytes,
        ttl_s=settings.metadata_ttl_s,
        timeout_s=settings.hub_timeout_s,
    )
    fleet = Fleet(placement_rules(settings))
    # Each event stream holds one pub/sub connection: a pool of their own keeps them from
    # starving the short commands; past the bound a stream waits, then answers 503.
    events = async_client(target, max_connections=settings.event_streams_max, socket_timeout=10.0)
    tracker = JobTracker(client, events, scan_max=settings.queue_max)
    directory = KeyDirectory(client, settings)
    svc = Services(settings=settings, queue=queue, resolver=resolver, fleet=fleet, tracker=tracker, keys=directory)
    return svc, [client, waiter, events]


_NO_ROUTE = {
    "description": "not_found",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def _install_openapi(app: FastAPI, *, api_key: bool) -> None:
    # The generate routes read their body raw (JSON whatever the Content-Type), so FastAPI
    # does not see its model: add InferenceRequest and its parts to the components here.
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            body = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(body.pop("$defs", {}))
            components["InferenceRequest"] = body
            for path, item in schema.get("paths", {}).items():
                if "{" not in path:
                    continue
                for operation in item.values():
                    # A parameter no route pattern matches (one holding a line break) is answered by
                    # the router itself: 404 not_found.
                    operation["responses"].setdefault("404", _NO_ROUTE)
            if not api_key:
                # Without an API key nothing asks for the bearer token: say so, or clients send one.
                for operation in (op for item in schema.get("paths", {}).values() for op in item.values()):
                    operation.pop("security", None)
                schema["components"].pop("securitySchemes", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: RouterSettings) -> FastAPI:
    """The router app; Redis and the Hub are reached lazily, so it starts even while they are down."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services, clients = build_services(settings)
        app.state.services = services
        log.info(
            "event=router_started pools=%s default_base=%s hub=%s",
            ",".join(settings.pools),
            settings.base,
            settings.hf_endpoint,
        )
        try:
            yield
        finally:
            for client in clients:
                await client.aclose()

    app = FastAPI(
        title="lorafarm router",
        version="0.1.0",
        description="Text-to-image with thousands of LoRAs on a few warm base models "
        "(Hugging Face Inference API shape).",
        lifespan=lifespan,
    )
    http_errors.install(app)
    for routes in (api, api_jobs, api_openai, widget):
        app.include_router(routes.api)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=[
                "x-request-id",
                "x-compute-time",
                "x-worker-id",
                "x-adapter-warm",
                "x-seed",
                "location",
                "retry-after",
                *(name.lower() for name in RATE_HEADERS),
            ],
        )
    app.add_middleware(RateHeaders)
    metrics.install(app)
    app.add_middleware(RequestLog)
    _install_openapi(app, api_key=settings.api_key is not None or settings.tenant_keys)
    return app
