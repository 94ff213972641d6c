"""The job event stream and the job tracker against a real redis-server, fed by the real ``WorkerQueue``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from common import keys
from common.connections import async_client, sync_client
from common.schemas import JobResult, JobStatus
from router.events import job_events
from router.tracker import JobTracker
from worker.queue import WorkerQueue

pytestmark = pytest.mark.anyio


@pytest.fixture
async def tracker(redis_url: str) -> AsyncIterator[JobTracker]:
    client, events = async_client(redis_url), async_client(redis_url)
    yield JobTracker(client, events, scan_max=64)
    await client.aclose()
    await events.aclose()


def worker_queue(redis_url: str) -> WorkerQueue:
    return WorkerQueue(sync_client(redis_url), "tiny/sdxl-base", "w1")


def reader(tracker: JobTracker) -> Callable[[str], Awaitable[JobStatus | None]]:
    async def read(job_id: str) -> JobStatus | None:
        raw = await tracker.redis.get(keys.job_status(job_id))
        return None if raw is None else JobStatus.model_validate_json(raw)

    return read


def payloads(chunks: list[bytes]) -> list[str]:
    """``state:step`` of each data line."""
    out = []
    for chunk in chunks:
        for line in chunk.decode().splitlines():
            if line.startswith("data: "):
                data = json.loads(line[6:])
                out.append(f"{data['status']}:{data.get('step', '')}")
    return out


async def test_stored_state_then_published_ones_in_order_until_done(redis_url: str, tracker: JobTracker) -> None:
    queue = worker_queue(redis_url)
    await tracker.redis.set(keys.job_status("j1"), JobStatus(job_id="j1", state="queued").model_dump_json())

    stored_sent = threading.Event()

    def work() -> None:
        # Publish once the stream has sent the stored state, so what follows can only come as
        # messages, all at once: none may be skipped in favour of a later stored state.
        assert stored_sent.wait(10)
        for step in (1, 2, 3):
            queue.set_status(JobStatus(job_id="j1", state="running", step=step, steps=3))
        queue.set_status(JobStatus(job_id="j1", state="running", step=2, steps=3))  # late and stale
        queue.publish_result(JobResult(job_id="j1", status="done", compute_s=0.1), [b"img"])

    thread = threading.Thread(target=work)
    thread.start()
    chunks = []
    async for chunk in job_events(tracker, reader(tracker), "j1", max_s=20):
        chunks.append(chunk)
        if chunk.startswith(b"id: "):
            stored_sent.set()
    thread.join()
    assert chunks[0].startswith(b"retry: ")
    assert payloads(chunks) == ["queued:", "running:1", "running:2", "running:3", "done:"]


@pytest.mark.slow
async def test_quiet_stream_sends_keep_alive_comments_then_ends_at_max(tracker: JobTracker) -> None:
    await tracker.redis.set(keys.job_status("j2"), JobStatus(job_id="j2", state="queued").model_dump_json())
    start = time.monotonic()
    chunks = [c async for c in job_events(tracker, reader(tracker), "j2", max_s=2.5, keepalive_s=0.5)]
    assert time.monotonic() - start < 5
    assert payloads(chunks) == ["queued:"]
    assert b": keep-alive\n\n" in chunks


async def test_a_cancel_nobody_publishes_is_seen_by_polling(tracker: JobTracker) -> None:
    await tracker.redis.set(keys.job_status("j3"), JobStatus(job_id="j3", state="queued").model_dump_json())

    async def cancel_later() -> None:
        await asyncio.sleep(0.3)
        # What the queue's unqueue script does: the status changes, nothing is published.
        await tracker.redis.set(keys.job_status("j3"), JobStatus(job_id="j3", state="cancelled").model_dump_json())

    task = asyncio.create_task(cancel_later())
    chunks = [c async for c in job_events(tracker, reader(tracker), "j3", max_s=10)]
    await task
    assert payloads(chunks) == ["queued:", "cancelled:"]


async def test_idempotency_binding(tracker: JobTracker) -> None:
    assert await tracker.lookup("k") is None
    assert await tracker.bind("k", "job-a") is None
    assert 0 < await tracker.redis.ttl(keys.idempotency("k")) <= keys.RESULT_TTL_S
    assert await tracker.bind("k", "job-b") == "job-a"
    await tracker.unbind("k", "job-b")  # not its job: kept
    assert await tracker.lookup("k") == "job-a"
    await tracker.unbind("k", "job-a")
    assert await tracker.lookup("k") is None


async def test_position_counts_the_entries_ahead_on_its_stream(tracker: JobTracker) -> None:
    stream = keys.pool_stream("tiny/sdxl-base")
    ids = [await tracker.redis.xadd(stream, {"job": "{}"}) for _ in range(3)]
    for n, entry in enumerate(ids):
        await tracker.redis.hset(keys.job_entry(f"p{n}"), mapping={"stream": stream, "entry_id": entry})
    assert [await tracker.position(f"p{n}") for n in range(3)] == [0, 1, 2]
    await tracker.redis.xdel(stream, ids[0])
    assert await tracker.position("p2") == 1
    assert await tracker.position("p0") is None  # left the stream
    assert await tracker.position("unknown") is None
