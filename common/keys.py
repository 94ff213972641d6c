"""Every Redis key lorafarm uses, in one place.

A pool is named by its base repo id (``stabilityai/stable-diffusion-xl-base-1.0``);
Redis keys may hold slashes, so the id is used as is.
"""

from __future__ import annotations

PREFIX = "lorafarm"

#: Consumer group every worker of a pool reads the pool stream with.
WORKER_GROUP = "workers"

#: Seconds a job result stays readable after the worker wrote it. Long enough
#: for a slow client of the async job API to fetch it, short enough to bound memory.
RESULT_TTL_S = 3600

#: Seconds a cancel mark lives: past it the job has been run, dropped or dead-lettered.
CANCEL_TTL_S = 3600


def pool_stream(pool: str) -> str:
    """Stream of jobs for a base pool, read by its workers through ``WORKER_GROUP``."""
    return f"{PREFIX}:stream:{pool}"


def worker_stream(pool: str, worker_id: str) -> str:
    """Stream of jobs placed on one worker (adapter affinity); the pool stream is the fallback."""
    return f"{PREFIX}:stream:{pool}:worker:{worker_id}"


def dead_letter_stream(pool: str) -> str:
    """Jobs that failed too many deliveries; kept for operators to inspect."""
    return f"{PREFIX}:dead:{pool}"


def pool_workers(pool: str) -> str:
    """Sorted set of worker ids of a pool, scored by the time of their last heartbeat."""
    return f"{PREFIX}:workers:{pool}"


def worker_state(pool: str, worker_id: str) -> str:
    """JSON heartbeat of one worker in one pool (its base's residency, adapters, timings); expires with
    the worker. Per pool: a worker serving several bases announces a state in each of their pools."""
    return f"{PREFIX}:heartbeat:{pool}:worker:{worker_id}"


def job_result(job_id: str) -> str:
    """JSON result of a job (done or failed), written once by the worker; TTL ``RESULT_TTL_S``."""
    return f"{PREFIX}:result:{job_id}"


def job_done(job_id: str) -> str:
    """List pushed once when the result is written; the router blocks on it (BLPOP)."""
    return f"{PREFIX}:done:{job_id}"


def job_status(job_id: str) -> str:
    """JSON of the job's latest state (queued, running with step k of n, done, failed)."""
    return f"{PREFIX}:status:{job_id}"


def job_events(job_id: str) -> str:
    """Pub/sub channel of a job's state changes and step progress."""
    return f"{PREFIX}:events:{job_id}"


def job_cancel(job_id: str) -> str:
    """Set when a job is cancelled; a worker that sees it drops the job unrun."""
    return f"{PREFIX}:cancel:{job_id}"


def idempotency(key: str) -> str:
    """Maps a client's ``Idempotency-Key`` to the job id it created."""
    return f"{PREFIX}:idem:{key}"


def job_entry(job_id: str) -> str:
    """Hash ``{stream, entry_id}``: where the job is queued, so a cancel can remove it unclaimed."""
    return f"{PREFIX}:entry:{job_id}"


# --- tenants: API keys, their limits, their fair share of a pool ----------------------------

#: Seconds past a job's deadline after which a key's count forgets it, should no settle ever
#: release it (a lost entry): the job is dropped or done by then (``LORAFARM_MAX_JOB_S``' default).
TENANT_SLOT_SLACK_S = 900


def api_keys() -> str:
    """Hash: SHA-256 (hex) of each API key → its ``Tenant`` JSON (name and limits)."""
    return f"{PREFIX}:apikeys"


def api_key_names() -> str:
    """Hash: tenant name → the SHA-256 of its key, so names are unique and a key is revoked by name."""
    return f"{PREFIX}:apikeys:names"


def tenant_bucket(tenant: str) -> str:
    """Hash ``{tokens, at}``: the key's token bucket (rate limit); expires once it would be full."""
    return f"{PREFIX}:tenant:{tenant}:bucket"


def tenant_jobs(tenant: str) -> str:
    """Sorted set of the key's unfinished job ids (concurrency), scored by when to forget each."""
    return f"{PREFIX}:tenant:{tenant}:jobs"


def tenant_streamed(pool: str, tenant: str) -> str:
    """Sorted set of the key's job ids on the pool's streams (its fair share), scored like ``tenant_jobs``."""
    return f"{PREFIX}:tenant:{tenant}:streamed:{pool}"


def tenant_parked(pool: str, tenant: str) -> str:
    """List of the key's entry ids on ``pool_parked``, oldest first: its jobs past its share."""
    return f"{PREFIX}:tenant:{tenant}:parked:{pool}"


def pool_parked(pool: str) -> str:
    """Stream of the pool's parked jobs (no consumer group: workers never read it); its length counts
    in the pool's bound, depth and autoscaling."""
    return f"{PREFIX}:parked:{pool}"


def pool_share(pool: str) -> str:
    """Jobs one key may have on the pool's streams, as the router last computed it from the workers."""
    return f"{PREFIX}:share:{pool}"
