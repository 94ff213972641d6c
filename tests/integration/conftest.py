"""Fixtures of the integration tests: clients of the session's real redis-server, what keeps tests
apart, the router app over ASGI, and real workers in the test process (``tests.integration.inprocess``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
import torch

from common.connections import async_client, sync_client
from router.app import create_app
from router.settings import RouterSettings
from tests.integration.inprocess import FLUX, SD15, SDXL, AppClient, InProcessWorker, Workers
from tests.integration.replicas import ReplicaPair
from worker.engine import SwapEngine
from worker.pipeline import load_base
from worker.settings import WorkerSettings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pool() -> str:
    """A pool name of its own for each test: tests share one redis-server."""
    return f"test/pool-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sync_redis(redis_server: str) -> Iterator[redis.Redis]:
    client = sync_client(redis_server)
    yield client
    client.close()


@pytest.fixture
async def aio_redis(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    client = async_client(redis_server)
    yield client
    await client.aclose()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A database of its own (7), emptied before each test: for tests that own every key (routers)."""
    url = redis_server.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.close()


# --- the router in process, and real workers beside it ---------------------------------------


def router_settings(redis: str, hub: str, **overrides: Any) -> RouterSettings:
    """The settings of the in-process router: the session's Redis and devhub, the tiny UNet pools."""
    fields: dict[str, Any] = {
        "redis_url": redis,
        "hf_endpoint": hub,
        "hf_token": "test-token",  # the devhub grants any token: private repos show as private
        "pools": [SDXL, SD15],
        "request_timeout_s": 30.0,
        "max_adapter_bytes": 2 * 2**20,
        "metadata_ttl_s": 60.0,
        "hub_timeout_s": 3.0,
    }
    fields.update(overrides)
    return RouterSettings(**fields)


@pytest.fixture
def app_client(redis_url: str, devhub_url: str) -> AppClient:
    """``async with app_client(**settings) as client``: the router app with its lifespan, over ASGI."""

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(router_settings(redis_url, devhub_url, **overrides))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://router", timeout=60) as client:
                yield client

    return make


@pytest.fixture(scope="session")
def worker_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The in-process workers' Hub download cache, shared by the session."""
    return str(tmp_path_factory.mktemp("worker-hf-cache"))


def load_tiny(base: str, devhub_url: str, worker_cache: str) -> tuple[Any, SwapEngine]:
    """A tiny base loaded as a worker loads it (from the devhub), with its swap engine."""
    torch.set_num_threads(1)
    settings = WorkerSettings(base=base, hf_endpoint=devhub_url, hf_cache_dir=worker_cache, device="cpu")
    pipe = load_base(settings)
    return pipe, SwapEngine(pipe, pristine=settings.pristine)


@pytest.fixture(scope="session")
def tiny_bases(devhub_url: str, worker_cache: str) -> dict[str, tuple[Any, SwapEngine]]:
    """The tiny SDXL and SD 1.5 bases, loaded once for the session."""
    return {base: load_tiny(base, devhub_url, worker_cache) for base in (SDXL, SD15)}


@pytest.fixture(scope="session")
def tiny_flux(devhub_url: str, worker_cache: str) -> tuple[Any, SwapEngine]:
    """The tiny FLUX.1 base, loaded once for the session by the tests that ask for it."""
    return load_tiny(FLUX, devhub_url, worker_cache)


def start_workers(bases: dict[str, tuple[Any, SwapEngine]], redis_url: str, devhub_url: str, cache: str) -> Workers:
    """A real worker per base, started on the plain base (2 steps, 64 px for a family without a size)."""
    started = Workers()
    try:
        for base, (pipe, engine) in bases.items():
            settings = WorkerSettings(
                base=base,
                worker_id=f"worker-{base.removeprefix('tiny/')}",
                redis_url=redis_url,
                hf_endpoint=devhub_url,
                hf_cache_dir=cache,
                device="cpu",
                default_steps=2,
                default_size=64 if base == FLUX else None,
                block_ms=20,
                worker_port=0,
            )
            started[base] = InProcessWorker(settings, pipe, engine)
    except BaseException:
        started.close()
        raise
    return started


@pytest.fixture
def workers(
    redis_url: str, devhub_url: str, worker_cache: str, tiny_bases: dict[str, tuple[Any, SwapEngine]]
) -> Iterator[Workers]:
    """A real worker per tiny UNet base; ``await workers.serve(request)``."""
    started = start_workers(tiny_bases, redis_url, devhub_url, worker_cache)
    yield started
    started.close()


@pytest.fixture
def flux_workers(
    redis_url: str,
    devhub_url: str,
    worker_cache: str,
    tiny_bases: dict[str, tuple[Any, SwapEngine]],
    tiny_flux: tuple[Any, SwapEngine],
) -> Iterator[Workers]:
    """``workers`` plus a real worker of the tiny FLUX.1 pool (route with ``pools=FLUX_POOLS``)."""
    started = start_workers({**tiny_bases, FLUX: tiny_flux}, redis_url, devhub_url, worker_cache)
    yield started
    started.close()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaPair]:
    """A primary and its replica (real redis-servers), shared by a module's tests."""
    pair = ReplicaPair(tmp_path_factory.mktemp("replicas"))
    yield pair
    pair.close()
