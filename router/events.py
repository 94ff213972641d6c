"""Server-Sent Events of one job: its states in order, ending with done, failed or cancelled.

The stream subscribes to the job's channel first, then reads the stored status, so no event
falls between the two. Events only move forward (``advances``, by state and step, not by clock:
workers' clocks may differ from the router's): a message older than what was already sent is
dropped. Between messages the stored status is polled, which catches what no
one publishes (a queued job's position) and anything lost with a dropped connection.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import redis
from pydantic import ValidationError

from common import errors
from common.schemas import JobState, JobStatus
from router.tracker import JobTracker

log = logging.getLogger("router")

TERMINAL: frozenset[JobState] = frozenset({"done", "failed", "cancelled"})
_RANK: dict[JobState, int] = {"queued": 0, "running": 1, "done": 2, "failed": 2, "cancelled": 2}

#: Seconds between keep-alive comments, under the idle timeout of common proxies (60 s).
KEEPALIVE_S = 15.0
#: Seconds between two reads of the stored status while no message arrives.
POLL_S = 1.0
#: Milliseconds an EventSource waits before reconnecting (it then gets the current state first).
RETRY_MS = 2000


def advances(last: JobStatus | None, new: JobStatus) -> bool:
    """Whether ``new`` tells the client something after ``last``: never backwards, never twice."""
    if last is None:
        return True
    if last.state in TERMINAL:
        return False
    if _RANK[new.state] != _RANK[last.state]:
        return _RANK[new.state] > _RANK[last.state]
    if new.state == "queued":
        return new.position != last.position
    return (new.step or 0) > (last.step or 0)


def frame(status: JobStatus, seq: int) -> bytes:
    """One SSE message (unnamed, so ``EventSource.onmessage`` gets it) holding the status JSON."""
    fields = status.model_dump(mode="json", exclude_none=True)
    # The same names as ``GET /jobs/{id}`` answers.
    data = {"id": fields.pop("job_id"), "status": fields.pop("state"), **fields}
    return f"id: {seq}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


Reader = Callable[[str], Awaitable[JobStatus | None]]


async def job_events(
    tracker: JobTracker, read: Reader, job_id: str, *, max_s: float, keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[bytes]:
    """The SSE body: the current state, then every later one, until a terminal state or ``max_s``.

    ``read`` gives the stored status with its queue position; a Redis outage ends the stream
    (an EventSource reconnects and starts again from the stored state).
    """
    seq = 0
    last: JobStatus | None = None
    deadline = time.monotonic() + max_s
    quiet_since = time.monotonic()
    yield f"retry: {RETRY_MS}\n\n".encode()
    try:
        async with tracker.subscribe(job_id) as pubsub:
            polled = await read(job_id)
            while time.monotonic() < deadline:
                new = polled
                polled = None
                if new is not None and advances(last, new):
                    seq += 1
                    last = new
                    quiet_since = time.monotonic()
                    yield frame(new, seq)
                if last is not None and last.state in TERMINAL:
                    return
                message = await pubsub.get_message(timeout=POLL_S)
                if message is not None:
                    polled = _parse(message.get("data"))
                else:
                    polled = await read(job_id)
                if time.monotonic() - quiet_since >= keepalive_s:
                    quiet_since = time.monotonic()
                    yield comment("keep-alive")
    except (errors.RedisUnavailable, redis.ConnectionError, redis.TimeoutError):
        log.warning("event=events_redis_down job=%s", job_id)
        yield comment("the job queue is unavailable; reconnect to resume")


def _parse(raw: object) -> JobStatus | None:
    if not isinstance(raw, (bytes, str)):
        return None
    try:
        return JobStatus.model_validate_json(raw)
    except ValidationError:
        log.warning("event=bad_job_event")
        return None
