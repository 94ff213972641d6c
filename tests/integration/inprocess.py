"""Parts of a farm run inside the test process, and the checks of the router's answers.

``InProcessWorker`` is the real ``worker.loop.Worker`` on a tiny zoo pipeline, driven in burst
mode: ``Workers.serve`` sends a request to the router (over ASGI) and lets the workers drain
their queues until it is answered, so no test sleeps or polls a clock. ``StubWorker`` stays for
what the real one cannot be told to do: fail with a chosen error, sit idle, or take its time.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import httpx
from PIL import Image

from common.connections import sync_client
from common.schemas import Job, JobResult, WorkerState
from worker.engine import SwapEngine
from worker.loop import Worker
from worker.metrics import WorkerMetrics
from worker.queue import Delivery, WorkerQueue
from worker.settings import WorkerSettings
from worker.startup import serve_bases
from worker.store import AdapterStore
from worker.swapper import EngineSwapper

SDXL, SD15, FLUX = "tiny/sdxl-base", "tiny/sd15-base", "tiny/flux-base"
#: The router's pools with the Flux worker beside the UNet ones (``flux_workers``).
FLUX_POOLS = [SDXL, SD15, FLUX]
PROMPT = {"inputs": "a photo of a cat", "parameters": {"seed": 3, "num_inference_steps": 2}}
#: How long a heartbeat of an in-process worker lives: longer than any test, renewed each drain.
HEARTBEAT_TTL_S = 60.0

T = TypeVar("T")

#: The ``app_client`` fixture: ``async with app_client(**settings) as client`` (the router over ASGI).
AppClient = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


class RecordingWorker(Worker):
    """The real worker, keeping the jobs it was handed: what the router enqueued."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.jobs: list[Job] = []

    def serve(self, delivery: Delivery) -> None:
        self.jobs.append(delivery.job)
        super().serve(delivery)


class InProcessWorker:
    """A real worker on warm tiny pipelines (their engines restored to the plain base): one pool's,
    or, given several bases (``pipes``: base -> (pipeline, engine)), a multi-base worker's."""

    def __init__(
        self,
        settings: WorkerSettings,
        pipe: Any = None,
        engine: SwapEngine | None = None,
        *,
        pipes: dict[str, tuple[Any, SwapEngine]] | None = None,
    ) -> None:
        pipes = pipes or {settings.base: (pipe, engine)}  # type: ignore[dict-item]
        self.client = sync_client(settings.redis_url)
        self.stores: list[AdapterStore] = []
        swappers = {}
        for base, (p, e) in pipes.items():
            e.restore()
            self.stores.append(AdapterStore(settings.for_base(base), engine=e))
            swappers[base] = (p, EngineSwapper(e, self.stores[-1], mode=settings.swap_mode))
        metrics = WorkerMetrics(list(pipes))
        self.bases = serve_bases(settings, self.client, metrics, swappers)
        self.worker = RecordingWorker(settings, self.bases, metrics)
        self._stop = threading.Event()
        self.drain()  # started: ready, its consumer groups made, announced

    @property
    def store(self) -> AdapterStore:
        return self.stores[0]

    @property
    def jobs(self) -> list[Job]:
        return self.worker.jobs

    @property
    def worker_id(self) -> str:
        return self.worker.worker_id

    def drain(self) -> None:
        """Serve every job its streams hold (burst mode), then announce its state, as its heartbeat does."""
        self.worker.run(self._stop, burst=True)
        for slot in self.bases:
            slot.queue.heartbeat(self.worker.state(slot.pool), ttl_s=HEARTBEAT_TTL_S)  # as announce() does

    def close(self) -> None:
        self.worker.deregister()
        for store in self.stores:
            store.close()
        self.client.close()


class Workers(dict[str, InProcessWorker]):
    """The in-process workers by pool; ``serve`` answers a request with their help."""

    async def drain(self) -> None:
        """One burst of every worker, in a thread: the event loop meanwhile runs the router."""

        def burst() -> None:
            for worker in self.values():
                worker.drain()

        await asyncio.to_thread(burst)

    def close(self) -> None:
        for worker in self.values():
            worker.close()

    async def serve(self, request: Awaitable[T]) -> T:
        """Await ``request`` while the workers drain what it enqueues (nothing, if it is refused)."""
        task = asyncio.ensure_future(request)
        while not task.done():
            await self.drain()
        return await task


class StubWorker:
    """Claims one pool's jobs and fails them with ``failure``, ignores them (idle), or answers slowly."""

    def __init__(self, redis_url: str, pool: str, worker_id: str, mode: str) -> None:
        self.client = sync_client(redis_url)
        self.queue = WorkerQueue(self.client, pool, worker_id)
        self.pool, self.worker_id, self.mode = pool, worker_id, mode
        self.failure = ("adapter_corrupt", "the adapter holds NaN values")
        self.jobs: list[Job] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stub-{worker_id}", daemon=True)
        self.queue.ensure_group()
        self._beat()

    def _beat(self) -> None:
        self.queue.heartbeat(WorkerState(worker_id=self.worker_id, pool=self.pool), ttl_s=3)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last > 0.3:
                self._beat()
                last = time.monotonic()
            if self.mode == "idle":  # alive, claims nothing
                self._stop.wait(0.05)
                continue
            for delivery in self.queue.claim(block_ms=50):
                self._answer(delivery.job)
                self.queue.ack(delivery.entry_id, delivery.stream)

    def _answer(self, job: Job) -> None:
        self.jobs.append(job)
        if self.mode == "fail":
            error_type, message = self.failure
            result = JobResult(job_id=job.id, status="failed", error=message, error_type=error_type)
            self.queue.publish_result(result, [])
            return
        time.sleep(1.0)  # slow
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format="JPEG")
        result = JobResult(job_id=job.id, status="done", content_type="image/jpeg", worker_id=self.worker_id)
        self.queue.publish_result(result, [buf.getvalue()] * job.images)

    def __enter__(self) -> StubWorker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.queue.deregister()
        self.client.close()


def sha_of(devhub_url: str, repo_id: str) -> str:
    """The commit the devhub serves ``repo_id`` at."""
    return str(httpx.get(f"{devhub_url}/api/models/{repo_id}", headers={"authorization": "Bearer t"}).json()["sha"])


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    """The answer is the error body ``{"error", "error_type"}`` with this status, leaking nothing."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == error_type
    assert "127.0.0.1" not in body["error"] and "Traceback" not in body["error"]
    return dict(body)
