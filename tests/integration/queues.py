"""Workers, jobs and results for the queue tests of both ends (test_worker_queue, test_job_queue)."""

from __future__ import annotations

from typing import Any

import redis

from common.schemas import AdapterRef, Job, JobResult, WorkerState
from worker.queue import WorkerQueue

PNG = b"\x89PNG\r\n\x1a\nfake image bytes"


def worker(sync_redis: redis.Redis, pool: str, name: str, *, live: bool = True, **kw: Any) -> WorkerQueue:
    q = WorkerQueue(sync_redis, pool, name, **kw)
    q.ensure_group()
    if live:
        q.heartbeat(WorkerState(worker_id=name, pool=pool), ttl_s=30)
    return q


def job(pool: str, **kw: object) -> Job:
    adapter = AdapterRef(repo_id="tiny/sdxl-lora-diffusers", revision="a" * 40, weight_name="w.safetensors")
    return Job(pool=pool, prompt="a cat", seed=1, adapters=[adapter], **kw)  # type: ignore[arg-type]


def done(job_id: str, worker_id: str = "w1") -> JobResult:
    return JobResult(job_id=job_id, status="done", content_type="image/png", worker_id=worker_id, compute_s=0.5)
