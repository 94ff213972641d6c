"""The pool's dead-letter stream: the jobs a worker gives up on, kept for operators to inspect.

A job lands there past ``max_deliveries`` (it crashed every worker that ran it) or when its entry
cannot be read. Either way its waiter gets a failed result (``failed_result``), so nobody waits
for it forever.
"""

from __future__ import annotations

import json
import time

import redis

from common import errors, keys
from common.schemas import JobResult

#: Dead-letter streams keep about this many entries (approximate trim).
DEAD_LETTER_MAXLEN = 10_000


def record(
    client: redis.Redis, pool: str, *, entry_id: str, raw: bytes | str, reason: str, deliveries: int, worker_id: str
) -> None:
    """Append a given-up job (its raw JSON, as it was on the stream) to the pool's dead-letter stream."""
    client.xadd(
        keys.dead_letter_stream(pool),
        {
            "job": raw,
            "entry_id": entry_id,
            "reason": reason,
            "deliveries": deliveries,
            "worker_id": worker_id,
            "at": time.time(),
        },
        maxlen=DEAD_LETTER_MAXLEN,
        approximate=True,
    )


def failed_result(job_id: str, error: str, worker_id: str) -> JobResult:
    """The result a dead-lettered job's waiter gets."""
    return JobResult(
        job_id=job_id, status="failed", error=error, error_type=errors.JobFailed.error_type, worker_id=worker_id
    )


def salvage_job_id(raw: bytes | str) -> str | None:
    """The ``id`` of a job that fails validation, so its waiter learns of the failure."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    job_id = data.get("id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= 64 else None
