"""The router's ``GET /metrics`` (Prometheus text): its requests, and the farm as Redis shows it.

Request counters and durations are counted by a middleware. The farm gauges (queue size and
wait per pool, live workers, the workers' own timing averages from their heartbeats) are read
from Redis at scrape time, so every router replica reports the same values: aggregate them with
``max``, not ``sum``. Each worker serves its own histograms (swap, inference, queue wait, adapter
cache) on its probe port; see docs/METRICS.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Scope

from common import errors
from common.schemas import WorkerState
from router.observe import ObservedRequest
from router.queue import JobQueue

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def pool_slug(pool: str) -> str:
    """The pool as a Kubernetes label value (no ``/``): ``tiny/sdxl-base`` → ``tiny--sdxl-base``."""
    return pool.replace("/", "--")


@dataclass
class PoolSnapshot:
    """What Redis says of one pool at scrape time."""

    pool: str
    queue_size: int
    oldest_wait_s: float
    workers: list[WorkerState] = field(default_factory=list)


class FarmCollector(Collector):
    """Yields the last snapshot read from Redis (set just before each scrape)."""

    def __init__(self) -> None:
        self.pools: list[PoolSnapshot] = []
        self.redis_up = True

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("lorafarm_redis_up", "1 when the router reached Redis at this scrape.")
        up.add_metric([], 1 if self.redis_up else 0)
        yield up
        pool_labels = ["pool", "pool_slug"]
        size = GaugeMetricFamily(
            "lorafarm_queue_size", "Jobs of the pool waiting or in hand (its stream's length).", labels=pool_labels
        )
        wait = GaugeMetricFamily(
            "lorafarm_queue_wait_seconds",
            "Age of the oldest job of the pool that no worker has taken yet (0: none waits).",
            labels=pool_labels,
        )
        live = GaugeMetricFamily(
            "lorafarm_workers", "Live workers of the pool by status.", labels=[*pool_labels, "status"]
        )
        resident = GaugeMetricFamily(
            "lorafarm_adapters_resident",
            "Distinct adapters held by the pool's live workers (fused or in host memory).",
            labels=pool_labels,
        )
        timing = {
            name: GaugeMetricFamily(
                f"lorafarm_worker_{name}_seconds",
                f"Moving average of the worker's {name} time, from its heartbeat.",
                labels=["pool", "worker"],
            )
            for name in ("swap", "inference")
        }
        for snap in self.pools:
            labels = [snap.pool, pool_slug(snap.pool)]
            size.add_metric(labels, snap.queue_size)
            wait.add_metric(labels, snap.oldest_wait_s)
            for status in ("starting", "ready", "busy", "draining"):
                live.add_metric([*labels, status], sum(1 for w in snap.workers if w.status == status))
            resident.add_metric(labels, len({k for w in snap.workers for k in (*w.fused, *w.cached)}))
            for w in snap.workers:
                for name, value in (("swap", w.swap_s), ("inference", w.inference_s)):
                    if value is not None:
                        timing[name].add_metric([snap.pool, w.worker_id], value)
        yield from (size, wait, live, resident, *timing.values())


class RouterMetrics:
    """The router's metrics, in a registry of its own (one per app, so tests can build many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lorafarm_requests",
            "HTTP requests answered, by route template, status and error type ('' when none).",
            ["method", "route", "status", "error_type"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "lorafarm_request_duration_seconds",
            "Time to answer an HTTP request (for event streams: how long the stream was open).",
            ["method", "route"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.farm = FarmCollector()
        self.registry.register(self.farm)

    def observe(self, method: str, route: str, status: int, error_type: str, seconds: float) -> None:
        self.requests.labels(method, route, str(status), error_type).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    async def refresh(self, queue: JobQueue, pools: list[str]) -> None:
        """Read the farm's gauges from Redis; on an outage keep none and report ``redis_up 0``."""
        try:
            snaps = await asyncio.gather(*(read_pool(queue, p) for p in pools))
        except errors.RedisUnavailable:
            self.farm.pools, self.farm.redis_up = [], False
            return
        self.farm.pools, self.farm.redis_up = list(snaps), True


async def read_pool(queue: JobQueue, pool: str) -> PoolSnapshot:
    depth, workers, streams = await asyncio.gather(queue.depth(pool), queue.live_workers(pool), queue.streams(pool))
    oldest = [t for t in await asyncio.gather(*(queue.oldest_unclaimed(s) for s in streams)) if t is not None]
    wait = max(0.0, time.time() - min(oldest)) if oldest else 0.0
    return PoolSnapshot(pool=pool, queue_size=depth, oldest_wait_s=wait, workers=workers)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware(ObservedRequest):
    """Counts every HTTP request by its route template (not its path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: RouterMetrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    def done(self, scope: Scope, status: int, seconds: float, crashed: bool) -> None:
        route = scope.get("route")
        template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
        error_type = (scope.get("state") or {}).get("error_type") or ("internal_error" if crashed else "")
        # Any token is a method to HTTP: a client must not mint label values (series) at will.
        method = scope.get("method", "")
        method = method if method in _METHODS else "other"
        self.metrics.observe(method, template, status, error_type, seconds)


metrics_router = APIRouter()


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics of this router and of the farm as Redis shows it",
    response_class=Response,
    responses={200: {"description": "Prometheus text format.", "content": {"text/plain": {}}}},
)
async def metrics_endpoint(request: Request) -> Response:
    metrics: RouterMetrics = request.app.state.metrics
    svc = request.app.state.services
    await metrics.refresh(svc.queue, svc.settings.pools)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> RouterMetrics:
    """Give the app its registry, the counting middleware and ``GET /metrics``."""
    metrics = RouterMetrics()
    app.state.metrics = metrics
    app.include_router(metrics_router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics
